import AiotaskProtocol
import Foundation
import Logging
import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The heart of the worker: the queue, the pool's slots, and every task's way from arrival to answer.
///
/// Confined to the server's single event loop: connections, process links and timers all run there, so the
/// state below needs no lock. The work itself happens in the pool's processes.
final class Supervisor {
    let loop: any EventLoop
    private(set) var configuration: WorkerConfiguration
    let logger: Logger
    let retiredProcesses: RetiredProcesses

    private var slots: [PoolSlot] = []
    private var idleSlots: [PoolSlot] = []
    /// Waiting tasks in arrival order; cancelled ones stay until they reach the front (see ``queuedCount``).
    private var queue = CircularBuffer<TaskRecord>()
    /// Tasks in `queue` that still wait (not finished while queued).
    private(set) var queuedCount = 0
    /// Task bytes held by the tasks that wait.
    private var queuedBytes = 0
    /// Task bytes of frames still arriving, reserved when their headers arrived (``reserve(_:)``).
    private var reservedBytes = 0

    private var submitted = 0
    private var succeeded = 0
    private var failed = 0
    private var restarts = 0
    private var sessions: [ObjectIdentifier: ClientConnectionHandler] = [:]
    private let startedAt = NIODeadline.now()
    private var throughput = ThroughputMeter()

    private(set) var isAccepting = true
    /// Set at the drain deadline: from then on a task that was not started is answered `shuttingDown` instead of
    /// going back to the queue.
    private var isPastDrainDeadline = false
    /// Tasks in flight by the payload limit they were accepted under. A reload may lower the limit: a task accepted
    /// before it must still get its result, so a new process's link takes replies up to ``maximumReplyLength``.
    private var tasksByPayloadLimit: [Int: Int] = [:]
    private var drainPromise: EventLoopPromise<Void>?
    /// Completed when the last connection is gone, once shutdown has closed them all.
    private var sessionsClosed: EventLoopPromise<Void>?
    private var readyPromise: EventLoopPromise<Void>?
    private var slotsStarted = Set<Int>()

    init(loop: any EventLoop, configuration: WorkerConfiguration, logger: Logger) {
        self.loop = loop
        self.configuration = configuration
        self.logger = logger
        self.retiredProcesses = RetiredProcesses(logger: logger)
    }

    // MARK: Pool

    /// Starts the pool; the future succeeds once every slot has brought up a process (or failed its first try).
    func start() -> EventLoopFuture<Void> {
        let promise = loop.makePromise(of: Void.self)
        readyPromise = promise
        slots = (0..<max(1, configuration.workers)).map { PoolSlot(index: $0, supervisor: self) }
        for slot in slots { slot.start() }
        return promise.futureResult
    }

    func slotBecameIdle(_ slot: PoolSlot) {
        markStarted(slot)
        idleSlots.append(slot)
        dispatch()
        checkDrained()
    }

    /// Adds a connection; false when the connection limit is reached.
    func register(_ session: ClientConnectionHandler) -> Bool {
        guard sessions.count < configuration.maximumConnections else { return false }
        sessions[ObjectIdentifier(session)] = session
        return true
    }

    func unregister(_ session: ClientConnectionHandler) {
        sessions[ObjectIdentifier(session)] = nil
        if sessions.isEmpty, let sessionsClosed {
            self.sessionsClosed = nil
            sessionsClosed.succeed()
        }
    }

    func slotRetired(_ slot: PoolSlot) {
        slots.removeAll { $0 === slot }
        checkDrained()
    }

