import NIOCore

/// The decisions of one pool slot, as a value: which process it has and what it runs, what happens when a reply
/// comes, the process dies, a task times out or is cancelled, the pool is reloaded, shrunk or stopped.
///
/// Events go in as mutating functions; each returns what ``PoolSlot`` must do (an ``Action``). Nothing here
/// touches a process, a channel, a timer or the clock: the process and the task are opaque (`Process`, `Task`,
/// compared by identity), times come in as event arguments, and what only the process can tell (which tasks it
/// claimed, its memory, whether its link is sound) is read by ``PoolSlot`` and passed in. So every transition can
/// be tested without a process (`PoolSlotStateMachineTests`).
///
/// A process that must go — its task timed out or was cancelled, it reached its task quota or its memory limit —
/// is handed over to die (``Action/replaceProcess(_:_:sentAhead:runningIsAnswered:running:)``), and its successor
/// is started only once it is dead (``predecessorDied(_:)``): never two live processes with the slot's index. A
/// process that dies by itself is restarted with exponential backoff while it keeps crashing.
struct PoolSlotStateMachine<Process: AnyObject, Task: AnyObject> {
    /// A task sent ahead to the busy process, with its index in the process's stream of tasks.
    struct SentTask {
        let task: Task
        let index: UInt32
        /// Its payload's size, counted against ``prefetchByteLimit``.
        let bytes: Int
    }

    /// The task the busy process runs.
    struct RunningTask {
        let task: Task
        /// Its index in the process's stream of tasks.
        let index: UInt32
        let startedAt: NIODeadline
        /// Set when tasks sent ahead were withdrawn while it ran: it is slow, so no more are sent ahead behind it.
        var isHoldingUp = false
    }

    enum State {
        /// No process and none on its way: before the first start.
        case empty
        /// No process: waiting out a restart backoff (``restartBackoffElapsed()``).
        case waitingToRestart
        /// The process this slot replaced is dying; its successor starts once it is dead, so that two live
        /// processes never share the slot's index (`AIOTASK_WORKER_INDEX`, which a handler may use to pick a GPU).
        case waitingForPredecessor(Process)
        case starting(Process)
        case idle(Process)
        case busy(Process, RunningTask)
        /// For good: no task is taken and no process started from now on.
        case stopped
    }

    /// Why a process is replaced; it says how the process is made to go.
    enum Replacement {
        /// A reload: the process runs the previous configuration.
        case renew
        /// It went over the memory limit with a task, and is replaced once idle.
        case renewOverMemoryLimit
        /// It reached its task quota.
        case recycle
        /// Its running task timed out; the task fails.
        case timeout
        /// It holds more memory than the limit while running a task; the task fails.
        case memoryLimit
        /// Its running task was cancelled, or its client left.
        case interrupt
        /// It is starting a task sent ahead that was cancelled since.
        case cancelledSentAhead
        /// The drain deadline came while it ran a task.
        case drainDeadline

        var ending: Ending {
            switch self {
            case .renew, .renewOverMemoryLimit, .recycle: .retire
            case .timeout, .interrupt, .cancelledSentAhead, .drainDeadline: .terminate
            case .memoryLimit: .kill
            }
        }

        /// The `reason` label of the restart it counts as.
        var restartReason: RestartReason {
            switch self {
            case .renew: .reload
            case .renewOverMemoryLimit, .memoryLimit: .memoryLimit
            case .recycle: .recycle
            case .timeout: .timeout
            case .interrupt, .cancelledSentAhead: .cancel
            case .drainDeadline: .shutdown
            }
        }
    }

    /// How a process being let go is made to go.
    enum Ending {
        /// Its link is closed, its cue to exit by itself.
        case retire
        /// SIGTERM to its group, SIGKILL after the grace period.
        case terminate
        /// SIGKILL to its group at once.
        case kill
    }

