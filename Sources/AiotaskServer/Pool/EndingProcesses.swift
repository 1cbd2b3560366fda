import AiotaskProtocol
import Logging
import NIOCore

/// Processes on their way out — timed out, cancelled, recycled, or stopped at shutdown — kept until they exit.
///
/// Their replies are ignored, except those to tasks sent ahead to them (``TasksInDyingProcess``); their exit is logged.
/// Shutdown waits for this set to empty.
final class EndingProcesses: PoolProcessDelegate {
    private var processes: [Int32: PoolProcess] = [:]
    /// Tasks sent ahead to a retired process that it may still read, by process id.
    private var heldTasks: [Int32: TasksInDyingProcess] = [:]
    private var onEmpty: [() -> Void] = []
    /// What to do once a process is dead, by process id.
    private var onExit: [Int32: [() -> Void]] = [:]
    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    var count: Int { processes.count }

    /// Keeps `process` until it exits; `held`, the tasks sent ahead to it, are settled by its replies and its exit.
    func adopt(_ process: PoolProcess, holding held: TasksInDyingProcess? = nil) {
        guard !process.hasExited else { return }
        processes[process.pid] = process
        if let held { heldTasks[process.pid] = held }
    }

    /// Calls `body` once no retired process is left (at once if none is).
    func whenEmpty(_ body: @escaping () -> Void) {
        if processes.isEmpty { body() } else { onEmpty.append(body) }
    }

    /// Calls `body` once `process` is dead and its exit reported (at once if it is not kept here: it exited).
    func whenExited(_ process: PoolProcess, _ body: @escaping () -> Void) {
        guard processes[process.pid] === process else { return body() }
        onExit[process.pid, default: []].append(body)
    }

    /// Kills every retired process at once.
    func killAll() {
        for process in processes.values { process.kill() }
    }

    func processIsReady(_ process: PoolProcess) {}

    func process(_ process: PoolProcess, didReply reply: HandlerReply, at now: NIODeadline) {
        heldTasks[process.pid]?.received(reply, from: process)
    }

    func process(_ process: PoolProcess, brokeLink reason: String) {}

    func process(_ process: PoolProcess, didExit status: ExitStatus) {
        logger.debug("retired pool process \(status)", metadata: ["worker_pid": "\(process.pid)"])
        processes[process.pid] = nil
        heldTasks.removeValue(forKey: process.pid)?.processExited(process, status)
        onExit.removeValue(forKey: process.pid)?.forEach { $0() }
        if processes.isEmpty {
            let callbacks = onEmpty
            onEmpty = []
            callbacks.forEach { $0() }
        }
    }
}

/// Tasks sent ahead to a process that was stopped while alive (its running task timed out, was cancelled or went
/// over the memory limit; the drain deadline came), kept with it until it is dead.
///
/// A process being stopped may still finish its task and read the next ones from its pipe during its grace period
/// (it may trap SIGTERM, or take a moment to die), so a task in its pipe cannot run elsewhere, nor be reported as
/// never started, until the process is dead and everything it wrote has been read. Then, a handler starting a task
/// only once it has answered the one before (docs/handler-protocol.md): the tasks it answered get their answers;
/// the one after its last answer may have been started and fails; the rest were never read, and run elsewhere (or,
/// past the drain deadline, fail as never started). Tasks a Swift handler's process has claimed count as started.
final class TasksInDyingProcess {
    private let records: [TaskRecord]
    /// Replies still to come for tasks before `records` (the running task's), skipped.
    private var repliesToSkip: Int
    /// Whether every task in `records` was claimed by the process: each one may have started.
    private let areClaimed: Bool
    private var answered = 0
    private unowned let supervisor: Supervisor

    /// - Parameters:
    ///   - records: the tasks sent ahead, in the order the process runs them.
    ///   - runningIsAnswered: whether the process already answered the task before them.
    ///   - areClaimed: whether the process claimed all of them (a Swift handler's process, after a withdrawal).
    init(_ records: [TaskRecord], runningIsAnswered: Bool, areClaimed: Bool, supervisor: Supervisor) {
        self.records = records
        self.repliesToSkip = runningIsAnswered ? 0 : 1
        self.areClaimed = areClaimed
        self.supervisor = supervisor
    }

    /// A reply of the retired process: to its running task (ignored), or to the next task held, which ran.
    func received(_ reply: HandlerReply, from process: PoolProcess) {
        if repliesToSkip > 0 {
            repliesToSkip -= 1
            return
        }
        guard answered < records.count else { return }
        let record = records[answered]
        answered += 1
        guard !record.isFinished else { return }
        let outcome: TaskOutcome =
            switch reply {
            case .result(let bytes): .success(bytes)
            case .error(let message): .failure(.handlerError, message)
            }
        supervisor.finish(record, outcome, workerPID: process.pid)
    }

    /// The process is dead: settles the tasks it did not answer.
    func processExited(_ process: PoolProcess, _ status: ExitStatus) {
        var unanswered = records[answered...].filter { !$0.isFinished }
        guard !unanswered.isEmpty else { return }
        // Unless every reply was read, or the process was still on its running task, the first task it did not
        // answer may have started; claimed tasks all may have.
        let mayHaveStarted: [TaskRecord]
        if areClaimed || !process.repliesAreAllRead {
            mayHaveStarted = unanswered
            unanswered = []
        } else if repliesToSkip == 0, answered < records.count, records[answered] === unanswered.first {
            mayHaveStarted = [unanswered.removeFirst()]
        } else {
            mayHaveStarted = []
        }
        supervisor.settleHeld(process, status, mayHaveStarted: mayHaveStarted, notStarted: unanswered)
    }
}