    /// Applies a new configuration without losing a task: limits apply to the next task, the pool grows or
    /// shrinks, and every process is replaced by one running the new handler — idle ones at once, busy ones
    /// once their task is answered. Listening addresses are not changed by a reload.
    ///
    /// A slot's index (`AIOTASK_WORKER_INDEX`) is always in `0..<workers`, and no two slots hold the same one, so a
    /// handler may use it to pick a GPU, a port or a shard: a shrinking pool lets the slots of the highest indexes
    /// go (each after its task), and a growing one fills the indexes missing below `workers`. A slot still leaving
    /// after its task whose index is wanted again simply stays, rather than a new slot taking its index while its
    /// process still runs.
    func reload(_ newConfiguration: WorkerConfiguration) {
        configuration = newConfiguration
        let target = max(1, newConfiguration.workers)
        for slot in slots where slot.index < target { slot.stayInPool() }
        for slot in slots where slot.index >= target && !slot.isRetiring { slot.retire() }
        for slot in slots where !slot.isRetiring { slot.renew() }
        let taken = Set(slots.map(\.index))
        let added = (0..<target).filter { !taken.contains($0) }.map { PoolSlot(index: $0, supervisor: self) }
        slots.append(contentsOf: added)
        for slot in added { slot.start() }
        dispatch()
    }

    /// The longest reply a new process's link accepts: the payload limit, or a larger one some task still in flight
    /// was accepted under.
    var maximumReplyLength: Int {
        max(configuration.maximumPayloadLength, tasksByPayloadLimit.keys.max() ?? 0)
    }

    /// Whether the pool can run tasks: at least one slot keeps a process alive. A pool whose processes all keep
    /// dying is not, and the watchdog stops reporting health so that systemd restarts the service.
    var isHealthy: Bool {
        slots.contains(where: \.isKeepingProcessAlive)
    }

    /// A one-line summary for `systemctl status`.
    var statusLine: String {
        let info = info()
        let idle = info.workers.alive - info.workers.busy
        return "Workers: \(info.workers.busy) busy, \(idle) idle of \(info.workers.configured); "
            + "queued: \(info.queue.length); done: \(info.tasks.succeeded), failed: \(info.tasks.failed); "
            + "\(String(format: "%.1f", info.tasksPerSecond)) tasks/s; connections: \(info.connections)"
    }

    /// Tasks queued or running.
    var tasksInFlight: Int { inFlightCount }

    /// Over the current pool processes: tasks sent through shared memory, and arena regions in use.
    var sharedPayloadUsage: (tasks: Int, regionsInUse: Int) {
        slots.compactMap(\.process).reduce(into: (0, 0)) { usage, process in
            usage.tasks += process.sharedTaskCount
            usage.regionsInUse += process.sharedRegionsInUse
        }
    }

    func noteRestart() {
        restarts += 1
    }

    func slotFailedToStart(_ slot: PoolSlot) {
        markStarted(slot)
    }

    private func markStarted(_ slot: PoolSlot) {
        guard readyPromise != nil else { return }
        slotsStarted.insert(slot.index)
        if slotsStarted.count == slots.count {
            readyPromise?.succeed()
            readyPromise = nil
        }
    }

    /// Hands waiting tasks to idle processes, then sends some ahead to busy ones (``WorkerConfiguration/prefetch``)
    /// so that a process finds its next task waiting instead of waiting a round trip for it. When the queue is
    /// empty and a process idle, tasks sent ahead to a busy process and not started yet are withdrawn to run on
    /// it (``TaskClaims``).
    func dispatch() {
        // Past the drain deadline nothing starts: a process started then (replacing a stopped one) stays idle.
        guard !isPastDrainDeadline else { return }
        var now: NIODeadline?
        while true {
            // Cancelled tasks are dropped before a slot is taken, so no idle slot is lost on them.
            dropFinishedHead()
            guard let record = queue.first else {
                if hasIdleSlot, withdrawFromBusiestSlot() { continue }
                return
            }
            // A client that is not reading its answers has its tasks held back (they stay counted as waiting), so
            // that its answers pile up no further; they run once it reads (``release(_:)``).
            if record.session.isHoldingTasks {
                queue.removeFirst()
                record.session.hold(record)
                continue
            }
            if let slot = nextIdleSlot() {
                queue.removeFirst()
                leaveQueue(record)
                slot.run(record)
            } else if let slot = slotToPrefetch(size: record.payload.readableBytes, at: now ?? .now()) {
                now = now ?? .now()
                queue.removeFirst()
                record.state = .prefetched
                slot.prefetch(record)
            } else {
                return
            }
        }
    }

