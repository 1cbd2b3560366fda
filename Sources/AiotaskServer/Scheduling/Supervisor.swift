import AiotaskChildProcess
import AiotaskProtocol
import Foundation
import Logging
import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The heart of the worker: holds the pool's slots, the connections and the drain's timers, and carries out what
/// its ``Scheduler`` decides for every task's way from arrival to answer.
///
/// The scheduling rules — the queue, dispatch, prefetch and withdrawal, cancel, drain, reload roll-over — are the
/// ``Scheduler``'s, a value this class feeds events and whose actions it carries out on `PoolSlot`s and
/// connections. Confined to the server's single event loop: connections, process links and timers all run there,
/// so the state below needs no lock. The work itself happens in the pool's processes.
///
/// Its stored properties are `@exclusivity(unchecked)`: it lives on one event loop and the state machines it feeds
/// never call back into it, so no two accesses overlap, and the run-time checks Swift would otherwise make on each
/// access of a class's property cost about a tenth of the daemon's CPU per task (docs/performance.md).
final class Supervisor {
    let loop: any EventLoop
    @exclusivity(unchecked) private(set) var configuration: ServerConfiguration
    let logger: Logger
    /// Whether ``logger`` takes the entry of each task done: asked once, since asking the log handler for its
    /// level on each task costs a copy of the handler.
    private let logsEachTask: Bool
    let endingProcesses: EndingProcesses

    /// The pool's slots by index (``Scheduler/members`` says which are there).
    @exclusivity(unchecked) private var slots: [PoolSlot?] = []
    @exclusivity(unchecked) private var scheduler: Scheduler<TaskRecord>
    @exclusivity(unchecked) private var connections: [ObjectIdentifier: ConnectionHandler] = [:]
    private let startedAt = NIODeadline.now()
    @exclusivity(unchecked) private var throughput = ThroughputMeter()
    /// The task path's counters, read at scrape time (``metricsSnapshot()``).
    @exclusivity(unchecked) var metrics = ServerMetrics()

    @exclusivity(unchecked) private var drainPromise: EventLoopPromise<Void>?
    /// Completed when the last connection is gone, once shutdown has closed them all.
    @exclusivity(unchecked) private var connectionsClosed: EventLoopPromise<Void>?
    @exclusivity(unchecked) private var readyPromise: EventLoopPromise<Void>?
    @exclusivity(unchecked) private var slotsStarted = Set<Int>()
    /// The Landlock ruleset each new pool process enters (``HandlerConfinement``), made from the configuration at
    /// start and again at each reload, when the hidden paths and the directories around them may have changed; nil
    /// when nothing is hidden or Landlock is unavailable. Processes started before a reload keep the ruleset they
    /// entered until the roll-over replaces them.
    @exclusivity(unchecked) private(set) var confinement: LandlockRuleset?

    init(loop: any EventLoop, configuration: ServerConfiguration, logger: Logger) {
        self.loop = loop
        self.configuration = configuration
        self.logger = logger
        self.logsEachTask = logger.logLevel <= .debug
        self.endingProcesses = EndingProcesses(logger: logger)
        self.scheduler = Scheduler(limits: Self.limits(of: configuration))
        self.confinement = HandlerConfinement.make(configuration.hiddenPaths, logger: logger)
    }

    private static func limits(of configuration: ServerConfiguration) -> Scheduler<TaskRecord>.Limits {
        .init(
            queueCapacity: configuration.queueCapacity,
            maximumPayloadLength: configuration.maximumPayloadLength,
            maximumQueuedBytes: configuration.maximumQueuedBytes,
            allowsPrefetch: configuration.prefetch != 0
        )
    }

    /// Whether new tasks are taken (false once the drain began).
    var isAccepting: Bool { scheduler.isAccepting }

    /// Tasks that wait: queued, held back, or sent ahead and not started.
    var queuedCount: Int { scheduler.queuedCount }

    /// The slots in the pool, in index order.
    private var poolSlots: some Sequence<PoolSlot> { slots.lazy.compactMap { $0 } }

    private func slot(_ index: Int) -> PoolSlot {
        guard let slot = slots[index] else { preconditionFailure("no pool slot has index \(index)") }
        return slot
    }

