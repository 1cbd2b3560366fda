import AiotaskProtocol
import NIOCore

/// Where a task is on its way from arrival to answer, as the scheduler and the pool slots see it.
enum TaskState {
    case queued
    /// Sent to a busy process behind its current task (prefetch); not started yet.
    case prefetched
    case running(pid: Int32)
    case finished
}

/// What ``Scheduler`` needs of a task: its size, fixed at arrival, and where it is.
///
/// A task is a reference: the same task moves between the queue, a slot's pipeline and a connection's held tasks,
/// and its ``state`` tells each of them whether it is still wanted (a cancelled task is left where it is, and
/// dropped when it comes up).
protocol SchedulableTask: AnyObject {
    /// Task bytes, counted against the queue's byte limit while the task waits. Fixed at arrival: the payload
    /// itself is released once a process has it, so the count never depends on who released it first.
    var size: Int { get }
    var state: TaskState { get set }
    /// The payload limit in force when the task was queued, while it is in flight (see
    /// ``Scheduler/maximumPayloadLimitInFlight``).
    var payloadLimit: Int? { get set }
}

/// What ``Scheduler`` reads of the pool while it dispatches: facts about slots, by index, and about connections.
///
/// Passed as an argument to ``Scheduler/nextDispatch(_:)``, so that the scheduler never calls a slot or a
/// connection: the supervisor answers from its `PoolSlot`s, a unit test from plain values.
protocol SchedulerPool {
    associatedtype Task: SchedulableTask
    /// Whether the slot can take a task at once: it has a process, idle, whose link is sound.
    func isIdle(_ slot: Int) -> Bool
    /// Whether a task of `size` bytes may be sent ahead to the slot's busy process.
    mutating func canPrefetch(_ slot: Int, size: Int) -> Bool
    /// How many tasks wait sent ahead to the slot.
    func prefetchedCount(_ slot: Int) -> Int
    /// Whether the slot holds tasks sent ahead that can be withdrawn (its process claims its tasks).
    func canWithdraw(_ slot: Int) -> Bool
    /// Whether the task's connection holds its tasks back, because its client is not reading its answers.
    func isHoldingTasks(_ task: Task) -> Bool
}

/// The scheduling rules of the server, as a value: the queue, which slot gets which task, cancel, drain and the
/// pool's roll-over on reload. Events come in as method calls; what must be done comes back as actions, which
/// the ``Supervisor`` carries out on the slots and connections.
///
/// It does no I/O and holds no channel, process or timer, so every rule can be unit-tested with plain values
/// (`SchedulerTests`). Slots are known by their index (`AIOTASK_WORKER_INDEX`), never two at once with the same.
struct Scheduler<Task: SchedulableTask> {
    /// The limits a task is accepted under; a reload replaces them.
    struct Limits {
        var queueCapacity: Int
        var maximumPayloadLength: Int
        var maximumQueuedBytes: Int
        /// Whether tasks may be sent ahead to busy processes at all (`prefetch` is not 0).
        var allowsPrefetch: Bool
    }

    /// Tasks counted since the start, for `STATUS` and `systemctl status`.
    struct Counters {
        var submitted = 0
        var succeeded = 0
        var failed = 0
        var restarts = 0
        /// Tasks that ran longer than the slow-task threshold (``ServerConfiguration/slowTaskThreshold``).
        var slowTasks = 0
    }

    /// A slot's standing in the pool.
    enum Membership: Equatable {
        case inPool
        /// Leaves the pool after its current task (the pool shrank).
        case retiring
        /// Stopped for good, at shutdown.
        case stopped
    }

