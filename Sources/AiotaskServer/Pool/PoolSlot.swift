import AiotaskProtocol
import Logging
import NIOCore

/// One place in the pool: keeps one process alive and runs one task at a time on it.
///
/// A process that must go — its task timed out or was cancelled, it reached its task quota or its memory limit,
/// it broke the framing — is handed to the supervisor's ``RetiredProcesses`` to die, and the slot starts a
/// replacement as soon as it is dead (never two live processes with the slot's index). A process that dies by itself is restarted with exponential backoff while it keeps
/// crashing.
final class PoolSlot {
    enum State {
        /// No process: before start, after shutdown, or waiting out a restart backoff.
        case empty
        case starting(WorkerProcess)
        case idle(WorkerProcess)
        case busy(WorkerProcess, RunningTask)
    }

    struct RunningTask {
        let record: TaskRecord
        /// Its index in the process's stream of tasks.
        let index: UInt32
        let startedAt: NIODeadline
        var timeoutTimer: Scheduled<Void>?
        /// Set when tasks sent ahead were withdrawn while it ran: it is slow, so no more are sent ahead behind it.
        var isHoldingUp = false
    }

    /// A task sent ahead, with its index in the process's stream of tasks.
    struct SentTask {
        let record: TaskRecord
        let index: UInt32
    }

    /// How many tasks are sent ahead to a process that claims its tasks, when ``WorkerConfiguration/prefetch`` is
    /// automatic: enough for replies and tasks to move in batches; they cost nothing should the process stall,
    /// since they are withdrawn.
    static let automaticPrefetch = 32
    /// Task bytes sent ahead to one process beyond which no more are (one task is always allowed).
    static let prefetchByteLimit = 1 << 20

    let index: Int
    private unowned let supervisor: Supervisor
    private(set) var state: State = .empty
    private var tasksUntilRecycle: Int?
    private var consecutiveCrashes = 0
    private var restartTimer: Scheduled<Void>?
    private var isStopped = false
    /// Replace the process once its current task is answered (a reload rolls the pool this way).
    private var renewAfterTask = false
    /// Leave the pool once the current task is answered (the pool shrank).
    private var retireAfterTask = false
    /// Tasks sent to the process behind the running one, in the order it will run them.
    private var pipeline = CircularBuffer<SentTask>()
    /// Task bytes in `pipeline`.
    private var pipelineBytes = 0
    /// The next reading of the busy process's memory, while a memory limit is set.
    private var memoryCheck: Scheduled<Void>?
    /// The process this slot replaced, until it is dead: its successor starts only then, so that two live processes
    /// never share the slot's index (`AIOTASK_WORKER_INDEX`, which a handler may use to pick a GPU or a port).
    private var predecessor: WorkerProcess?

    init(index: Int, supervisor: Supervisor) {
        self.index = index
        self.supervisor = supervisor
    }

    private var configuration: WorkerConfiguration { supervisor.configuration }
    private var logger: Logger { supervisor.logger }

    var process: WorkerProcess? {
        switch state {
        case .empty: nil
        case .starting(let process), .idle(let process), .busy(let process, _): process
        }
    }

    /// Whether the slot is leaving the pool after its current task.
    var isRetiring: Bool { retireAfterTask || isStopped }

    var isBusy: Bool {
        if case .busy = state { return true }
        return false
    }

    /// Whether the slot can take a task: it has a process, idle, whose link is sound.
    var isIdle: Bool {
        if case .idle(let process) = state { return process.isSound }
        return false
    }

    /// Crashes in a row, without a task answered in between, after which a slot counts as crash-looping.
    static let crashLoopThreshold = 3
    /// How long a process must live to show that the slot is not crash-looping, even without a task.
    static let stableLifetime: Duration = .seconds(1)

    /// Whether the slot has a process and is not crash-looping: its last processes did not all die young.
    var isKeepingProcessAlive: Bool {
        // A slot waiting for the process it replaces to die is not failing: its successor starts right after.
        if predecessor != nil { return true }
        guard let process else { return false }
        return consecutiveCrashes < Self.crashLoopThreshold
            || NIODeadline.now() - process.startedAt >= .init(Self.stableLifetime)
    }

    var prefetchedCount: Int { pipeline.count }