    enum Action {
        case none
        /// Spawn a process now, then report ``processStarted(_:at:taskQuota:)`` or
        /// ``processFailedToStart(maximumBackoff:)``.
        case startProcess
        /// Count a restart and start a process after `delay` (``restartBackoffElapsed()``), at once if it is zero.
        case scheduleRestart(after: Duration)
        /// The process is idle: the supervisor may hand it a task.
        case reportIdle
        /// `task`, sent ahead, starts running now: arm its timeout and the memory check.
        case startTask(Task)
        /// Read the busy process's memory again later (``memoryReading(exceedsLimit:)``).
        case scheduleMemoryCheck
        /// Hand `process`, alive, over to die as the replacement's ``Replacement/ending`` says, with the tasks sent
        /// ahead to it (``settle(_:firstWithdrawn:)``); count a restart; start its successor once it is dead
        /// (``predecessorDied(_:)``). `running` is the task it ran, if any, unanswered.
        case replaceProcess(
            Process,
            Replacement,
            sentAhead: CircularBuffer<SentTask>,
            runningIsAnswered: Bool,
            running: Task?
        )
        /// Hand the process, if any, over to retire with the tasks sent ahead to it; no successor. With
        /// `leavePool`, tell the supervisor the slot is gone.
        case stopProcess(Process?, sentAhead: CircularBuffer<SentTask>, leavePool: Bool)
        /// The process died: the tasks sent ahead to it go back or fail (``settleAfterDeath(_:firstWithdrawn:repliesAreAllRead:)``),
        /// `running` fails as crashed, then a process starts after `restartAfter` (as ``scheduleRestart(after:)``).
        case processDied(Process, running: Task?, sentAhead: CircularBuffer<SentTask>, restartAfter: Duration)
        /// The process replied while it had no task: break its link.
        case rejectReply
    }

    /// What a reply does: `answered` gets its outcome, after `then` was carried out.
    struct ReplyAction {
        /// The task answered, nil when the reply was not expected (`then` is ``Action/rejectReply``).
        let answered: Task?
        let then: Action
    }

    /// What a cancelled task sent ahead does.
    enum CancelAction {
        case none
        /// The tasks withdrawn go back to the queue, in order; the supervisor dispatches again when `dispatch`.
        case requeue([Task], dispatch: Bool)
        /// The process has not claimed its running task yet: try again after `delay`, as attempt `attempt`.
        case retry(after: Duration, attempt: Int)
    }

    /// Crashes in a row, without a task answered in between, after which a slot counts as crash-looping.
    static var crashLoopThreshold: Int { 3 }
    /// How long a process must live to show that the slot is not crash-looping, even without a task.
    static var stableLifetime: Duration { .seconds(1) }
    /// How many tasks are sent ahead to a process that claims its tasks, when ``ServerConfiguration/prefetch`` is
    /// automatic: enough for replies and tasks to move in batches; they cost nothing should the process stall,
    /// since they are withdrawn.
    static var automaticPrefetch: Int { 32 }
    /// Task bytes sent ahead to one process beyond which no more are (one task is always allowed).
    static var prefetchByteLimit: Int { 1 << 20 }
    /// How often a withdrawal for a cancelled task sent ahead is tried while the process has not claimed its
    /// running task (it has not read it yet), and how long apart.
    static var cancelWithdrawalAttempts: Int { 50 }
    static var cancelWithdrawalRetryDelay: Duration { .microseconds(200) }

    private(set) var state: State = .empty
    /// Tasks the process may still run before it is recycled; nil without a quota.
    private var tasksUntilRecycle: Int?
    private(set) var consecutiveCrashes = 0
    /// When the current process started.
    private var processStartedAt: NIODeadline = .uptimeNanoseconds(0)
    /// Replace the process once its current task is answered (a reload rolls the pool this way).
    private(set) var renewsAfterTask = false
    /// Set with ``renewsAfterTask`` when the renewal is for the memory limit rather than a reload.
    private var renewsForMemoryLimit = false
    /// Leave the pool once the current task is answered (the pool shrank).
    private var retiresAfterTask = false
    /// Tasks sent to the busy process behind the running one, in the order it will run them; empty unless busy.
    private var pipeline = CircularBuffer<SentTask>()
    /// Task bytes in `pipeline`.
    private var pipelineBytes = 0

    init() {}

    // MARK: Queries

    /// The live process, if any.
    var process: Process? {
        switch state {
        case .starting(let process), .idle(let process), .busy(let process, _): process
        case .empty, .waitingToRestart, .waitingForPredecessor, .stopped: nil
        }
    }

    /// The process, when it is idle.
    var idleProcess: Process? {
        if case .idle(let process) = state { return process }
        return nil
    }

