import AiotaskProtocol
import Logging
import NIOCore

/// One place in the pool: keeps one process alive and runs one task at a time on it.
///
/// Its decisions are ``PoolSlotStateMachine``'s: this class feeds it the events of its process, its timers and the
/// supervisor, and carries out the actions it returns — it spawns, stops and hands over processes, arms timers,
/// reads a process's memory and claims, and tells the supervisor about tasks.
///
/// A process that must go — its task timed out or was cancelled, it reached its task quota or its memory limit,
/// it broke the framing — is handed to the supervisor's ``EndingProcesses`` to die, and the slot starts a
/// replacement as soon as it is dead (never two live processes with the slot's index). A process that dies by
/// itself is restarted with exponential backoff while it keeps crashing.
///
/// Its stored properties are `@exclusivity(unchecked)`: it lives on one event loop and the state machines it feeds
/// never call back into it, so no two accesses overlap, and the run-time checks Swift would otherwise make on each
/// access of a class's property cost about a tenth of the daemon's CPU per task (docs/performance.md).
final class PoolSlot {
    typealias StateMachine = PoolSlotStateMachine<PoolProcess, TaskRecord>

    /// How many tasks are sent ahead to a process that claims its tasks, when ``ServerConfiguration/prefetch`` is
    /// automatic (see ``PoolSlotStateMachine/automaticPrefetch``).
    static var automaticPrefetch: Int { StateMachine.automaticPrefetch }

    let index: Int
    /// The supervisor that owns the slot and outlives it. `unowned(unsafe)`: a checked `unowned` reference costs an
    /// atomic increment and decrement of the supervisor's counts at each of the several uses per task.
    private unowned(unsafe) let supervisor: Supervisor
    @exclusivity(unchecked) private var machine = StateMachine()
    /// The timeout of the running task, if it has one.
    @exclusivity(unchecked) private var timeoutTimer: Scheduled<Void>?
    /// The running task's slow-task entry, while ``ServerConfiguration/slowTaskThreshold`` is set: one timer per
    /// running task, none at all when the setting is off.
    @exclusivity(unchecked) private var slowTaskTimer: Scheduled<Void>?
    @exclusivity(unchecked) private var restartTimer: Scheduled<Void>?
    /// The next reading of the busy process's memory, while a memory limit is set.
    @exclusivity(unchecked) private var memoryCheck: Scheduled<Void>?
    /// When the running task started; for ``status(at:)``.
    @exclusivity(unchecked) private var runningSince: NIODeadline?
    /// Tasks the current process has answered.
    @exclusivity(unchecked) private var tasksDoneByProcess = 0
    /// Processes of this slot replaced since the server started.
    @exclusivity(unchecked) private var restarts = 0

    init(index: Int, supervisor: Supervisor) {
        self.index = index
        self.supervisor = supervisor
    }

    private var configuration: ServerConfiguration { supervisor.configuration }
    private var logger: Logger { supervisor.logger }

    var process: PoolProcess? { machine.process }

    /// Whether the slot is leaving the pool after its current task.
    var isRetiring: Bool { machine.isRetiring }

    /// Whether a reload waits for the running task to replace or retire the process.
    var isRollingOver: Bool { machine.isRollingOver }

    var isBusy: Bool { machine.isBusy }

    /// Whether the slot can take a task: it has a process, idle, whose link is sound.
    var isIdle: Bool { machine.idleProcess?.isSound ?? false }

    /// What the slot's process is doing, for the metrics' `state` label.
    var processState: StateMachine.ProcessState { machine.processState }

    /// Whether the slot has a process and is not crash-looping: its last processes did not all die young.
    var isKeepingProcessAlive: Bool { machine.isKeepingProcessAlive(at: .now()) }

    var prefetchedCount: Int { machine.sentAheadCount }

    /// Whether a task of `size` bytes may be sent ahead to this slot's busy process (see
    /// ``PoolSlotStateMachine/canPrefetch(size:at:depth:stallLimit:processIsSound:)``).
    func canPrefetch(size: Int, at now: NIODeadline) -> Bool {
        // Called for every busy slot at each dispatch while tasks wait: the settings are read field by field (not
        // the whole configuration copied), and a full process is turned down before the rest is looked at.
        guard let process = machine.busyProcess, process.isSound else { return false }
        let depth = prefetchDepth(of: process)
        guard machine.sentAheadCount < depth else { return false }
        return machine.canPrefetch(
            size: size,
            at: now,
            depth: depth,
            stallLimit: supervisor.configuration.prefetchStallLimit,
            processIsSound: true
        )
    }