    /// The busy slot with the fewest tasks sent ahead that may take one more of `size` bytes, if any.
    private func slotToPrefetch(size: Int, at now: NIODeadline) -> PoolSlot? {
        guard configuration.prefetch != 0 else { return nil }
        var best: PoolSlot?
        for slot in slots where slot.canPrefetch(size: size, at: now) {
            if best.map({ slot.prefetchedCount < $0.prefetchedCount }) ?? true { best = slot }
        }
        return best
    }

    private var hasIdleSlot: Bool {
        idleSlots.contains { $0.isIdle }
    }

    /// Withdraws the tasks not started from the slot holding the most tasks sent ahead; whether any came back.
    private func withdrawFromBusiestSlot() -> Bool {
        var busiest: PoolSlot?
        for slot in slots where slot.canWithdraw {
            if busiest.map({ slot.prefetchedCount > $0.prefetchedCount }) ?? true { busiest = slot }
        }
        return busiest?.withdrawSentAhead(forIdleProcess: true) ?? false
    }

    /// A task sent ahead starts running: it leaves the waiting counts.
    func prefetchedTaskStarts(_ record: TaskRecord) {
        leaveQueue(record)
    }

    /// Puts tasks that were sent ahead to a process that is gone back at the front of the queue, in order, to run
    /// elsewhere. They never left the waiting counts. Past the drain deadline they are answered `shuttingDown`.
    func requeue(_ records: [TaskRecord]) {
        if isPastDrainDeadline {
            for record in records where !record.isFinished {
                finish(record, .failure(.shuttingDown, Self.notStartedAtShutdown))
            }
            return
        }
        for record in records.reversed() where !record.isFinished {
            record.state = .queued
            queue.prepend(record)
        }
    }

    /// Puts the tasks a connection held back while its client did not read back at the head of the queue, in
    /// order: they arrived before the tasks behind them. They never left the waiting counts.
    func release(_ records: [TaskRecord]) {
        guard !records.isEmpty else { return }
        requeue(records)
        dispatch()
    }

    /// Settles the tasks sent ahead to `process`, now dead, that it may have started (see ``HeldTasks``): they fail
    /// as `workerCrashed`, or past the drain deadline as `interrupted`.
    func failPossiblyStarted(_ records: [TaskRecord], on process: WorkerProcess, _ status: ExitStatus) {
        for record in records where !record.isFinished {
            if isPastDrainDeadline {
                finish(record, .failure(.interrupted, "the server shut down while the task may have been running"))
            } else {
                let message = "worker process \(process.pid) \(status) while it may have been running the task"
                finish(record, .failure(.workerCrashed, message), workerPID: process.pid)
            }
        }
    }

    /// Settles the tasks sent ahead to a stopped process, now dead, that it did not answer (see ``HeldTasks``).
    func settleHeld(
        _ process: WorkerProcess,
        _ status: ExitStatus,
        mayHaveStarted: [TaskRecord],
        notStarted: [TaskRecord]
    ) {
        failPossiblyStarted(mayHaveStarted, on: process, status)
        requeue(notStarted)
        dispatch()
    }

    private static let notStartedAtShutdown = "the server shut down before the task started"

    private func nextIdleSlot() -> PoolSlot? {
        while let slot = idleSlots.popLast() {
            if slot.isIdle { return slot }
        }
        return nil
    }

    private func dropFinishedHead() {
        while let first = queue.first, first.isFinished { queue.removeFirst() }
    }

    // MARK: Tasks