    /// The process and its task, when it is busy.
    var busy: (process: Process, running: RunningTask)? {
        if case .busy(let process, let running) = state { return (process, running) }
        return nil
    }

    /// The process while the slot is busy: ``busy`` without copying the running task, for the questions asked at
    /// every dispatch and reply.
    var busyProcess: Process? {
        if case .busy(let process, _) = state { return process }
        return nil
    }

    /// Whether the slot's process has started and is not ready for a task yet.
    var isStarting: Bool {
        if case .starting = state { return true }
        return false
    }

    var isBusy: Bool {
        if case .busy = state { return true }
        return false
    }

    /// A live process's state, as the metrics count it.
    enum ProcessState {
        /// No live process: before the first start, waiting out a backoff or a predecessor, stopped.
        case none
        case starting
        case idle
        case busy
    }

    var processState: ProcessState {
        switch state {
        case .starting: .starting
        case .idle: .idle
        case .busy: .busy
        case .empty, .waitingToRestart, .waitingForPredecessor, .stopped: .none
        }
    }

    var isStopped: Bool {
        if case .stopped = state { return true }
        return false
    }

    /// Whether the slot is leaving the pool after its current task.
    var isRetiring: Bool { retiresAfterTask || isStopped }

    /// Whether a reload (or a shrinking pool) waits for the running task to replace or retire the process.
    var isRollingOver: Bool { renewsAfterTask || retiresAfterTask }

    var sentAheadCount: Int { pipeline.count }

    /// The first task sent ahead: the one the process runs next.
    var nextSentAhead: Task? { pipeline.first?.task }

    /// Whether `task` is one of the tasks sent ahead.
    func holds(_ task: Task) -> Bool {
        pipeline.contains { $0.task === task }
    }

    /// Whether a task sent ahead satisfies `predicate`.
    func containsSentAhead(where predicate: (Task) -> Bool) -> Bool {
        pipeline.contains { predicate($0.task) }
    }

    /// Whether the slot has a process and is not crash-looping: its last processes did not all die young.
    func isKeepingProcessAlive(at now: NIODeadline) -> Bool {
        switch state {
        // A slot waiting for the process it replaces to die is not failing: its successor starts right after.
        case .waitingForPredecessor: return true
        case .starting, .idle, .busy:
            return consecutiveCrashes < Self.crashLoopThreshold
                || now - processStartedAt >= .init(Self.stableLifetime)
        case .empty, .waitingToRestart, .stopped: return false
        }
    }

    /// Whether a task of `size` bytes may be sent ahead to the busy process: it is sound, stays in the pool, will
    /// still be there (its recycling quota) by the time it gets to the task, has room for it (`depth` tasks), and
    /// its current task has not run for longer than `stallLimit`.
    func canPrefetch(size: Int, at now: NIODeadline, depth: Int, stallLimit: Duration, processIsSound: Bool) -> Bool {
        guard case .busy(_, let running) = state, processIsSound, !renewsAfterTask, !retiresAfterTask,
            !running.isHoldingUp, pipeline.count < depth,
            pipeline.isEmpty || pipelineBytes + size <= Self.prefetchByteLimit,
            now - running.startedAt <= .init(stallLimit)
        else { return false }
        if let remaining = tasksUntilRecycle { return pipeline.count + 1 < remaining }
        return true
    }

    /// No wait after a first crash, then 100 ms doubling up to `maximum` while the crashes go on.
    static func backoff(crashes: Int, maximum: Duration) -> Duration {
        guard crashes > 1 else { return .zero }
        let exponent = min(crashes - 2, 20)
        return min(.milliseconds(100) * (1 << exponent), maximum)
    }

    // MARK: Process lifecycle

    /// Asks for a process, if the slot has none and none is on its way.
    mutating func start() -> Action {
        switch state {
        case .empty, .waitingToRestart: return .startProcess
        case .waitingForPredecessor, .starting, .idle, .busy, .stopped: return .none
        }
    }

    /// The process asked for by ``Action/startProcess`` runs; it may run `taskQuota` tasks (nil: no quota).
    mutating func processStarted(_ process: Process, at startedAt: NIODeadline, taskQuota: Int?) {
        switch state {
        case .empty, .waitingToRestart:
            state = .starting(process)
            processStartedAt = startedAt
            tasksUntilRecycle = taskQuota
        case .waitingForPredecessor, .starting, .idle, .busy, .stopped:
            preconditionFailure("a pool slot started a process it did not ask for, in state \(state)")
        }
    }