    private(set) var limits: Limits
    private(set) var counters = Counters()
    /// Waiting tasks in arrival order; finished ones stay until they reach the front (see ``queuedCount``).
    private var queue = CircularBuffer<Task>()
    /// Tasks in `queue` (or sent ahead and not started) that still wait.
    private(set) var queuedCount = 0
    /// Task bytes held by the tasks that wait.
    private(set) var queuedBytes = 0
    /// Task bytes of frames still arriving, reserved when their headers arrived (``reserve(_:)``).
    private(set) var reservedBytes = 0
    /// Tasks started on a process and not answered yet. Counted here rather than read from the slots: a slot lets go
    /// of its process (stopped at the drain deadline, crashed, timed out) a moment before its task is answered, and
    /// a drain that ended in that moment would close the connection before the answer left.
    private(set) var runningCount = 0
    /// Slots that became idle, most recent last; an entry is checked with ``SchedulerPool/isIdle(_:)`` when used.
    private var idleSlots: [Int] = []
    /// The pool's slots by index; nil where no slot has that index.
    private(set) var members: [Membership?] = []
    /// Tasks in flight by the payload limit they were accepted under.
    private var tasksByPayloadLimit = PayloadLimitCounts()
    private(set) var isAccepting = true
    /// Set at the drain deadline: from then on a task that was not started is answered `shuttingDown` instead of
    /// going back to the queue, and nothing is dispatched.
    private(set) var isPastDrainDeadline = false
    private var drainReported = false

    init(limits: Limits) {
        self.limits = limits
    }

    // MARK: Pool

    /// The pool starts with `workers` slots (at least one): the indexes to start.
    mutating func start(workers: Int) -> Range<Int> {
        precondition(members.isEmpty, "Scheduler.start called on a pool that has slots")
        let indexes = 0..<max(1, workers)
        members = indexes.map { _ in .inPool }
        return indexes
    }

    /// A slot's process is idle and can take a task.
    mutating func slotBecameIdle(_ slot: Int) {
        precondition(members.indices.contains(slot) && members[slot] != nil, "slot \(slot) is not in the pool")
        idleSlots.append(slot)
    }

    /// A slot left the pool (it retired after its task, or at once when idle).
    mutating func slotRetired(_ slot: Int) {
        precondition(members.indices.contains(slot) && members[slot] != nil, "slot \(slot) is not in the pool")
        members[slot] = nil
        idleSlots.removeAll { $0 == slot }
    }

    /// Every slot is stopped for good (shutdown).
    mutating func stopAllSlots() {
        for index in members.indices where members[index] != nil { members[index] = .stopped }
    }

    /// Which slots a reload keeps, retires, renews and adds.
    struct RollOver: Equatable {
        /// Retiring slots whose index is wanted again: they stay, rather than a new slot taking the index while
        /// their process still runs.
        var stay: [Int] = []
        /// Slots beyond the new size: they leave, at once if idle, after their task otherwise.
        var retire: [Int] = []
        /// Slots that stay: their processes are replaced by ones running the new configuration.
        var renew: [Int] = []
        /// Indexes below the new size that no slot holds: new slots.
        var start: [Int] = []
    }

    /// Applies a new configuration: limits apply to the next task, and the pool rolls over to `workers` slots
    /// (at least one) whose indexes are `0..<workers`. A shrinking pool lets the slots of the highest indexes go,
    /// a growing one fills the indexes missing below `workers`.
    ///
    /// Carry out the returned roll-over in its order: stay, retire, renew, start.
    mutating func reload(limits: Limits, workers: Int) -> RollOver {
        self.limits = limits
        let target = max(1, workers)
        var rollOver = RollOver()
        for index in members.indices {
            switch members[index] {
            case .retiring? where index < target:
                members[index] = .inPool
                rollOver.stay.append(index)
                rollOver.renew.append(index)
            case .inPool? where index >= target:
                members[index] = .retiring
                rollOver.retire.append(index)
            case .inPool?:
                rollOver.renew.append(index)
            case nil where index < target:
                rollOver.start.append(index)
            case .retiring?, .stopped?, nil:
                break
            }
        }
        if members.count < target {
            rollOver.start.append(contentsOf: members.count..<target)
            members.append(contentsOf: repeatElement(nil, count: target - members.count))
        }
        for index in rollOver.start { members[index] = .inPool }
        return rollOver
    }

    mutating func noteRestart() {
        counters.restarts += 1
    }

    mutating func noteSlowTask() {
        counters.slowTasks += 1
    }

    // MARK: Arrival

    /// What becomes of a task that arrived.
    enum Admission: Equatable {
        /// It waits in the queue: dispatch.
        case queued
        /// It is refused: answer it with this failure (the task is already finished).
        case refused(FailureReason, String)
    }