    private func prefetchDepth(of process: PoolProcess) -> Int {
        supervisor.configuration.prefetch ?? (process.claimsTasks ? Self.automaticPrefetch : 0)
    }

    /// Whether the slot holds tasks sent ahead that can be withdrawn (its process claims its tasks).
    var canWithdraw: Bool {
        guard machine.sentAheadCount > 0, let process else { return false }
        return process.claimsTasks
    }

    /// Whether `record` is one of the tasks sent ahead to this slot.
    func holds(_ record: TaskRecord) -> Bool {
        machine.holds(record)
    }

    /// Takes back the tasks sent ahead that the process has not started, and gives those not finished back to the
    /// supervisor's queue. Returns whether any went back; false too when the process does not claim its tasks.
    ///
    /// - Parameter forIdleProcess: the tasks go to a process that is idle; the running task is then taken as
    ///   slow, and no more tasks are sent ahead behind it.
    @discardableResult
    func withdrawSentAhead(forIdleProcess: Bool = false) -> Bool {
        guard let firstWithdrawn = firstUnclaimed() else { return false }
        let withdrawn = machine.withdraw(from: firstWithdrawn, holdingUpRunning: forIdleProcess)
        guard !withdrawn.isEmpty else { return false }
        logWithdrawal(withdrawn.count)
        supervisor.requeue(withdrawn)
        return withdrawn.contains { !$0.isFinished }
    }

    /// Withdraws the tasks sent ahead, one of which was cancelled, so that the process does not start it (and need
    /// not be stopped for it). While the process has not claimed its running task yet (it has not read it), the
    /// withdrawal waits, and is tried again a little later, up to
    /// ``PoolSlotStateMachine/cancelWithdrawalAttempts`` times.
    func withdrawCancelled(attempt: Int = 1) {
        guard canWithdraw else { return }
        let firstUnclaimed = firstUnclaimed()
        let action = machine.cancelledSentAhead(
            firstUnclaimed: firstUnclaimed,
            cancelledStillSentAhead: firstUnclaimed == nil && machine.containsSentAhead(where: \.isFinished),
            attempt: attempt
        )
        switch action {
        case .none:
            break
        case .requeue(let withdrawn, let dispatch):
            if !withdrawn.isEmpty { logWithdrawal(withdrawn.count) }
            supervisor.requeue(withdrawn)
            if dispatch { supervisor.dispatch() }
        case .retry(let delay, let attempt):
            supervisor.loop.assumeIsolated().scheduleTask(in: .init(delay)) { [weak self] in
                self?.withdrawCancelled(attempt: attempt)
            }
        }
    }

    /// The first task sent ahead that the busy process gave up; nil, changing nothing, when none can be withdrawn:
    /// none was sent ahead, the process does not claim its tasks or has not claimed its running one yet.
    private func firstUnclaimed() -> UInt32? {
        guard let start = machine.withdrawalStart, let process = machine.busyProcess else { return nil }
        return process.withdrawUnclaimed(from: start)
    }

    private func logWithdrawal(_ count: Int) {
        logger.debug(
            "withdrew \(count) tasks sent ahead and not started",
            metadata: ["worker_pid": "\(process.map { "\($0.pid)" } ?? "none")", "slot": "\(index)"]
        )
    }

    // MARK: Process lifecycle

    /// Starts a process if the slot has none.
    func start() {
        guard case .startProcess = machine.start() else { return }
        restartTimer?.cancel()
        restartTimer = nil
        do {
            let process = try PoolProcess.spawn(
                configuration.handler,
                slot: index,
                sharedPayloadBytes: configuration.sharedPayloadBytes,
                programTaskContext: configuration.handlerProgramTaskContext,
                confinement: supervisor.confinement,
                loop: supervisor.loop
            )
            process.delegate = self
            tasksDoneByProcess = 0
            // Reported before attaching: the new process may report ready at once, and must not find the quota of
            // the process it replaces, used up.
            machine.processStarted(
                process,
                at: process.startedAt,
                taskQuota: configuration.maximumTasksPerProcess.map {
                    $0 + Int.random(in: 0...max(0, configuration.maximumTasksJitter))
                }
            )
            process.attach(maximumReplyLength: supervisor.maximumReplyLength, logger: logger)
            logger.debug("pool process started", metadata: ["worker_pid": "\(process.pid)", "slot": "\(index)"])
            if configuration.handler.runsSwiftHandler,
                !process.sharesMemory(arenaWanted: configuration.sharedPayloadBytes > 0)
            {
                logger.warning(
                    "pool process got no memory shared with aiotaskd (memfd_create or mmap failed): tasks sent ahead to it cannot be withdrawn, and large payloads travel through its pipes",
                    metadata: ["worker_pid": "\(process.pid)", "slot": "\(index)"]
                )
            }
        } catch {
            logger.error("cannot start a pool process: \(error)", metadata: ["slot": "\(index)"])
            supervisor.slotFailedToStart(self)
            perform(machine.processFailedToStart(maximumBackoff: configuration.maximumRestartBackoff))
        }
    }