    /// Whether a task of `size` bytes may be sent ahead to this slot's busy process: it is sound, stays in the
    /// pool, will still be there (its recycling quota) by the time it gets to the task, has room for it, and its
    /// current task has not run for long.
    func canPrefetch(size: Int, at now: NIODeadline) -> Bool {
        guard case .busy(let process, let running) = state, process.isSound, !isStopped, !renewAfterTask,
            !retireAfterTask, !running.isHoldingUp, pipeline.count < prefetchDepth(of: process),
            pipeline.isEmpty || pipelineBytes + size <= Self.prefetchByteLimit,
            now - running.startedAt <= .init(configuration.prefetchStallLimit)
        else { return false }
        if let remaining = tasksUntilRecycle { return pipeline.count + 1 < remaining }
        return true
    }

    private func prefetchDepth(of process: WorkerProcess) -> Int {
        configuration.prefetch ?? (process.claimsTasks ? Self.automaticPrefetch : 0)
    }

    /// Whether the slot holds tasks sent ahead that can be withdrawn (its process claims its tasks).
    var canWithdraw: Bool {
        guard !pipeline.isEmpty, let process else { return false }
        return process.claimsTasks
    }

    /// Whether `record` is one of the tasks sent ahead to this slot.
    func holds(_ record: TaskRecord) -> Bool {
        pipeline.contains { $0.record === record }
    }

    /// Takes back the tasks sent ahead that the process has not started, and gives those not finished back to the
    /// supervisor's queue. Returns whether any went back; false too when the process does not claim its tasks.
    ///
    /// - Parameter forIdleProcess: the tasks go to a process that is idle; the running task is then taken as
    ///   slow, and no more tasks are sent ahead behind it.
    @discardableResult
    func withdrawSentAhead(forIdleProcess: Bool = false) -> Bool {
        guard let withdrawn = withdrawUnclaimed(), !withdrawn.isEmpty else { return false }
        if forIdleProcess, case .busy(let process, var running) = state {
            running.isHoldingUp = true
            state = .busy(process, running)
        }
        supervisor.requeue(withdrawn)
        return withdrawn.contains { !$0.isFinished }
    }

    /// Withdraws the tasks sent ahead, one of which was cancelled, so that the process does not start it (and need
    /// not be stopped for it). While the process has not claimed its running task yet (it has not read it), the
    /// withdrawal waits, and is tried again a little later, for up to ``cancelWithdrawalAttempts`` times.
    func withdrawCancelled(attempt: Int = 1) {
        guard canWithdraw else { return }
        if let withdrawn = withdrawUnclaimed() {
            supervisor.requeue(withdrawn)
            // The first attempt runs within the cancel, which dispatches afterwards.
            if attempt > 1 { supervisor.dispatch() }
            return
        }
        guard attempt < Self.cancelWithdrawalAttempts, pipeline.contains(where: { $0.record.isFinished }) else {
            return
        }
        supervisor.loop.assumeIsolated().scheduleTask(in: .microseconds(200)) { [weak self] in
            self?.withdrawCancelled(attempt: attempt + 1)
        }
    }

    static let cancelWithdrawalAttempts = 50

    /// Takes the tasks sent ahead and not claimed out of the pipeline, in order; nil, changing nothing, when they
    /// cannot be withdrawn: the process does not claim its tasks or has not claimed its running one yet.
    private func withdrawUnclaimed() -> [TaskRecord]? {
        guard !pipeline.isEmpty, case .busy(let process, let running) = state,
            let firstWithdrawn = process.withdrawUnclaimed(from: running.index &+ 1)
        else { return nil }
        var withdrawn: [TaskRecord] = []
        while let last = pipeline.last, TaskClaims.index(last.index, isAtOrAfter: firstWithdrawn) {
            pipeline.removeLast()
            pipelineBytes -= last.record.payload.readableBytes
            withdrawn.append(last.record)
        }
        withdrawn.reverse()
        if !withdrawn.isEmpty {
            logger.debug(
                "withdrew \(withdrawn.count) tasks sent ahead and not started",
                metadata: ["worker_pid": "\(process.pid)", "slot": "\(index)"]
            )
        }
        return withdrawn
    }

    // MARK: Process lifecycle