    /// Takes a new task, or answers it at once when the queue is full or the server is stopping.
    func accept(_ record: TaskRecord) {
        submitted += 1
        guard isAccepting else {
            return refuse(record, .shuttingDown, "the server is shutting down")
        }
        guard queuedCount < configuration.queueCapacity else {
            let message = "queue full: \(queuedCount) tasks waiting (capacity \(configuration.queueCapacity))"
            return refuse(record, .rejected, message)
        }
        let size = record.payload.readableBytes
        // The connection's decoder may still apply a higher limit, from before a reload lowered it.
        guard size <= configuration.maximumPayloadLength else {
            let limit = configuration.maximumPayloadLength
            return refuse(record, .payloadTooLarge, "task of \(size) bytes exceeds the limit of \(limit) bytes")
        }
        guard queuedBytes + reservedBytes + size <= configuration.maximumQueuedBytes else {
            return refuse(record, .rejected, queueFullMessage(adding: size))
        }
        record.payloadLimit = configuration.maximumPayloadLength
        tasksByPayloadLimit[configuration.maximumPayloadLength, default: 0] += 1
        queue.append(record)
        queuedCount += 1
        queuedBytes += size
        dispatch()
    }

    /// Reserves room in the queue's byte limit for a task frame of `length` bytes whose header has arrived and
    /// whose rest is on its way; false, reserving nothing, when there is no room. Frames being received and tasks
    /// waiting share `max-queued-bytes`, so slow uploads on many connections cannot hold more memory than the
    /// queue may.
    func reserve(_ length: Int) -> Bool {
        guard queuedBytes + reservedBytes + length <= configuration.maximumQueuedBytes else { return false }
        reservedBytes += length
        return true
    }

    /// Gives back a reservation of ``reserve(_:)``: its frame is whole, or its connection gone.
    func unreserve(_ length: Int) {
        reservedBytes -= length
    }

    /// Why a task of `size` bytes does not fit the queue's byte limit.
    func queueFullMessage(adding size: Int) -> String {
        let limit = configuration.maximumQueuedBytes
        return reservedBytes == 0
            ? "queue full: \(queuedBytes) bytes waiting (limit \(limit) bytes)"
            : "queue full: \(queuedBytes) bytes waiting and \(reservedBytes) arriving (limit \(limit) bytes)"
    }

    /// Counts a task refused before it was queued, and answers it with `reason`.
    func accept(rejected record: TaskRecord, _ reason: FailureReason, _ message: String) {
        submitted += 1
        refuse(record, reason, message)
    }

    /// Answers a task that never entered the queue. It is marked finished first, so that ``finish(_:_:workerPID:)``
    /// does not count it out of a queue it was never in.
    private func refuse(_ record: TaskRecord, _ reason: FailureReason, _ message: String) {
        record.state = .finished
        finish(record, .failure(reason, message))
    }

    /// Cancels a task on its client's request; it is answered with `cancelled`.
    func cancel(_ record: TaskRecord) {
        stop(record)
        finish(record, .failure(.cancelled, "cancelled by the client"))
        dispatch()
    }

    /// Stops a task whose client is gone; nobody is answered.
    func abandon(_ record: TaskRecord) {
        stop(record)
        record.state = .finished
        releasePayloadLimit(of: record)
        failed += 1
        logger.debug("task abandoned: its client disconnected", metadata: ["task_id": "\(record.id)"])
        checkDrained()
        dispatch()
    }

    /// Takes a waiting task out of the queue's counts (the record itself may stay until it reaches the front).
    private func leaveQueue(_ record: TaskRecord) {
        queuedCount -= 1
        queuedBytes -= record.payload.readableBytes
    }

    /// Marks `record` finished wherever it is: out of the queue's counts; withdrawn, with the rest not started,
    /// if it was sent ahead to a process that claims its tasks; its process stopped if it runs.
    private func stop(_ record: TaskRecord) {
        switch record.state {
        case .queued:
            leaveQueue(record)
        case .prefetched:
            leaveQueue(record)
            record.state = .finished
            slots.first { $0.holds(record) }?.withdrawCancelled()
        case .running:
            for slot in slots where slot.isBusy { slot.interrupt(record) }
        case .finished:
            return
        }
        record.state = .finished
    }