    /// A task arrived: it is queued, or refused when the server is stopping or a limit is reached.
    mutating func taskArrived(_ task: Task) -> Admission {
        counters.submitted += 1
        guard isAccepting else {
            return refuse(task, .shuttingDown, "the server is shutting down")
        }
        guard queuedCount < limits.queueCapacity else {
            let message = "queue full: \(queuedCount) tasks waiting (capacity \(limits.queueCapacity))"
            return refuse(task, .rejected, message)
        }
        let size = task.size
        // The connection's decoder may still apply a higher limit, from before a reload lowered it.
        guard size <= limits.maximumPayloadLength else {
            let limit = limits.maximumPayloadLength
            return refuse(task, .payloadTooLarge, "task of \(size) bytes exceeds the limit of \(limit) bytes")
        }
        guard queuedBytes + reservedBytes + size <= limits.maximumQueuedBytes else {
            return refuse(task, .rejected, queueFullMessage(adding: size))
        }
        task.payloadLimit = limits.maximumPayloadLength
        tasksByPayloadLimit.add(limits.maximumPayloadLength)
        task.state = .queued
        queue.append(task)
        queuedCount += 1
        queuedBytes += size
        return .queued
    }

    /// A task refused before it reached the queue (its connection's own limits): counted, and finished so that
    /// its answer does not count it out of a queue it was never in.
    mutating func taskRefusedOnArrival(_ task: Task) {
        counters.submitted += 1
        task.state = .finished
    }

    private mutating func refuse(_ task: Task, _ reason: FailureReason, _ message: String) -> Admission {
        task.state = .finished
        return .refused(reason, message)
    }

    /// Reserves room in the queue's byte limit for a task frame of `length` bytes whose header has arrived and
    /// whose rest is on its way; false, reserving nothing, when there is no room. Frames being received and tasks
    /// waiting share `max-queued-bytes`, so slow uploads on many connections cannot hold more memory than the
    /// queue may.
    mutating func reserve(_ length: Int) -> Bool {
        guard queuedBytes + reservedBytes + length <= limits.maximumQueuedBytes else { return false }
        reservedBytes += length
        return true
    }

    /// Gives back a reservation of ``reserve(_:)``: its frame is whole, or its connection gone.
    mutating func unreserve(_ length: Int) {
        precondition(length <= reservedBytes, "unreserving \(length) bytes of \(reservedBytes) reserved")
        reservedBytes -= length
    }

    /// Why a task of `size` bytes does not fit the queue's byte limit.
    func queueFullMessage(adding size: Int) -> String {
        let limit = limits.maximumQueuedBytes
        return reservedBytes == 0
            ? "queue full: \(queuedBytes) bytes waiting (limit \(limit) bytes)"
            : "queue full: \(queuedBytes) bytes waiting and \(reservedBytes) arriving (limit \(limit) bytes)"
    }

    /// The largest payload limit a task still in flight was accepted under, or 0 (see
    /// ``Supervisor/maximumReplyLength``).
    var maximumPayloadLimitInFlight: Int {
        tasksByPayloadLimit.maximum
    }

    // MARK: Dispatch

    /// One step of dispatching.
    enum DispatchAction {
        /// Run the task on the slot's idle process.
        case run(Task, slot: Int)
        /// Send the task ahead to the slot's busy process, to run after the tasks it has.
        case prefetch(Task, slot: Int)
        /// Hand the task to its connection, which holds its tasks back; it comes back with ``putBack(_:)``.
        case hold(Task)
        /// A slot is idle and the queue empty: withdraw the tasks sent ahead to this slot and not started (they
        /// come back with ``putBack(_:)``). Stop dispatching if none came back.
        case withdraw(slot: Int)
    }