    /// Starts a process if the slot has none.
    func start() {
        guard case .empty = state, !isStopped, predecessor == nil else { return }
        restartTimer = nil
        do {
            let process = try WorkerProcess.spawn(
                configuration.handler,
                slot: index,
                sharedPayloadBytes: configuration.sharedPayloadBytes,
                loop: supervisor.loop
            )
            process.delegate = self
            state = .starting(process)
            // Set before attaching: the new process may report ready at once, and must not find the quota of
            // the process it replaces, used up.
            tasksUntilRecycle = configuration.maximumTasksPerProcess.map {
                $0 + Int.random(in: 0...max(0, configuration.maximumTasksJitter))
            }
            process.attach(maximumReplyLength: supervisor.maximumReplyLength, logger: logger)
            logger.debug("worker process started", metadata: ["worker_pid": "\(process.pid)", "slot": "\(index)"])
            if configuration.handler.runsLibraryHandler,
                !process.sharesMemory(arenaWanted: configuration.sharedPayloadBytes > 0)
            {
                logger.warning(
                    "worker process got no memory shared with aiotaskd (memfd_create or mmap failed): tasks sent ahead to it cannot be withdrawn, and large payloads travel through its pipes",
                    metadata: ["worker_pid": "\(process.pid)", "slot": "\(index)"]
                )
            }
        } catch {
            logger.error("cannot start a worker process: \(error)", metadata: ["slot": "\(index)"])
            supervisor.slotFailedToStart(self)
            consecutiveCrashes += 1
            scheduleRestart()
        }
    }

    /// Stops the slot for good: no task is taken and no process started from now on.
    func stop() {
        isStopped = true
        restartTimer?.cancel()
        restartTimer = nil
        memoryCheck?.cancel()
        memoryCheck = nil
        if let process {
            detach(process)
            process.retire(gracePeriod: configuration.killGracePeriod)
        }
        state = .empty
    }

    /// Stays in the pool after all, should it have been leaving after its task (a reload shrank the pool, and the
    /// next one grew it again before the task ended): the slot keeps its index, so no new slot takes it.
    func stayInPool() {
        guard !isStopped else { return }
        retireAfterTask = false
    }

    private func scheduleRestart() {
        guard !isStopped, restartTimer == nil else { return }
        supervisor.noteRestart()
        let delay = Self.backoff(crashes: consecutiveCrashes, maximum: configuration.maximumRestartBackoff)
        if delay == .zero {
            start()
            return
        }
        logger.warning("restarting worker process after \(delay)", metadata: ["slot": "\(index)"])
        restartTimer = supervisor.loop.assumeIsolated().scheduleTask(in: .init(delay)) { [weak self] in
            self?.restartTimer = nil
            self?.start()
        }
    }

    /// No wait after a first crash, then 100 ms doubling up to `maximum` while the crashes go on.
    static func backoff(crashes: Int, maximum: Duration) -> Duration {
        guard crashes > 1 else { return .zero }
        let exponent = min(crashes - 2, 20)
        return min(.milliseconds(100) * (1 << exponent), maximum)
    }

    /// Takes every task sent ahead out of the pipeline, for `process`, which is being stopped or is dead: those it
    /// provably never started (withdrawn: it claims its tasks and had not claimed them), and the others, in order,
    /// which it may have read — all of them for a process that does not claim its tasks.
    private func takePipeline(
        from process: WorkerProcess
    ) -> (notStarted: [TaskRecord], mayBeRead: [TaskRecord], areClaimed: Bool) {
        guard !pipeline.isEmpty else { return ([], [], false) }
        var notStarted: [TaskRecord] = []
        let firstWithdrawn = process.withdrawAllUnclaimed()
        if let firstWithdrawn {
            while let last = pipeline.last, TaskClaims.index(last.index, isAtOrAfter: firstWithdrawn) {
                pipeline.removeLast()
                notStarted.append(last.record)
            }
            notStarted.reverse()
        }
        let rest = pipeline.map(\.record)
        pipeline.removeAll()
        pipelineBytes = 0
        return (notStarted, rest, firstWithdrawn != nil)
    }

    /// Hands `process`, alive, over to die on its own, so the slot can start another at once. The tasks sent ahead
    /// to it that it never started go back to the supervisor's queue; those it may still read stay with it until it
    /// is dead (``HeldTasks``), so that none runs twice or is reported as never started after it ran.
    ///
    /// - Parameter runningIsAnswered: whether the process has answered the task it was running.
    private func detach(_ process: WorkerProcess, runningIsAnswered: Bool = false) {
        let sentAhead = takePipeline(from: process)
        supervisor.requeue(sentAhead.notStarted)
        let held =
            sentAhead.mayBeRead.isEmpty
            ? nil
            : HeldTasks(
                sentAhead.mayBeRead,
                runningIsAnswered: runningIsAnswered,
                areClaimed: sentAhead.areClaimed,
                supervisor: supervisor
            )
        process.delegate = supervisor.retiredProcesses
        supervisor.retiredProcesses.adopt(process, holding: held)
    }