    /// Stops the slot for good: no task is taken and no process started from now on.
    func stop() {
        perform(machine.stop())
    }

    /// Stays in the pool after all, should it have been leaving after its task (a reload shrank the pool, and the
    /// next one grew it again before the task ended): the slot keeps its index, so no new slot takes it.
    func stayInPool() {
        machine.stayInPool()
    }

    /// No wait after a first crash, then 100 ms doubling up to `maximum` while the crashes go on.
    static func backoff(crashes: Int, maximum: Duration) -> Duration {
        StateMachine.backoff(crashes: crashes, maximum: maximum)
    }

    /// Replaces the process with one running the current configuration, without disturbing a running task:
    /// at once if idle, after its task otherwise.
    func renew() {
        perform(machine.renew())
    }

    /// Leaves the pool: at once if idle, after its task otherwise. The supervisor is told when it is done.
    func retire() {
        perform(machine.retire())
    }

    // MARK: Tasks

    /// Runs `record` on this slot's idle process.
    func run(_ record: TaskRecord) {
        guard let process = machine.idleProcess else {
            preconditionFailure("PoolSlot.run called on a slot that is not idle")
        }
        let context = record.context(defaultTimeout: configuration.defaultTaskTimeout)
        let now = NIODeadline.now()
        machine.run(record, index: process.send(record.payload, context: context), at: now)
        begin(record, on: process, at: now)
    }

    /// Sends `record` to the busy process, to run after the tasks it has.
    func prefetch(_ record: TaskRecord) {
        guard let process = machine.busyProcess else {
            preconditionFailure("PoolSlot.prefetch called on a slot that is not busy")
        }
        let bytes = record.payload.readableBytes
        let context = record.context(defaultTimeout: configuration.defaultTaskTimeout)
        machine.prefetch(record, index: process.send(record.payload, context: context), bytes: bytes)
    }

    /// Marks `record` as running on `process` from now on, and starts its timeout.
    private func begin(_ record: TaskRecord, on process: PoolProcess, at now: NIODeadline) {
        record.state = .running(pid: process.pid)
        supervisor.taskStarts(record, at: now)
        runningSince = now
        record.payload = ByteBuffer()
        timeoutTimer = nil
        if let timeout = record.timeout ?? configuration.defaultTaskTimeout {
            timeoutTimer = supervisor.loop.assumeIsolated().scheduleTask(in: .init(timeout)) {
                // Strong, as the other per-task timers: the timer is cancelled with the task, and a `weak` capture
                // would move the slot's reference counts to a side table for good (see `PoolProcess.delegate`).
                self.timeOut(record, after: timeout)
            }
        }
        slowTaskTimer = nil
        if let threshold = configuration.slowTaskThreshold {
            let startedAt = NIODeadline.now()
            slowTaskTimer = supervisor.loop.assumeIsolated().scheduleTask(in: .init(threshold)) {
                self.slowTaskTimer = nil
                self.reportSlow(record, startedAt: startedAt, threshold: threshold)
            }
        }
        scheduleMemoryCheck()
    }

    /// Cancels the running task's timers: its timeout and its slow-task entry.
    private func cancelTimeout() {
        timeoutTimer?.cancel()
        timeoutTimer = nil
        slowTaskTimer?.cancel()
        slowTaskTimer = nil
    }