    // MARK: Pool

    /// Starts the pool; the future succeeds once every slot has brought up a process (or failed its first try).
    func start() -> EventLoopFuture<Void> {
        let promise = loop.makePromise(of: Void.self)
        readyPromise = promise
        let indexes = scheduler.start(workers: configuration.workers)
        slots = indexes.map { PoolSlot(index: $0, supervisor: self) }
        for slot in poolSlots { slot.start() }
        return promise.futureResult
    }

    func slotBecameIdle(_ slot: PoolSlot) {
        markStarted(slot)
        scheduler.slotBecameIdle(slot.index)
        dispatch()
        checkDrained()
    }

    /// Adds a connection; false when the connection limit is reached.
    func register(_ connection: ConnectionHandler) -> Bool {
        guard connections.count < configuration.maximumConnections else {
            metrics.connectionsRefusedAtLimit += 1
            return false
        }
        metrics.connectionsAccepted += 1
        connections[ObjectIdentifier(connection)] = connection
        return true
    }

    /// A Unix socket connection was refused for its user (``PeerPolicy``); it is never registered.
    func peerRefused() {
        metrics.connectionsRefusedPeer += 1
    }

    /// A `tls://` connection was refused in its handshake (``TLSAdmissionHandler``); it is never registered.
    func tlsRefused() {
        metrics.connectionsRefusedTLS += 1
    }

    func unregister(_ connection: ConnectionHandler) {
        connections[ObjectIdentifier(connection)] = nil
        if connections.isEmpty, let connectionsClosed {
            self.connectionsClosed = nil
            connectionsClosed.succeed()
        }
    }