    /// The next step of dispatching, or nil when there is none: waiting tasks go to idle slots, then some are sent
    /// ahead to busy ones (``ServerConfiguration/prefetch``), so that a process finds its next task waiting
    /// instead of waiting a round trip for it. When the queue is empty and a slot idle, tasks sent ahead to a busy
    /// slot and not started are withdrawn to run on it (``TaskClaims``).
    ///
    /// Call it until it returns nil, carrying out each action before the next call: the slots' facts change.
    mutating func nextDispatch<Pool: SchedulerPool>(_ pool: inout Pool) -> DispatchAction? where Pool.Task == Task {
        // Past the drain deadline nothing starts: a process started then (replacing a stopped one) stays idle.
        guard !isPastDrainDeadline else { return nil }
        // Finished tasks are dropped before a slot is taken, so no idle slot is lost on them.
        while let first = queue.first, case .finished = first.state { queue.removeFirst() }
        guard let task = queue.first else {
            guard hasIdleSlot(pool), let busiest = slotToWithdrawFrom(pool) else { return nil }
            return .withdraw(slot: busiest)
        }
        // A client that is not reading its answers has its tasks held back (they stay counted as waiting), so
        // that its answers pile up no further; they come back once it reads.
        if pool.isHoldingTasks(task) {
            queue.removeFirst()
            return .hold(task)
        }
        if let slot = nextIdleSlot(pool) {
            queue.removeFirst()
            leaveQueue(task)
            runningCount += 1
            return .run(task, slot: slot)
        }
        if let slot = slotToPrefetch(&pool, size: task.size) {
            queue.removeFirst()
            task.state = .prefetched
            return .prefetch(task, slot: slot)
        }
        return nil
    }

    private mutating func nextIdleSlot(_ pool: some SchedulerPool) -> Int? {
        while let slot = idleSlots.popLast() {
            if pool.isIdle(slot) { return slot }
        }
        return nil
    }

    /// Whether every process is busy with tasks waiting (the pool is the bottleneck): call it after dispatch.
    func isSaturated(_ pool: some SchedulerPool) -> Bool {
        queuedCount > 0 && !hasIdleSlot(pool)
    }

    /// The task at the head of the queue that still waits, if any.
    var firstWaiting: Task? {
        queue.first {
            if case .finished = $0.state { return false }
            return true
        }
    }

    private func hasIdleSlot(_ pool: some SchedulerPool) -> Bool {
        idleSlots.contains { pool.isIdle($0) }
    }

    /// The busy slot with the fewest tasks sent ahead that may take one more of `size` bytes, if any; the lowest
    /// index among equals.
    private func slotToPrefetch<Pool: SchedulerPool>(_ pool: inout Pool, size: Int) -> Int? {
        guard limits.allowsPrefetch else { return nil }
        var best: (slot: Int, count: Int)?
        for slot in members.indices where members[slot] != nil && pool.canPrefetch(slot, size: size) {
            let count = pool.prefetchedCount(slot)
            if best.map({ count < $0.count }) ?? true { best = (slot, count) }
        }
        return best?.slot
    }

    /// The slot holding the most tasks sent ahead that can be withdrawn, if any; the lowest index among equals.
    private func slotToWithdrawFrom(_ pool: some SchedulerPool) -> Int? {
        var busiest: (slot: Int, count: Int)?
        for slot in members.indices where members[slot] != nil && pool.canWithdraw(slot) {
            let count = pool.prefetchedCount(slot)
            if busiest.map({ count > $0.count }) ?? true { busiest = (slot, count) }
        }
        return busiest?.slot
    }

    /// A task sent ahead starts running: it leaves the waiting counts.
    mutating func prefetchedTaskStarts(_ task: Task) {
        guard case .prefetched = task.state else {
            preconditionFailure("a task starts from its slot's pipeline but was not sent ahead: \(task.state)")
        }
        leaveQueue(task)
        runningCount += 1
    }

    /// What becomes of tasks given back.
    enum PutBack: Equatable {
        /// They wait at the head of the queue again: dispatch.
        case queued
        /// Past the drain deadline: answer those not finished `shuttingDown`, as never started.
        case answerNotStarted
    }

    /// Tasks that did not start come back — withdrawn from a slot, left by a process that is gone, or held back
    /// by a connection whose client reads again — and go to the head of the queue, in order: they arrived before
    /// the tasks behind them. They never left the waiting counts.
    mutating func putBack(_ tasks: some BidirectionalCollection<Task>) -> PutBack {
        if isPastDrainDeadline { return .answerNotStarted }
        for task in tasks.reversed() {
            switch task.state {
            case .finished: continue
            case .queued, .prefetched: break
            case .running:
                preconditionFailure("a running task cannot go back to the queue")
            }
            task.state = .queued
            queue.prepend(task)
        }
        return .queued
    }

    // MARK: Answer, cancel