    /// The process asked for by ``Action/startProcess`` could not be spawned.
    mutating func processFailedToStart(maximumBackoff: Duration) -> Action {
        consecutiveCrashes += 1
        return scheduleRestart(maximumBackoff: maximumBackoff)
    }

    private mutating func scheduleRestart(maximumBackoff: Duration) -> Action {
        switch state {
        case .empty, .waitingToRestart, .starting, .idle, .busy:
            state = .waitingToRestart
            return .scheduleRestart(after: Self.backoff(crashes: consecutiveCrashes, maximum: maximumBackoff))
        case .waitingForPredecessor, .stopped:
            return .none
        }
    }

    /// The restart backoff is over.
    mutating func restartBackoffElapsed() -> Action {
        guard case .waitingToRestart = state else { return .none }
        return .startProcess
    }

    /// `process`, which this slot handed over to die, is dead: its successor may start.
    mutating func predecessorDied(_ process: Process) -> Action {
        guard case .waitingForPredecessor(let predecessor) = state, predecessor === process else { return .none }
        state = .empty
        return .startProcess
    }

    /// `process` is ready for tasks.
    mutating func processReady(_ process: Process) -> Action {
        guard case .starting(let current) = state, current === process else { return .none }
        return becomeIdle(process)
    }

    /// `process` is dead (it crashed, or was killed from outside): its running task fails, the tasks sent ahead
    /// are settled, and a process starts again after a backoff that grows while the crashes go on.
    mutating func processExited(_ process: Process, at now: NIODeadline, maximumBackoff: Duration) -> Action {
        let running: Task?
        switch state {
        case .starting(let current), .idle(let current):
            guard current === process else { return .none }
            running = nil
        case .busy(let current, let task):
            guard current === process else { return .none }
            running = task.task
        case .empty, .waitingToRestart, .waitingForPredecessor, .stopped:
            return .none
        }
        // A process that lived a while before dying is a crash, not a crash loop: restart it at once.
        if now - processStartedAt >= .init(Self.stableLifetime) { consecutiveCrashes = 0 }
        consecutiveCrashes += 1
        let sentAhead = takePipeline()
        state = .waitingToRestart
        let delay = Self.backoff(crashes: consecutiveCrashes, maximum: maximumBackoff)
        return .processDied(process, running: running, sentAhead: sentAhead, restartAfter: delay)
    }

    /// Stops the slot for good: no task is taken and no process started from now on.
    mutating func stop() -> Action {
        stop(leavingPool: false)
    }

    private mutating func stop(leavingPool: Bool) -> Action {
        let process = self.process
        let sentAhead = takePipeline()
        state = .stopped
        return .stopProcess(process, sentAhead: sentAhead, leavePool: leavingPool)
    }

    /// Stays in the pool after all, should it have been leaving after its task (a reload shrank the pool, and the
    /// next one grew it again before the task ended).
    mutating func stayInPool() {
        guard !isStopped else { return }
        retiresAfterTask = false
    }

    /// A reload: replaces the process with one running the current configuration, without disturbing a running
    /// task: at once if idle or starting, after its task if busy.
    mutating func renew() -> Action {
        switch state {
        case .busy:
            renewsAfterTask = true
            return .none
        case .starting(let process), .idle(let process):
            return replace(process, .renew)
        case .empty, .waitingToRestart, .waitingForPredecessor, .stopped:
            return .none
        }
    }

    /// The pool shrank: leaves it at once if not busy, after its task otherwise.
    mutating func retire() -> Action {
        if isBusy {
            retiresAfterTask = true
            return .none
        }
        return stop(leavingPool: true)
    }

    // MARK: Tasks

    /// The idle process was sent `task`, as its task number `index`, at `now`.
    mutating func run(_ task: Task, index: UInt32, at now: NIODeadline) {
        guard case .idle(let process) = state else {
            preconditionFailure("a task was run on a pool slot that is not idle, in state \(state)")
        }
        state = .busy(process, RunningTask(task: task, index: index, startedAt: now))
    }