    /// Records the outcome of `record` and passes it to its connection.
    func finish(_ record: TaskRecord, _ outcome: TaskOutcome, workerPID: Int32? = nil) {
        var outcome = outcome
        if case .success(let result) = outcome, result.readableBytes > record.session.resultLimit {
            let limit = record.session.resultLimit
            outcome = .failure(
                .payloadTooLarge,
                "result of \(result.readableBytes) bytes exceeds the client's limit of \(limit) bytes"
            )
        }
        switch record.state {
        case .queued, .prefetched: leaveQueue(record)
        case .running, .finished: break
        }
        record.state = .finished
        releasePayloadLimit(of: record)
        throughput.count(at: .now())
        switch outcome {
        case .success:
            succeeded += 1
            // The metadata of a success is built only when it is logged: this runs once per task.
            if logger.logLevel <= .debug {
                logger.debug("task done", metadata: metadata(of: record, workerPID: workerPID))
            }
        case .failure(let reason, let message):
            failed += 1
            var metadata = metadata(of: record, workerPID: workerPID)
            metadata["reason"] = "\(reason)"
            metadata["message_id"] = "\(LogMessageID.forFailure(reason))"
            // Cut as the FAILED frame and the handler's stderr lines are: a handler's error text can be any length.
            let logged = ClientConnectionHandler.truncated(message, toUTF8Count: StderrLogHandler.maximumLineLength)
            logger.warning("task failed: \(reason): \(logged)", metadata: metadata)
        }
        record.session.complete(record, outcome)
        checkDrained()
    }

    /// The task is no longer in flight: its payload limit no longer counts for ``maximumReplyLength``.
    private func releasePayloadLimit(of record: TaskRecord) {
        guard let limit = record.payloadLimit else { return }
        record.payloadLimit = nil
        let left = (tasksByPayloadLimit[limit] ?? 1) - 1
        tasksByPayloadLimit[limit] = left > 0 ? left : nil
    }

    private func metadata(of record: TaskRecord, workerPID: Int32?) -> Logger.Metadata {
        var metadata: Logger.Metadata = [
            "task_id": "\(record.id)",
            "client": "\(record.session.peerDescription)",
            "duration_usec": "\((NIODeadline.now() - record.acceptedAt).nanoseconds / 1000)",
        ]
        if let workerPID { metadata["worker_pid"] = "\(workerPID)" }
        return metadata
    }

    // MARK: Statistics

    func info() -> ServerInfo {
        let busy = slots.filter(\.isBusy).count
        return ServerInfo(
            version: AiotaskVersion.current,
            pid: Int(getpid()),
            uptimeSeconds: Double((NIODeadline.now() - startedAt).nanoseconds) / 1e9,
            handler: configuration.handler.displayName,
            workers: .init(
                configured: max(1, configuration.workers),
                alive: slots.filter { $0.process != nil }.count,
                busy: busy,
                restarts: restarts
            ),
            queue: .init(length: queuedCount, capacity: configuration.queueCapacity),
            tasks: .init(submitted: submitted, succeeded: succeeded, failed: failed, running: busy),
            connections: sessions.count,
            tasksPerSecond: throughput.rate(at: .now())
        )
    }

    // MARK: Shutdown

    /// Stops taking tasks (telling every extended client so with `GOODBYE`), lets those in flight finish within
    /// `drainTimeout`, fails the rest with `shuttingDown` (not started) or `interrupted` (running), then stops
    /// every process and closes the connections. The future succeeds once all of them are gone.
    ///
    /// - Parameter announce: logs the drain; false when the server never started listening, so that a failed
    ///   start does not read like a stop.
    func shutdown(drainTimeout: Duration, announce: Bool = true) -> EventLoopFuture<Void> {
        isAccepting = false
        if announce { logger.info("draining \(tasksInFlight) tasks in flight; new tasks are refused") }
        for session in sessions.values { session.sayGoodbye() }
        let drained = loop.makePromise(of: Void.self)
        drainPromise = drained
        let deadline = loop.assumeIsolated().scheduleTask(in: .init(drainTimeout)) { [weak self] in
            self?.failEverythingInFlight()
        }
        checkDrained()
        return drained.futureResult.assumeIsolated().flatMap { [self] in
            deadline.cancel()
            readyPromise?.succeed()
            readyPromise = nil
            for slot in slots { slot.stop() }
            let stopped = loop.makePromise(of: Void.self)
            let killer = loop.assumeIsolated().scheduleTask(in: .init(configuration.killGracePeriod * 2)) {
                [retiredProcesses] in
                retiredProcesses.killAll()
            }
            retiredProcesses.whenEmpty { [self] in
                killer.cancel()
                closeAllSessions(then: stopped)
            }
            return stopped.futureResult
        }.nonisolated()
    }