    /// What stopping a task needs of its slot.
    enum StopAction: Equatable {
        case none
        /// It was sent ahead to a slot: withdraw it there, so that the process does not start it.
        case withdrawFromItsSlot
        /// It runs: stop its process.
        case interruptItsSlot
    }

    /// A task is stopped wherever it is (its client cancelled it or is gone): it leaves the waiting counts, and
    /// is finished; the action says what its slot must do. A cancelled task is then answered (``taskFinished(_:succeeded:)``),
    /// an abandoned one is not (``taskAbandoned(_:)``).
    mutating func stop(_ task: Task) -> StopAction {
        let action: StopAction
        switch task.state {
        case .queued:
            leaveQueue(task)
            action = .none
        case .prefetched:
            leaveQueue(task)
            action = .withdrawFromItsSlot
        case .running:
            runningCount -= 1
            action = .interruptItsSlot
        case .finished:
            return .none
        }
        task.state = .finished
        return action
    }

    /// A task is answered with an outcome: success or failure.
    mutating func taskFinished(_ task: Task, succeeded: Bool) {
        switch task.state {
        case .queued, .prefetched: leaveQueue(task)
        case .running: runningCount -= 1
        case .finished: break
        }
        task.state = .finished
        releasePayloadLimit(of: task)
        if succeeded { counters.succeeded += 1 } else { counters.failed += 1 }
    }

    /// A task stopped (``stop(_:)``) whose client is gone: nobody is answered; it counts as failed.
    mutating func taskAbandoned(_ task: Task) {
        guard case .finished = task.state else {
            preconditionFailure("a task is abandoned before it was stopped: \(task.state)")
        }
        releasePayloadLimit(of: task)
        counters.failed += 1
    }

    /// Takes a waiting task out of the queue's counts (the task itself may stay until it reaches the front).
    private mutating func leaveQueue(_ task: Task) {
        precondition(queuedCount > 0, "a task leaves the queue's counts, which are empty")
        queuedCount -= 1
        queuedBytes -= task.size
    }

    private mutating func releasePayloadLimit(of task: Task) {
        guard let limit = task.payloadLimit else { return }
        task.payloadLimit = nil
        tasksByPayloadLimit.remove(limit)
    }

    // MARK: Drain

    /// Tasks queued or running: the running ones as counted here (see ``runningCount``), or as many as slots are busy
    /// if that is more.
    func tasksInFlight(busySlots: Int) -> Int {
        queuedCount + max(runningCount, busySlots)
    }

    /// The server stops taking tasks; those in flight may finish.
    mutating func drain() {
        isAccepting = false
    }

    /// Whether the drain is done, said once: the server drains and no task is in flight.
    mutating func isDrained(busySlots: Int) -> Bool {
        guard !isAccepting, !drainReported, tasksInFlight(busySlots: busySlots) == 0 else { return false }
        drainReported = true
        return true
    }

    /// The drain deadline came: nothing starts from now on, and the tasks waiting in the queue, none of which
    /// started, are returned, to be answered `shuttingDown`. Tasks held back by connections and sent ahead to
    /// slots are the caller's to answer (their holders know them).
    mutating func drainDeadline() -> [Task] {
        precondition(!isAccepting, "the drain deadline came before the drain began")
        isPastDrainDeadline = true
        let waiting: [Task] = queue.filter {
            if case .finished = $0.state { return false }
            return true
        }
        queue.removeAll()
        return waiting
    }
}

/// How many tasks in flight were accepted under each payload limit.
///
/// A list, not a dictionary: there is one limit, or a few for a while after reloads changed it, so a scan costs
/// less than hashing the limit twice for every task.
private struct PayloadLimitCounts {
    private var counts: [(limit: Int, count: Int)] = []

    /// The largest limit a task in flight was accepted under, or 0.
    var maximum: Int { counts.lazy.map(\.limit).max() ?? 0 }

    mutating func add(_ limit: Int) {
        if let index = counts.firstIndex(where: { $0.limit == limit }) {
            counts[index].count += 1
        } else {
            counts.append((limit, 1))
        }
    }

    mutating func remove(_ limit: Int) {
        guard let index = counts.firstIndex(where: { $0.limit == limit }) else { return }
        counts[index].count -= 1
        if counts[index].count == 0 { counts.remove(at: index) }
    }
}