    /// How a process being replaced is made to go.
    private enum Ending {
        /// Its link is closed, its cue to exit by itself.
        case retire
        /// SIGTERM to its group, SIGKILL after the grace period.
        case terminate
        /// SIGKILL to its group at once.
        case kill
    }

    /// Replaces the current process: the old one ends as `ending` says, in the background.
    private func replaceProcess(_ ending: Ending, runningIsAnswered: Bool = false) {
        guard let process else { return }
        supervisor.noteRestart()
        detach(process, runningIsAnswered: runningIsAnswered)
        switch ending {
        case .retire: process.retire(gracePeriod: configuration.killGracePeriod)
        case .terminate: process.terminate(gracePeriod: configuration.killGracePeriod)
        case .kill: process.kill()
        }
        state = .empty
        start(after: process)
    }

    /// Starts a process once `predecessor`, which this slot just handed over to die, is dead.
    private func start(after predecessor: WorkerProcess) {
        self.predecessor = predecessor
        supervisor.retiredProcesses.whenExited(predecessor) { [weak self, weak predecessor] in
            guard let self, self.predecessor === predecessor else { return }
            self.predecessor = nil
            self.start()
        }
    }

    // MARK: Tasks

    /// Runs `record` on this slot's idle process.
    func run(_ record: TaskRecord) {
        guard case .idle(let process) = state else {
            preconditionFailure("PoolSlot.run called on a slot that is not idle")
        }
        let context = record.context(defaultTimeout: configuration.defaultTaskTimeout)
        begin(record, index: process.send(record.payload, context: context), on: process)
    }

    /// Sends `record` to the busy process, to run after the tasks it has.
    func prefetch(_ record: TaskRecord) {
        guard case .busy(let process, _) = state else {
            preconditionFailure("PoolSlot.prefetch called on a slot that is not busy")
        }
        let context = record.context(defaultTimeout: configuration.defaultTaskTimeout)
        let index = process.send(record.payload, context: context)
        pipeline.append(SentTask(record: record, index: index))
        pipelineBytes += record.payload.readableBytes
    }

    /// Marks `record` as running on `process` from now on, and starts its timeout.
    private func begin(_ record: TaskRecord, index: UInt32, on process: WorkerProcess) {
        record.state = .running(pid: process.pid)
        record.payload = ByteBuffer()
        var running = RunningTask(record: record, index: index, startedAt: .now(), timeoutTimer: nil)
        if let timeout = record.timeout ?? configuration.defaultTaskTimeout {
            running.timeoutTimer = supervisor.loop.assumeIsolated().scheduleTask(in: .init(timeout)) {
                [weak self] in
                self?.timeOut(record, after: timeout)
            }
        }
        state = .busy(process, running)
        scheduleMemoryCheck()
    }

    // MARK: Memory limit

    /// Reads the busy process's memory after ``WorkerConfiguration/memoryCheckInterval``, if a limit is set. One
    /// reading is pending at a time; the chain ends when the slot is not busy at reading time.
    private func scheduleMemoryCheck() {
        guard memoryCheck == nil, configuration.maximumProcessRSS != nil, !isStopped else { return }
        memoryCheck = supervisor.loop.assumeIsolated().scheduleTask(in: .init(configuration.memoryCheckInterval)) {
            [weak self] in
            self?.memoryCheck = nil
            self?.checkMemoryWhileBusy()
        }
    }

    /// Kills the busy process if it holds more memory than the limit, failing its task; reads again later if not.
    private func checkMemoryWhileBusy() {
        guard case .busy(let process, let running) = state, let limit = configuration.maximumProcessRSS else { return }
        // The processes the handler started count too: the limit is on what the task makes the pool hold.
        guard let (resident, descendants) = process.treeResidentBytes, resident > limit else {
            scheduleMemoryCheck()
            return
        }
        let record = running.record
        running.timeoutTimer?.cancel()
        let who = descendants == 0 ? "worker process \(process.pid)" : "worker process \(process.pid) with its children"
        let message = "\(who) \(Self.memoryLimitMessage(resident: resident, limit: limit))"
        logger.error(
            "\(message); killing its process group",
            metadata: [
                "task_id": "\(record.id)", "worker_pid": "\(process.pid)", "rss_bytes": "\(resident)",
                "limit_bytes": "\(limit)", "message_id": "\(LogMessageID.memoryLimitExceeded)",
            ]
        )
        replaceProcess(.kill)
        if !record.isFinished {
            supervisor.finish(record, .failure(.workerCrashed, message), workerPID: process.pid)
        }
        supervisor.dispatch()
    }