    /// The busy process was sent `task` of `bytes` bytes, as its task number `index`, to run after those it has.
    mutating func prefetch(_ task: Task, index: UInt32, bytes: Int) {
        guard case .busy = state else {
            preconditionFailure("a task was sent ahead to a pool slot that is not busy, in state \(state)")
        }
        pipeline.append(SentTask(task: task, index: index, bytes: bytes))
        pipelineBytes += bytes
    }

    /// The index from which the tasks sent ahead would be withdrawn (the one after the running task's), if any
    /// were sent ahead.
    var withdrawalStart: UInt32? {
        guard !pipeline.isEmpty, case .busy(_, let running) = state else { return nil }
        return running.index &+ 1
    }

    /// The process gave up the tasks sent ahead from its task number `firstWithdrawn` on (it had not claimed them):
    /// they leave the slot and are returned in order. With `holdingUpRunning` (they go to an idle process), the
    /// running task is taken as slow, and no more tasks are sent ahead behind it.
    mutating func withdraw(from firstWithdrawn: UInt32, holdingUpRunning: Bool = false) -> [Task] {
        guard case .busy(let process, var running) = state else { return [] }
        var withdrawn: [Task] = []
        while let last = pipeline.last, TaskClaims.index(last.index, isAtOrAfter: firstWithdrawn) {
            pipeline.removeLast()
            pipelineBytes -= last.bytes
            withdrawn.append(last.task)
        }
        withdrawn.reverse()
        if holdingUpRunning, !withdrawn.isEmpty {
            running.isHoldingUp = true
            state = .busy(process, running)
        }
        return withdrawn
    }

    /// A task sent ahead was cancelled. `firstUnclaimed` is the first task the process gave up (nil: it has not
    /// claimed its running task yet, so nothing could be withdrawn); `cancelledStillSentAhead` whether the
    /// cancelled task is still here; `attempt` counts the tries, from 1.
    ///
    /// A task the process gave up goes back to the queue and never runs here; one it claimed already is stopped
    /// when its turn comes (``replyReceived(from:at:nextIsCancelled:overMemoryLimit:)``).
    mutating func cancelledSentAhead(
        firstUnclaimed: UInt32?,
        cancelledStillSentAhead: Bool,
        attempt: Int
    )
        -> CancelAction
    {
        if let firstUnclaimed {
            // The first attempt runs within the cancel, which dispatches afterwards.
            return .requeue(withdraw(from: firstUnclaimed), dispatch: attempt > 1)
        }
        guard attempt < Self.cancelWithdrawalAttempts, cancelledStillSentAhead else { return .none }
        return .retry(after: Self.cancelWithdrawalRetryDelay, attempt: attempt + 1)
    }

    /// `process` answered its running task at `now`. `nextIsCancelled`: the first task sent ahead, which it starts
    /// now, was cancelled; `overMemoryLimit`: it now holds more memory than the limit.
    mutating func replyReceived(
        from process: Process,
        at now: NIODeadline,
        nextIsCancelled: Bool,
        overMemoryLimit: Bool
    ) -> ReplyAction {
        guard case .busy(let current, let running) = state, current === process else {
            return ReplyAction(answered: nil, then: .rejectReply)
        }
        consecutiveCrashes = 0
        if let remaining = tasksUntilRecycle { tasksUntilRecycle = remaining - 1 }
        // A process left over the memory limit is replaced once it is idle: the tasks already sent ahead to it
        // still run there (moving them could run one twice), and no more are sent (see canPrefetch).
        if overMemoryLimit {
            renewsAfterTask = true
            renewsForMemoryLimit = true
        }
        guard let next = pipeline.first else {
            return ReplyAction(answered: running.task, then: becomeIdle(process))
        }
        if nextIsCancelled {
            // The process is starting a task cancelled since it was sent ahead: it is stopped and replaced; the
            // rest of the pipe runs elsewhere once it is dead, except what it may have read by then.
            return ReplyAction(
                answered: running.task,
                then: replace(process, .cancelledSentAhead, runningIsAnswered: true)
            )
        }
        pipeline.removeFirst()
        pipelineBytes -= next.bytes
        state = .busy(process, RunningTask(task: next.task, index: next.index, startedAt: now))
        return ReplyAction(answered: running.task, then: .startTask(next.task))
    }