    /// Logs, once, that `record` still runs past the slow-task threshold, and counts it.
    private func reportSlow(_ record: TaskRecord, startedAt: NIODeadline, threshold: Duration) {
        // The timer is cancelled with the task; this guards against a task answered in the same tick.
        guard let (process, running) = machine.busy, running.task === record, !record.isFinished else { return }
        let elapsedMicroseconds = (NIODeadline.now() - startedAt).nanoseconds / 1000
        supervisor.noteSlowTask()
        logger.warning(
            "task still running after \(elapsedMicroseconds / 1000) ms, past the slow-task threshold",
            metadata: record.logMetadata([
                "worker_pid": "\(process.pid)", "elapsed_usec": "\(elapsedMicroseconds)",
                "threshold_usec": "\(Int64(threshold / .microseconds(1)))", "message_id": "\(LogMessageID.slowTask)",
            ])
        )
    }

    /// Stops the running `record` without answering it (cancelled, or its client is gone): its process is
    /// killed and replaced.
    func interrupt(_ record: TaskRecord) {
        perform(machine.interrupt(record))
    }

    /// At the drain deadline: stops the busy process like ``interrupt(_:)`` and returns its running task, unanswered.
    func interruptAtDrainDeadline() -> TaskRecord? {
        let action = machine.drainDeadline()
        perform(action)
        guard case .replaceProcess(_, _, _, _, let running?) = action, !running.isFinished else { return nil }
        return running
    }

    private func timeOut(_ record: TaskRecord, after timeout: Duration) {
        let action = machine.timedOut(record)
        guard case .replaceProcess(let process, _, _, _, _) = action else { return }
        logger.warning(
            "task timed out; terminating its pool process",
            metadata: record.logMetadata(["worker_pid": "\(process.pid)", "timeout": "\(timeout)"])
        )
        perform(action)
        if !record.isFinished {
            supervisor.finish(
                record,
                .failure(.timedOut, "task exceeded its timeout of \(timeout)"),
                workerPID: process.pid
            )
        }
        supervisor.dispatch()
    }

    // MARK: Memory limit

    /// Reads the busy process's memory after ``ServerConfiguration/memoryCheckInterval``, if a limit is set. One
    /// reading is pending at a time; the chain ends when the slot is not busy at reading time.
    private func scheduleMemoryCheck() {
        guard memoryCheck == nil, configuration.maximumProcessRSS != nil, !machine.isStopped else { return }
        memoryCheck = supervisor.loop.assumeIsolated().scheduleTask(in: .init(configuration.memoryCheckInterval)) {
            self.memoryCheck = nil
            self.checkMemoryWhileBusy()
        }
    }

    /// Kills the busy process if it holds more memory than the limit, failing its task; reads again later if not.
    private func checkMemoryWhileBusy() {
        guard let (process, running) = machine.busy, let limit = configuration.maximumProcessRSS else { return }
        // The processes the handler started count too: the limit is on what the task makes the pool hold.
        let tree = process.treeResidentBytes
        let action = machine.memoryReading(exceedsLimit: tree.map { $0.bytes > limit } ?? false)
        guard case .replaceProcess = action, let (resident, descendants) = tree else {
            perform(action)
            return
        }
        let record = running.task
        let who = descendants == 0 ? "pool process \(process.pid)" : "pool process \(process.pid) with its children"
        let message = "\(who) \(Self.memoryLimitMessage(resident: resident, limit: limit))"
        logger.error(
            "\(message); killing its process group",
            metadata: record.logMetadata([
                "worker_pid": "\(process.pid)", "rss_bytes": "\(resident)",
                "limit_bytes": "\(limit)", "message_id": "\(LogMessageID.memoryLimitExceeded)",
            ])
        )
        perform(action)
        if !record.isFinished {
            supervisor.finish(record, .failure(.workerCrashed, message), workerPID: process.pid)
        }
        supervisor.dispatch()
    }