    /// Whether `process`, having answered a task, is over the memory limit; logged if so.
    private func isOverMemoryLimit(_ process: WorkerProcess) -> Bool {
        guard let limit = configuration.maximumProcessRSS, let resident = process.residentBytes, resident > limit
        else { return false }
        let message = Self.memoryLimitMessage(resident: resident, limit: limit)
        logger.notice(
            "worker process \(process.pid) \(message) after a task; replacing it",
            metadata: [
                "worker_pid": "\(process.pid)", "rss_bytes": "\(resident)", "limit_bytes": "\(limit)",
                "message_id": "\(LogMessageID.memoryLimitExceeded)",
            ]
        )
        return true
    }

    /// `exceeded the memory limit: N MiB > M MiB`, with the resident size rounded up.
    static func memoryLimitMessage(resident: Int, limit: Int) -> String {
        let resident = ProcessMemory.mebibytesRoundedUp(resident)
        return "exceeded the memory limit: \(resident) MiB > \(limit / ProcessMemory.mebibyte) MiB"
    }

    /// Stops the running `record` without answering it (cancelled, or its client is gone): its process is
    /// killed and replaced.
    func interrupt(_ record: TaskRecord) {
        guard case .busy(_, let running) = state, running.record === record else { return }
        running.timeoutTimer?.cancel()
        replaceProcess(.terminate)
    }

    /// At the drain deadline: stops the busy process like ``interrupt(_:)`` and returns its running task, unanswered.
    func interruptAtDrainDeadline() -> TaskRecord? {
        guard case .busy(_, let running) = state else { return nil }
        running.timeoutTimer?.cancel()
        replaceProcess(.terminate)
        return running.record.isFinished ? nil : running.record
    }

    private func timeOut(_ record: TaskRecord, after timeout: Duration) {
        guard case .busy(let process, let running) = state, running.record === record else { return }
        logger.warning(
            "task timed out; terminating its worker process",
            metadata: ["task_id": "\(record.id)", "worker_pid": "\(process.pid)", "timeout": "\(timeout)"]
        )
        replaceProcess(.terminate)
        if !record.isFinished {
            supervisor.finish(
                record,
                .failure(.timedOut, "task exceeded its timeout of \(timeout)"),
                workerPID: process.pid
            )
        }
        supervisor.dispatch()
    }

    /// Replaces the process with one running the current configuration, without disturbing a running task:
    /// at once if idle, after its task otherwise.
    func renew() {
        switch state {
        case .busy: renewAfterTask = true
        case .idle, .starting: replaceProcess(.retire)
        case .empty: break
        }
    }

    /// Leaves the pool: at once if idle, after its task otherwise. The supervisor is told when it is done.
    func retire() {
        if isBusy {
            retireAfterTask = true
        } else {
            stop()
            supervisor.slotRetired(self)
        }
    }

    private func becomeIdle(_ process: WorkerProcess) {
        if retireAfterTask {
            state = .idle(process)
            stop()
            supervisor.slotRetired(self)
            return
        }
        if renewAfterTask {
            renewAfterTask = false
            state = .idle(process)
            replaceProcess(.retire)
            return
        }
        if let remaining = tasksUntilRecycle, remaining <= 0 {
            logger.debug("recycling worker process", metadata: ["worker_pid": "\(process.pid)"])
            state = .idle(process)
            replaceProcess(.retire)
            return
        }
        state = .idle(process)
        supervisor.slotBecameIdle(self)
    }
}

extension PoolSlot: WorkerProcessDelegate {
    func processIsReady(_ process: WorkerProcess) {
        guard case .starting(let current) = state, current === process else { return }
        becomeIdle(process)
    }