    func slotRetired(_ slot: PoolSlot) {
        guard slots.indices.contains(slot.index), slots[slot.index] === slot else { return }
        slots[slot.index] = nil
        scheduler.slotRetired(slot.index)
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
    func reload(_ newConfiguration: ServerConfiguration) {
        configuration = newConfiguration
        confinement = HandlerConfinement.make(newConfiguration.hiddenPaths, logger: logger)
        let rollOver = scheduler.reload(limits: Self.limits(of: newConfiguration), workers: newConfiguration.workers)
        if slots.count < scheduler.members.count {
            slots.append(contentsOf: repeatElement(nil, count: scheduler.members.count - slots.count))
        }
        for index in rollOver.stay { slot(index).stayInPool() }
        // An idle slot leaves at once, through ``slotRetired(_:)``.
        for index in rollOver.retire { slot(index).retire() }
        for index in rollOver.renew { slot(index).renew() }
        for index in rollOver.start { slots[index] = PoolSlot(index: index, supervisor: self) }
        for index in rollOver.start { slot(index).start() }
        dispatch()
    }

    /// The longest reply a new process's link accepts: the payload limit, or a larger one some task still in flight
    /// was accepted under.
    var maximumReplyLength: Int {
        max(configuration.maximumPayloadLength, scheduler.maximumPayloadLimitInFlight)
    }

    /// Whether the pool can run tasks: at least one slot keeps a process alive. A pool whose processes all keep
    /// dying is not, and the watchdog stops reporting health so that systemd restarts the service.
    var isHealthy: Bool {
        poolSlots.contains(where: \.isKeepingProcessAlive)
    }

    /// Whether an operator put the server into drain (``setDrainedByOperator(_:)``): the agent check then says
    /// `drain`, so that HAProxy sends no new connection; tasks keep being taken from the connections open.
    @exclusivity(unchecked) private(set) var isDrainedByOperator = false
    /// What the agent check's connections share (``AgentCheckHandler``).
    let agentListener = AgentListenerState()

    /// Puts the server into drain for the agent check, or takes it out, on an operator's `DRAIN` frame.
    func setDrainedByOperator(_ drained: Bool, by client: String) {
        guard drained != isDrainedByOperator else { return }
        isDrainedByOperator = drained
        logger.notice(
            drained
                ? "drained by the operator: the agent check says drain; tasks are still taken"
                : "drain lifted by the operator",
            metadata: ["client": "\(client)"]
        )
    }

    /// What the agent check's answer is made from (``AgentCheck/answer(_:)``).
    var agentFigures: AgentCheck.Figures {
        AgentCheck.Figures(
            isStopping: !scheduler.isAccepting,
            isDrainedByOperator: isDrainedByOperator,
            isRollingOver: poolSlots.contains(where: \.isRollingOver),
            isPoolFailing: !isHealthy,
            poolSize: max(1, configuration.workers),
            idleSlots: poolSlots.count(where: \.isIdle),
            queuedTasks: scheduler.queuedCount,
            highWaterMark: configuration.agentHighWaterMark
        )
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
        poolSlots.compactMap(\.process).reduce(into: (0, 0)) { usage, process in
            usage.tasks += process.sharedTaskCount
            usage.regionsInUse += process.sharedRegionsInUse
        }
    }

    func noteRestart(_ reason: RestartReason) {
        scheduler.noteRestart()
        metrics.restarts[reason.rawValue] += 1
    }

    /// Counts a task that ran past the slow-task threshold (its slot logged it).
    func noteSlowTask() {
        scheduler.noteSlowTask()
    }

    func slotFailedToStart(_ slot: PoolSlot) {
        markStarted(slot)
    }

    private func markStarted(_ slot: PoolSlot) {
        guard readyPromise != nil else { return }
        slotsStarted.insert(slot.index)
        if slotsStarted.count == slots.count(where: { $0 != nil }) {
            readyPromise?.succeed()
            readyPromise = nil
        }
    }

    /// Carries out the ``Scheduler``'s dispatch: waiting tasks go to idle processes, then some are sent ahead to
    /// busy ones, and a process idle while the queue is empty takes the tasks sent ahead to a busy one and not
    /// started (``Scheduler/nextDispatch(_:)``).
    ///
    /// - Parameter now: the caller's reading of the clock, if it has one: a task's path reads it once per event.
    func dispatch(at now: NIODeadline? = nil) {
        var pool = PoolView(slots: slots, now: now)
        while let action = scheduler.nextDispatch(&pool) {
            switch action {
            case .run(let record, let index):
                slot(index).run(record)
            case .prefetch(let record, let index):
                slot(index).prefetch(record)
            case .hold(let record):
                record.connection.hold(record)
            case .withdraw(let index):
                // The running task is then taken as slow, and no more tasks are sent ahead behind it.
                guard slot(index).withdrawSentAhead(forIdleProcess: true) else {
                    metrics.noteSaturation(scheduler.isSaturated(pool))
                    return
                }
            }
        }
        metrics.noteSaturation(scheduler.isSaturated(pool))
    }

    /// A task sent ahead starts running: it leaves the waiting counts.
    func prefetchedTaskStarts(_ record: TaskRecord) {
        scheduler.prefetchedTaskStarts(record)
    }

    /// Puts tasks that were sent ahead to a process that is gone, or withdrawn, back at the front of the queue, in
    /// order, to run elsewhere. They never left the waiting counts. Past the drain deadline they are answered
    /// `shuttingDown`.
    func requeue(_ records: [TaskRecord]) {
        switch scheduler.putBack(records) {
        case .queued:
            break
        case .answerNotStarted:
            for record in records where !record.isFinished {
                finish(record, .failure(.shuttingDown, Self.notStartedAtShutdown))
            }
        }
    }

    /// Puts the tasks a connection held back while its client did not read back at the head of the queue, in
    /// order: they arrived before the tasks behind them. They never left the waiting counts.
    func release(_ records: [TaskRecord]) {
        guard !records.isEmpty else { return }
        requeue(records)
        dispatch()
    }

    /// Settles the tasks sent ahead to `process`, now dead, that it may have started (see ``TasksInDyingProcess``): they fail
    /// as `workerCrashed`, or past the drain deadline as `interrupted`.
    func failPossiblyStarted(_ records: [TaskRecord], on process: PoolProcess, _ status: ExitStatus) {
        for record in records where !record.isFinished {
            if scheduler.isPastDrainDeadline {
                finish(record, .failure(.interrupted, "the server shut down while the task may have been running"))
            } else {
                let message = "pool process \(process.pid) \(status) while it may have been running the task"
                finish(record, .failure(.workerCrashed, message), workerPID: process.pid)
            }
        }
    }

    /// Settles the tasks sent ahead to a stopped process, now dead, that it did not answer (see ``TasksInDyingProcess``).
    func settleHeld(
        _ process: PoolProcess,
        _ status: ExitStatus,
        mayHaveStarted: [TaskRecord],
        notStarted: [TaskRecord]
    ) {
        failPossiblyStarted(mayHaveStarted, on: process, status)
        requeue(notStarted)
        dispatch()
    }

    private static let notStartedAtShutdown = "the server shut down before the task started"

    // MARK: Tasks

    /// Takes a new task, or answers it at once when the queue is full or the server is stopping.
    func accept(_ record: TaskRecord) {
        metrics.taskBytes += record.size
        switch scheduler.taskArrived(record) {
        case .queued:
            // The task arrived in this tick: its arrival time serves as the clock's reading.
            dispatch(at: record.acceptedAt)
        case .refused(let reason, let message):
            finish(record, .failure(reason, message), rejected: true, at: record.acceptedAt)
        }
    }

    /// Reserves room in the queue's byte limit for a task frame of `length` bytes whose header has arrived (see
    /// ``Scheduler/reserve(_:)``); false, reserving nothing, when there is no room.
    func reserve(_ length: Int) -> Bool {
        scheduler.reserve(length)
    }

    /// Gives back a reservation of ``reserve(_:)``: its frame is whole, or its connection gone.
    func unreserve(_ length: Int) {
        scheduler.unreserve(length)
    }

    /// Why a task of `size` bytes does not fit the queue's byte limit.
    func queueFullMessage(adding size: Int) -> String {
        scheduler.queueFullMessage(adding: size)
    }

    /// Counts a task refused before it was queued, and answers it with `reason`.
    func accept(rejected record: TaskRecord, _ reason: FailureReason, _ message: String) {
        metrics.taskBytes += record.size
        scheduler.taskRefusedOnArrival(record)
        finish(record, .failure(reason, message), rejected: true)
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
        scheduler.taskAbandoned(record)
        metrics.abandoned += 1
        logger.debug("task abandoned: its client disconnected", metadata: record.logMetadata())
        checkDrained()
        dispatch()
    }

    /// Marks `record` finished wherever it is, and has its slot withdraw it (sent ahead to a process that claims
    /// its tasks) or stop its process (running).
    private func stop(_ record: TaskRecord) {
        switch scheduler.stop(record) {
        case .none:
            break
        case .withdrawFromItsSlot:
            poolSlots.first { $0.holds(record) }?.withdrawCancelled()
        case .interruptItsSlot:
            for slot in poolSlots where slot.isBusy { slot.interrupt(record) }
        }
    }

    /// Records the outcome of `record` and passes it to its connection.
    ///
    /// - Parameter rejected: the task was refused on arrival and never queued: it counts as rejected, not failed.
    /// - Parameter now: the caller's reading of the clock (a task's path reads it once per event).
    func finish(
        _ record: TaskRecord,
        _ outcome: TaskOutcome,
        workerPID: Int32? = nil,
        rejected: Bool = false,
        at now: NIODeadline = .now()
    ) {
        var outcome = outcome
        if case .success(let result) = outcome, result.readableBytes > record.connection.resultLimit {
            let limit = record.connection.resultLimit
            outcome = .failure(
                .payloadTooLarge,
                "result of \(result.readableBytes) bytes exceeds the client's limit of \(limit) bytes"
            )
        }
        switch outcome {
        case .success(let result):
            scheduler.taskFinished(record, succeeded: true)
            metrics.succeeded += 1
            metrics.resultBytes += result.readableBytes
        case .failure(let reason, _):
            scheduler.taskFinished(record, succeeded: false)
            if rejected { metrics.rejected.count(reason) } else { metrics.failed.count(reason) }
        }
        if let startedAt = record.startedAt {
            metrics.runTime.observe(nanoseconds: (now - startedAt).nanoseconds)
        }
        throughput.count(at: now)
        switch outcome {
        case .success:
            // The metadata of a success is built only when it is logged: this runs once per task.
            if logsEachTask {
                logger.debug("task done", metadata: metadata(of: record, workerPID: workerPID))
            }
        case .failure(let reason, let message):
            var metadata = metadata(of: record, workerPID: workerPID)
            metadata["reason"] = "\(reason)"
            metadata["message_id"] = "\(LogMessageID.forFailure(reason))"
            // Cut as the FAILED frame and the handler's stderr lines are: a handler's error text can be any length.
            let logged = ConnectionHandler.truncated(message, toUTF8Count: StderrLineReader.maximumLineLength)
            logger.warning("task failed: \(reason): \(logged)", metadata: metadata)
        }
        record.connection.complete(record, outcome, at: now)
        checkDrained()
    }

    private func metadata(of record: TaskRecord, workerPID: Int32?) -> Logger.Metadata {
        var metadata = record.logMetadata([
            "duration_usec": "\((NIODeadline.now() - record.acceptedAt).nanoseconds / 1000)"
        ])
        if let workerPID { metadata["worker_pid"] = "\(workerPID)" }
        return metadata
    }

    // MARK: Statistics

    func info() -> ServerInfo {
        let busy = poolSlots.count(where: \.isBusy)
        let counters = scheduler.counters
        return ServerInfo(
            version: AiotaskVersion.current,
            pid: Int(getpid()),
            uptimeSeconds: Double((NIODeadline.now() - startedAt).nanoseconds) / 1e9,
            handler: configuration.handler.displayName,
            workers: .init(
                configured: max(1, configuration.workers),
                alive: poolSlots.count { $0.process != nil },
                busy: busy,
                restarts: counters.restarts
            ),
            queue: .init(length: scheduler.queuedCount, capacity: configuration.queueCapacity),
            tasks: .init(
                submitted: counters.submitted,
                succeeded: counters.succeeded,
                failed: counters.failed,
                running: busy,
                slow: counters.slowTasks
            ),
            connections: connections.count,
            tasksPerSecond: throughput.rate(at: .now()),
            agentCheck: String(AgentCheck.answer(agentFigures).line.dropLast())
        )
    }

    // MARK: Metrics

    /// A task starts on a pool process: its wait in the queue ends.
    func taskStarts(_ record: TaskRecord, at now: NIODeadline) {
        record.startedAt = now
        metrics.queueWait.observe(nanoseconds: (now - record.acceptedAt).nanoseconds)
    }

    /// The counters, and the gauges read from the live state: the queue, each slot's process, the processes still
    /// ending, the connections.
    func metricsSnapshot() -> MetricsSnapshot {
        let now = NIODeadline.now()
        var processes = MetricsSnapshot.ProcessCounts()
        var pids: [Int32] = []
        for slot in poolSlots {
            switch slot.processState {
            case .none: continue
            case .starting: processes.starting += 1
            case .idle: processes.idle += 1
            case .busy: processes.busy += 1
            }
            if let process = slot.process { pids.append(process.pid) }
        }
        processes.stopping = endingProcesses.count
        return MetricsSnapshot(
            counters: metrics,
            submitted: scheduler.counters.submitted,
            slowTasks: scheduler.counters.slowTasks,
            queueLength: scheduler.queuedCount,
            queueBytes: scheduler.queuedBytes,
            oldestQueuedAge: scheduler.firstWaiting.map { .nanoseconds((now - $0.acceptedAt).nanoseconds) } ?? .zero,
            processes: processes,
            poolPIDs: pids,
            configuredWorkers: max(1, configuration.workers),
            saturated: metrics.saturatedTime(at: now),
            connectionsOpen: connections.count
        )
    }

    /// The pool's state, slot by slot, with the statistics (`POOL`).
    func poolStatus() -> PoolStatus {
        let now = NIODeadline.now()
        return PoolStatus(server: info(), processes: poolSlots.map { $0.status(at: now) })
    }

    // MARK: Shutdown

    /// Stops taking tasks (telling every extended client so with `GOODBYE`), lets those in flight finish within
    /// `drainTimeout`, fails the rest with `shuttingDown` (not started) or `interrupted` (running), then stops
    /// every process and closes the connections. The future succeeds once all of them are gone.
    ///
    /// - Parameter announce: logs the drain; false when the server never started listening, so that a failed
    ///   start does not read like a stop.
    func shutdown(drainTimeout: Duration, announce: Bool = true) -> EventLoopFuture<Void> {
        scheduler.drain()
        if announce { logger.info("draining \(tasksInFlight) tasks in flight; new tasks are refused") }
        for connection in connections.values { connection.sayGoodbye() }
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
            scheduler.stopAllSlots()
            for slot in poolSlots { slot.stop() }
            let stopped = loop.makePromise(of: Void.self)
            let killer = loop.assumeIsolated().scheduleTask(in: .init(configuration.killGracePeriod * 2)) {
                [endingProcesses] in
                endingProcesses.killAll()
            }
            endingProcesses.whenEmpty { [self] in
                killer.cancel()
                closeAllSessions(then: stopped)
            }
            return stopped.futureResult
        }.nonisolated()
    }