    /// Whether `process`, having answered a task, is over the memory limit; logged if so.
    private func isOverMemoryLimit(_ process: PoolProcess) -> Bool {
        guard let limit = configuration.maximumProcessRSS, let resident = process.residentBytes, resident > limit
        else { return false }
        let message = Self.memoryLimitMessage(resident: resident, limit: limit)
        logger.notice(
            "pool process \(process.pid) \(message) after a task; replacing it",
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

    // MARK: Carrying out actions

    /// Carries out what the state machine decided, but for answering and failing tasks, which the event's handler
    /// does with what it knows (the reply, the timeout, the memory reading).
    /// - Parameter now: the caller's reading of the clock, if it has one (the start of a task sent ahead uses it).
    private func perform(_ action: StateMachine.Action, at now: NIODeadline? = nil) {
        switch action {
        case .none, .rejectReply:
            break
        case .startProcess:
            start()
        case .scheduleRestart(let delay):
            scheduleRestart(after: delay)
        case .reportIdle:
            supervisor.slotBecameIdle(self)
        case .startTask(let record):
            guard let process = machine.busyProcess else { return }
            supervisor.prefetchedTaskStarts(record)
            begin(record, on: process, at: now ?? .now())
        case .scheduleMemoryCheck:
            scheduleMemoryCheck()
        case .replaceProcess(let process, let replacement, let sentAhead, let runningIsAnswered, _):
            cancelTimeout()
            if case .recycle = replacement {
                logger.debug("recycling pool process", metadata: ["worker_pid": "\(process.pid)"])
            }
            noteRestart(replacement.restartReason)
            handOver(process, sentAhead: sentAhead, runningIsAnswered: runningIsAnswered)
            end(process, replacement.ending)
            supervisor.endingProcesses.whenExited(process) { [weak self] in
                guard let self else { return }
                self.perform(self.machine.predecessorDied(process))
            }
        case .stopProcess(let process, let sentAhead, let leavePool):
            cancelTimeout()
            restartTimer?.cancel()
            restartTimer = nil
            memoryCheck?.cancel()
            memoryCheck = nil
            if let process {
                handOver(process, sentAhead: sentAhead, runningIsAnswered: false)
                process.retire(gracePeriod: configuration.killGracePeriod)
            }
            if leavePool { supervisor.slotRetired(self) }
        case .processDied:
            // Carried out by process(_:didExit:), which knows the exit status that the failures name.
            break
        }
    }

    /// Counts a restart, and starts a process after `delay`, at once if it is zero.
    private func scheduleRestart(after delay: Duration) {
        noteRestart(.crash)
        if delay == .zero {
            start()
            return
        }
        logger.warning("restarting pool process after \(delay)", metadata: ["slot": "\(index)"])
        restartTimer?.cancel()
        restartTimer = supervisor.loop.assumeIsolated().scheduleTask(in: .init(delay)) { [weak self] in
            guard let self else { return }
            self.restartTimer = nil
            self.perform(self.machine.restartBackoffElapsed())
        }
    }

    private func noteRestart(_ reason: RestartReason) {
        restarts += 1
        supervisor.noteRestart(reason)
    }

    /// What `POOL` says of this slot: its process, what it runs and since when, its memory and its counts.
    func status(at now: NIODeadline) -> PoolProcessStatus {
        var status = PoolProcessStatus(
            slot: index,
            pid: process.map { Int($0.pid) },
            state: .restarting,
            tasksDone: tasksDoneByProcess,
            restarts: restarts
        )
        if machine.isStopped {
            status.state = .stopped
        } else if let (process, running) = machine.busy {
            status.state = .busy
            if !running.task.isFinished {
                status.taskID = running.task.id
                status.taskSeconds = runningSince.map { Double((now - $0).nanoseconds) / 1e9 }
            }
            status.residentBytes = process.residentBytes
        } else if let process = machine.idleProcess {
            status.state = .idle
            status.residentBytes = process.residentBytes
        } else if let process = machine.process {
            status.state = .starting
            status.residentBytes = process.residentBytes
        }
        return status
    }

    private func end(_ process: PoolProcess, _ ending: StateMachine.Ending) {
        switch ending {
        case .retire: process.retire(gracePeriod: configuration.killGracePeriod)
        case .terminate: process.terminate(gracePeriod: configuration.killGracePeriod)
        case .kill: process.kill()
        }
    }

    /// Hands `process`, alive, over to die on its own, so the slot can start another at once. The tasks sent ahead
    /// to it that it never started go back to the supervisor's queue; those it may still read stay with it until it
    /// is dead (``TasksInDyingProcess``), so that none runs twice or is reported as never started after it ran.
    ///
    /// - Parameter runningIsAnswered: whether the process has answered the task it was running.
    private func handOver(
        _ process: PoolProcess,
        sentAhead: CircularBuffer<StateMachine.SentTask>,
        runningIsAnswered: Bool
    ) {
        var held: TasksInDyingProcess?
        if !sentAhead.isEmpty {
            let firstWithdrawn = process.withdrawAllUnclaimed()
            let split = StateMachine.settle(sentAhead, firstWithdrawn: firstWithdrawn)
            supervisor.requeue(split.notStarted)
            if !split.mayBeRead.isEmpty {
                held = TasksInDyingProcess(
                    split.mayBeRead,
                    runningIsAnswered: runningIsAnswered,
                    areClaimed: firstWithdrawn != nil,
                    supervisor: supervisor
                )
            }
        }
        process.delegate = supervisor.endingProcesses
        supervisor.endingProcesses.adopt(process, holding: held)
    }
}

extension PoolSlot: PoolProcessDelegate {
    func processIsReady(_ process: PoolProcess) {
        perform(machine.processReady(process))
    }

    func process(_ process: PoolProcess, didReply reply: HandlerReply, at now: NIODeadline) {
        guard let current = machine.busyProcess, current === process else {
            process.breakLink("handler replied while it had no task")
            return
        }
        cancelTimeout()
        // `now` serves all this reply sets off: the next task's start, the answer, the dispatch that follows.
        // A process left over the memory limit is replaced once it is idle (see the state machine).
        let overMemoryLimit = !machine.renewsAfterTask && isOverMemoryLimit(process)
        // A task sent ahead and cancelled since is withdrawn now if the process has not started it.
        if machine.nextSentAhead?.isFinished == true { withdrawSentAhead() }
        let next = machine.nextSentAhead
        let action = machine.replyReceived(
            from: process,
            at: now,
            nextIsCancelled: next?.isFinished ?? false,
            overMemoryLimit: overMemoryLimit
        )
        if case .replaceProcess(_, .cancelledSentAhead, _, _, _) = action.then {
            logger.debug(
                "a task sent ahead was cancelled; stopping its process",
                metadata: ["worker_pid": "\(process.pid)"]
            )
        }
        perform(action.then, at: now)
        tasksDoneByProcess += 1
        if let answered = action.answered, !answered.isFinished {
            let outcome: TaskOutcome =
                switch reply {
                case .result(let bytes): .success(bytes)
                case .error(let message): .failure(.handlerError, message)
                }
            supervisor.finish(answered, outcome, workerPID: process.pid, at: now)
        }
        supervisor.dispatch(at: now)
    }

    /// The process is being killed. The slot keeps it, taking no task on it (see ``isIdle``), until its exit is
    /// reaped: a crashing process closes its link a moment before that, and only the exit status tells why it
    /// died, so its task is failed and the process replaced in ``process(_:didExit:)``.
    func process(_ process: PoolProcess, brokeLink reason: String) {
        guard self.process === process else { return }
        logger.error("pool process broke its link: \(reason)", metadata: ["worker_pid": "\(process.pid)"])
    }

    /// The failure message of the task a dying process was running: `pool process 1234 exited with code 3`, then
    /// why its link broke, in parentheses, when there is a reason to give — never an empty `()`.
    static func crashMessage(pid: Int32, status: ExitStatus, linkFailure: String?) -> String {
        let message = "pool process \(pid) \(status)"
        guard let linkFailure, !linkFailure.allSatisfy(\.isWhitespace) else { return message }
        return message + " (\(linkFailure))"
    }

    func process(_ process: PoolProcess, didExit status: ExitStatus) {
        let action = machine.processExited(
            process,
            at: .now(),
            maximumBackoff: configuration.maximumRestartBackoff
        )
        guard case .processDied(_, let failedTask, let sentAhead, let delay) = action else { return }
        cancelTimeout()
        logger.error(
            "pool process \(status)",
            metadata: failedTask?.logMetadata(["worker_pid": "\(process.pid)"])
                ?? ["worker_pid": "\(process.pid)", "task_id": "none"]
        )
        // The process is dead: a task sent ahead to it that it had not claimed (withdrawn now), or, for a handler
        // program, that comes after the task it was running, was never started (every reply it wrote has been
        // read, and a handler starts a task only once it has answered the one before). Any other may have been.
        if !sentAhead.isEmpty {
            let settled = StateMachine.settleAfterDeath(
                sentAhead,
                firstWithdrawn: process.withdrawAllUnclaimed(),
                repliesAreAllRead: process.repliesAreAllRead
            )
            supervisor.requeue(settled.requeue)
            supervisor.failPossiblyStarted(settled.fail, on: process, status)
        }
        supervisor.slotFailedToStart(self)
        if let failedTask, !failedTask.isFinished {
            let message = Self.crashMessage(pid: process.pid, status: status, linkFailure: process.linkFailure)
            supervisor.finish(failedTask, .failure(.workerCrashed, message), workerPID: process.pid)
        }
        scheduleRestart(after: delay)
        supervisor.dispatch()
    }
}