    /// Closes every connection gracefully and completes `promise` once all are gone, or once the clients had
    /// `linger` to close their side.
    private func closeAllSessions(then promise: EventLoopPromise<Void>, linger: TimeAmount = .seconds(2)) {
        guard !sessions.isEmpty else { return promise.succeed() }
        sessionsClosed = promise
        for session in sessions.values { session.close(linger: linger) }
        loop.assumeIsolated().scheduleTask(in: linger + .milliseconds(100)) { [weak self] in
            guard let self, let sessionsClosed = self.sessionsClosed else { return }
            self.sessionsClosed = nil
            sessionsClosed.succeed()
        }
    }

    private var inFlightCount: Int {
        queuedCount + slots.filter(\.isBusy).count
    }

    private func checkDrained() {
        guard let drainPromise, inFlightCount == 0 else { return }
        self.drainPromise = nil
        drainPromise.succeed()
    }

    /// At the drain deadline: every busy process is stopped and its task fails as `interrupted`; tasks never started
    /// fail as `shuttingDown`. A task sent ahead to a process counts as never started only when that is proved: it
    /// was withdrawn before the process claimed it (a Swift handler), or the process died without reading it (see
    /// ``HeldTasks``); until its process is dead, such a task keeps the drain open, and it may yet get its result.
    private func failEverythingInFlight() {
        logger.warning("drain deadline reached; failing \(inFlightCount) tasks still in flight")
        isPastDrainDeadline = true
        // The queue, and the tasks connections held back while their clients did not read: none of them started.
        for record in queue where !record.isFinished {
            finish(record, .failure(.shuttingDown, Self.notStartedAtShutdown))
        }
        for record in sessions.values.flatMap(\.tasksHeld) {
            finish(record, .failure(.shuttingDown, Self.notStartedAtShutdown))
        }
        queue.removeAll()
        // Stopping a process answers the tasks sent ahead to it that it never started (through requeue), and holds
        // the others until it is dead.
        let running = slots.compactMap { $0.interruptAtDrainDeadline() }
        for record in running {
            finish(record, .failure(.interrupted, "the server shut down while the task was running"))
        }
        checkDrained()
    }
}

/// Counts finished tasks per second over a short sliding window.
struct ThroughputMeter {
    private static let window = 5
    private var buckets = [Int](repeating: 0, count: window + 1)
    private var currentSecond: UInt64 = 0

    mutating func count(at now: NIODeadline) {
        advance(to: now)
        buckets[Int(currentSecond % UInt64(buckets.count))] += 1
    }

    /// Tasks per second over the last full seconds of the window.
    mutating func rate(at now: NIODeadline) -> Double {
        advance(to: now)
        let current = Int(currentSecond % UInt64(buckets.count))
        let total = buckets.indices.filter { $0 != current }.reduce(0) { $0 + buckets[$1] }
        return Double(total) / Double(Self.window)
    }

    private mutating func advance(to now: NIODeadline) {
        let second = now.uptimeNanoseconds / 1_000_000_000
        guard second != currentSecond else { return }
        let steps = min(second &- currentSecond, UInt64(buckets.count))
        for step in 1...steps {
            buckets[Int((currentSecond + step) % UInt64(buckets.count))] = 0
        }
        currentSecond = second
    }
}

/// The version of aiotask this library belongs to: `AiotaskProtocol.AiotaskVersion`, named here too for the
/// programs that wrote `AiotaskVersion.current` importing only `AiotaskWorker` (with `MemberImportVisibility`
/// they import `AiotaskProtocol` as well).
public typealias AiotaskVersion = AiotaskProtocol.AiotaskVersion