    func process(_ process: WorkerProcess, didReply reply: HandlerReply) {
        guard case .busy(let current, let running) = state, current === process else {
            process.breakLink("handler replied while it had no task")
            return
        }
        running.timeoutTimer?.cancel()
        consecutiveCrashes = 0
        if let remaining = tasksUntilRecycle { tasksUntilRecycle = remaining - 1 }
        // A process left over the memory limit is replaced once it is idle: the tasks already sent ahead to it
        // still run there (moving them could run one twice), and no more are sent (see canPrefetch).
        if !renewAfterTask, isOverMemoryLimit(process) { renewAfterTask = true }
        let outcome: TaskOutcome =
            switch reply {
            case .result(let bytes): .success(bytes)
            case .error(let message): .failure(.handlerError, message)
            }
        // A task sent ahead and cancelled since is withdrawn now if the process has not started it.
        if pipeline.first?.record.isFinished == true { withdrawSentAhead() }
        let next = pipeline.popFirst()
        if let next { pipelineBytes -= next.record.payload.readableBytes }
        if let next, next.record.isFinished {
            // A task sent ahead was cancelled (or its client left) while it waited in the pipe: the process is
            // starting it now, so it is stopped and replaced; the rest of the pipe runs elsewhere once the process
            // is dead, except what it may have read by then (see ``detach(_:runningIsAnswered:)``).
            logger.debug(
                "a task sent ahead was cancelled; stopping its process",
                metadata: ["worker_pid": "\(process.pid)"]
            )
            pipeline.prepend(next)
            pipelineBytes += next.record.payload.readableBytes
            state = .idle(process)
            replaceProcess(.terminate, runningIsAnswered: true)
        } else if let next {
            supervisor.prefetchedTaskStarts(next.record)
            begin(next.record, index: next.index, on: process)
        } else {
            becomeIdle(process)
        }
        if !running.record.isFinished {
            supervisor.finish(running.record, outcome, workerPID: process.pid)
        }
        supervisor.dispatch()
    }

    /// The process is being killed. The slot keeps it, taking no task on it (see ``isIdle``), until its exit is
    /// reaped: a crashing process closes its link a moment before that, and only the exit status tells why it
    /// died, so its task is failed and the process replaced in ``process(_:didExit:)``.
    func process(_ process: WorkerProcess, brokeLink reason: String) {
        guard self.process === process else { return }
        logger.error("worker process broke its link: \(reason)", metadata: ["worker_pid": "\(process.pid)"])
    }

    /// The failure message of the task a dying process was running: `worker process 1234 exited with code 3`, then
    /// why its link broke, in parentheses, when there is a reason to give — never an empty `()`.
    static func crashMessage(pid: Int32, status: ExitStatus, linkFailure: String?) -> String {
        let message = "worker process \(pid) \(status)"
        guard let linkFailure, !linkFailure.allSatisfy(\.isWhitespace) else { return message }
        return message + " (\(linkFailure))"
    }

    func process(_ process: WorkerProcess, didExit status: ExitStatus) {
        guard self.process === process else { return }
        let failedTask: TaskRecord?
        if case .busy(_, let running) = state {
            running.timeoutTimer?.cancel()
            failedTask = running.record
        } else {
            failedTask = nil
        }
        logger.error(
            "worker process \(status)",
            metadata: ["worker_pid": "\(process.pid)", "task_id": "\(failedTask.map { "\($0.id)" } ?? "none")"]
        )
        // A process that lived a while before dying is a crash, not a crash loop: restart it at once.
        if NIODeadline.now() - process.startedAt >= .init(Self.stableLifetime) { consecutiveCrashes = 0 }
        consecutiveCrashes += 1
        state = .empty
        // The process is dead: a task sent ahead to it that it had not claimed (withdrawn now), or, for a handler
        // program, that comes after the task it was running, was never started (every reply it wrote has been
        // read, and a handler starts a task only once it has answered the one before). Any other may have been.
        let sentAhead = takePipeline(from: process)
        if sentAhead.areClaimed || !process.repliesAreAllRead {
            supervisor.requeue(sentAhead.notStarted)
            supervisor.failPossiblyStarted(sentAhead.mayBeRead, on: process, status)
        } else {
            supervisor.requeue(sentAhead.mayBeRead + sentAhead.notStarted)
        }
        supervisor.slotFailedToStart(self)
        if let failedTask, !failedTask.isFinished {
            let message = Self.crashMessage(pid: process.pid, status: status, linkFailure: process.linkFailure)
            supervisor.finish(failedTask, .failure(.workerCrashed, message), workerPID: process.pid)
        }
        scheduleRestart()
        supervisor.dispatch()
    }
}