    /// Closes every connection gracefully and completes `promise` once all are gone, or once the clients had
    /// `linger` to close their side.
    private func closeAllSessions(then promise: EventLoopPromise<Void>, linger: TimeAmount = .seconds(2)) {
        guard !connections.isEmpty else { return promise.succeed() }
        connectionsClosed = promise
        for connection in connections.values { connection.close(linger: linger) }
        loop.assumeIsolated().scheduleTask(in: linger + .milliseconds(100)) { [weak self] in
            guard let self, let connectionsClosed = self.connectionsClosed else { return }
            self.connectionsClosed = nil
            connectionsClosed.succeed()
        }
    }

    private var inFlightCount: Int {
        scheduler.tasksInFlight(busySlots: poolSlots.count(where: \.isBusy))
    }

    private func checkDrained() {
        guard let drainPromise, scheduler.isDrained(busySlots: poolSlots.count(where: \.isBusy)) else { return }
        self.drainPromise = nil
        drainPromise.succeed()
    }

    /// At the drain deadline: every busy process is stopped and its task fails as `interrupted`; tasks never started
    /// fail as `shuttingDown`. A task sent ahead to a process counts as never started only when that is proved: it
    /// was withdrawn before the process claimed it (a Swift handler), or the process died without reading it (see
    /// ``TasksInDyingProcess``); until its process is dead, such a task keeps the drain open, and it may yet get its result.
    private func failEverythingInFlight() {
        logger.warning("drain deadline reached; failing \(inFlightCount) tasks still in flight")
        // The queue, and the tasks connections held back while their clients did not read: none of them started.
        for record in scheduler.drainDeadline() where !record.isFinished {
            finish(record, .failure(.shuttingDown, Self.notStartedAtShutdown))
        }
        for record in connections.values.flatMap(\.tasksHeld) {
            finish(record, .failure(.shuttingDown, Self.notStartedAtShutdown))
        }
        // Stopping a process answers the tasks sent ahead to it that it never started (through requeue), and holds
        // the others until it is dead.
        let running = poolSlots.compactMap { $0.interruptAtDrainDeadline() }
        for record in running {
            finish(record, .failure(.interrupted, "the server shut down while the task was running"))
        }
        checkDrained()
    }
}

/// What the ``Scheduler`` reads of the pool's slots and connections while it dispatches.
private struct PoolView: SchedulerPool {
    let slots: [PoolSlot?]
    /// The clock as the caller read it, or read once per dispatch at the first task that may be sent ahead.
    private var now: NIODeadline?

    init(slots: [PoolSlot?], now: NIODeadline?) {
        self.slots = slots
        self.now = now
    }

    func isIdle(_ slot: Int) -> Bool {
        slots[slot]?.isIdle ?? false
    }

    mutating func canPrefetch(_ slot: Int, size: Int) -> Bool {
        guard let slot = slots[slot] else { return false }
        let now = self.now ?? .now()
        self.now = now
        return slot.canPrefetch(size: size, at: now)
    }

    func prefetchedCount(_ slot: Int) -> Int {
        slots[slot]?.prefetchedCount ?? 0
    }

    func canWithdraw(_ slot: Int) -> Bool {
        slots[slot]?.canWithdraw ?? false
    }

    func isHoldingTasks(_ task: TaskRecord) -> Bool {
        task.connection.isHoldingTasks
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