    /// The timeout of `task` expired.
    mutating func timedOut(_ task: Task) -> Action {
        guard case .busy(let process, let running) = state, running.task === task else { return .none }
        return replace(process, .timeout, running: task)
    }

    /// `task`, running, was cancelled or its client left: its process is stopped and replaced.
    mutating func interrupt(_ task: Task) -> Action {
        guard case .busy(let process, let running) = state, running.task === task else { return .none }
        return replace(process, .interrupt, running: task)
    }

    /// The drain deadline: the busy process is stopped and replaced, its task left unanswered (in the action).
    mutating func drainDeadline() -> Action {
        guard case .busy(let process, let running) = state else { return .none }
        return replace(process, .drainDeadline, running: running.task)
    }

    /// The busy process's memory was read: over the limit, it is killed and its task fails; otherwise it is read
    /// again later.
    mutating func memoryReading(exceedsLimit: Bool) -> Action {
        guard case .busy(let process, let running) = state else { return .none }
        guard exceedsLimit else { return .scheduleMemoryCheck }
        return replace(process, .memoryLimit, running: running.task)
    }

    // MARK: Helpers

    private mutating func becomeIdle(_ process: Process) -> Action {
        if retiresAfterTask {
            return stop(leavingPool: true)
        }
        if renewsAfterTask {
            renewsAfterTask = false
            let replacement: Replacement = renewsForMemoryLimit ? .renewOverMemoryLimit : .renew
            renewsForMemoryLimit = false
            return replace(process, replacement)
        }
        if let remaining = tasksUntilRecycle, remaining <= 0 {
            return replace(process, .recycle)
        }
        state = .idle(process)
        return .reportIdle
    }

    private mutating func replace(
        _ process: Process,
        _ replacement: Replacement,
        runningIsAnswered: Bool = false,
        running: Task? = nil
    ) -> Action {
        let sentAhead = takePipeline()
        state = .waitingForPredecessor(process)
        return .replaceProcess(
            process,
            replacement,
            sentAhead: sentAhead,
            runningIsAnswered: runningIsAnswered,
            running: running
        )
    }

    private mutating func takePipeline() -> CircularBuffer<SentTask> {
        guard !pipeline.isEmpty else { return CircularBuffer(initialCapacity: 0) }
        let taken = pipeline
        pipeline = CircularBuffer()
        pipelineBytes = 0
        return taken
    }

    // MARK: Settling tasks sent ahead

    /// Splits the tasks sent ahead to a process being let go, in order: those it provably never started (it gave
    /// them up from its task number `firstWithdrawn` on), and the others, which it may have read — all of them
    /// when it gave none up (nil: it does not claim its tasks, or had not claimed its running one).
    static func settle(
        _ sentAhead: CircularBuffer<SentTask>,
        firstWithdrawn: UInt32?
    ) -> (notStarted: [Task], mayBeRead: [Task]) {
        guard let firstWithdrawn else { return ([], sentAhead.map(\.task)) }
        // The tasks given up are the last ones: the process claims its tasks in order.
        var firstNotStarted = sentAhead.endIndex
        while firstNotStarted > sentAhead.startIndex {
            let before = sentAhead.index(before: firstNotStarted)
            guard TaskClaims.index(sentAhead[before].index, isAtOrAfter: firstWithdrawn) else { break }
            firstNotStarted = before
        }
        return (
            sentAhead[firstNotStarted...].map(\.task),
            sentAhead[..<firstNotStarted].map(\.task)
        )
    }

    /// Splits the tasks sent ahead to a process now dead: those that go back to the queue, in order, and those
    /// that fail because it may have started them. A task it gave up (`firstWithdrawn`) was never started; for a
    /// handler program whose replies were all read (`repliesAreAllRead`), neither was any after its running task,
    /// since a handler starts a task only once it has answered the one before. A task it claimed may have started.
    static func settleAfterDeath(
        _ sentAhead: CircularBuffer<SentTask>,
        firstWithdrawn: UInt32?,
        repliesAreAllRead: Bool
    ) -> (requeue: [Task], fail: [Task]) {
        let split = settle(sentAhead, firstWithdrawn: firstWithdrawn)
        if firstWithdrawn != nil || !repliesAreAllRead {
            return (split.notStarted, split.mayBeRead)
        }
        return (split.mayBeRead + split.notStarted, [])
    }
}
