import AiotaskProtocol

/// The decisions of an ``AiotaskClientPool``: which endpoints it connects to, which connection a task goes to,
/// which endpoint is ejected and when it is tried again, when the pool has drained. Pure: events in, actions out;
/// the pool carries the actions out (connects, sleeps, closes, resumes the tasks waiting) and reports what came of
/// them as new events.
///
/// An endpoint is *ejected* when connecting to it fails or one of its connections drops: it gets no new task until a
/// connection to it is made again, tried after a backoff that doubles with each failure in a row
/// (``Settings/backoffBase`` up to ``Settings/backoffLimit``). A connection whose server said `GOODBYE` gets no new
/// task; its tasks finish, and once it closes a new connection is tried after ``Settings/backoffBase``.
struct PoolStateMachine {
    struct EndpointID: Hashable, Comparable, Sendable, CustomStringConvertible {
        let raw: Int
        static func < (lhs: Self, rhs: Self) -> Bool { lhs.raw < rhs.raw }
        var description: String { "endpoint \(raw)" }
    }

    struct ConnectionID: Hashable, Sendable, CustomStringConvertible {
        let raw: Int
        /// Where the connection's state sits in the machine's ``ConnectionTable`` while it exists: the per-task calls
        /// (``PoolStateMachine/acquire(_:)``, ``PoolStateMachine/release(_:)``) find it without hashing.
        let slot: Int
        var description: String { "connection \(raw)" }
    }

    struct WaiterID: Hashable, Sendable {
        let raw: Int
    }

    struct Settings: Sendable {
        var connectionsPerEndpoint: Int
        var strategy: BalancingStrategy
        var backoffBase: Duration
        var backoffLimit: Duration
    }

    enum Action: Equatable, Sendable {
        /// Connect to `address`; report ``PoolStateMachine/connected(_:)`` or
        /// ``PoolStateMachine/connectFailed(_:error:)``.
        case connect(ConnectionID, EndpointID, ServerAddress)
        /// Report ``PoolStateMachine/retryDue(_:)`` after `delay`.
        case scheduleRetry(EndpointID, after: Duration)
        /// Close the connection (it has no task outstanding); report ``PoolStateMachine/closed(_:error:)``.
        case close(ConnectionID)
        /// The waiting task goes to this connection (counted outstanding on it already).
        case resume(WaiterID, ConnectionID)
        /// The waiting task fails.
        case fail(WaiterID, AiotaskClientError)
        /// The endpoint is ejected (for the log); `expected` after it said `GOODBYE` (it was stopping).
        case ejected(EndpointID, ServerAddress, failures: Int, retryIn: Duration, expected: Bool, AiotaskClientError)
        /// The endpoint takes tasks again after an ejection (for the log).
        case restored(EndpointID, ServerAddress)
        /// Every connection is closed after ``PoolStateMachine/shutDown()``: the pool's `run()` returns.
        case finished
    }

    /// What ``PoolStateMachine/acquire(_:)`` found for a task.
    enum Acquired: Equatable, Sendable {
        case connection(ConnectionID)
        /// No endpoint takes tasks now: the task waits for a ``Action/resume(_:_:)`` or ``Action/fail(_:_:)``.
        case wait
        case fail(AiotaskClientError)
    }

    private enum Phase {
        /// The pool's `run()` has not started: tasks wait.
        case idle
        case running
        /// Graceful shutdown: no new task; the pool ends once its tasks have finished.
        case draining
        case finished
    }

    private struct Endpoint {
        let address: ServerAddress
        /// Connections being made.
        var connecting = 0
        /// Connections made, in the order they were made (closed ones removed).
        var connections: [ConnectionID] = []
        /// Connect failures and drops in a row, since the last connection made.
        var failures = 0
        /// No task goes here until a new connection is made.
        var isEjected = false
        var retryScheduled = false
        /// Gone from the host name's addresses: its connections drain and close.
        var isRemoved = false
        /// A connection closed after `GOODBYE` and none was made since: the server is stopping or restarting.
        var isStopping = false
    }

    private struct Connection {
        let id: ConnectionID
        let endpoint: EndpointID
        var outstanding = 0
        /// Whether new tasks may go here: not after `GOODBYE`, a refused task, the endpoint's removal or shutdown.
        var takesTasks = true
        var sawGoodbye = false
        /// The pool asked to close it.
        var isClosing = false
    }

    private(set) var settings: Settings
    private var phase = Phase.idle
    private var endpoints: [EndpointID: Endpoint] = [:]
    /// The endpoints in the order given (resolved), removed ones excluded.
    private var order: [EndpointID] = []
    private var connections = ConnectionTable()
    private var waiters: [WaiterID] = []
    private var nextID = 0
    private var roundRobinCursor = 0
    private var random: UInt64
    /// The last connect failure or drop, for tasks that find no endpoint.
    private var lastError: AiotaskClientError?
    /// What ``choose()`` reads: the endpoints that take tasks and their connections that do. Only the per-task
    /// counts change between the events that change it, so it is rebuilt after those events, not for every task.
    private var choice = Choice()
    /// Set by every event that may change which endpoints or connections take tasks.
    private var choiceIsStale = true

    init(addresses: [ServerAddress], settings: Settings, seed: UInt64 = .random(in: 1...UInt64.max)) {
        precondition(settings.connectionsPerEndpoint >= 1, "connectionsPerEndpoint must be at least 1")
        self.settings = settings
        self.random = seed
        _ = resolved(addresses)
    }

    // MARK: Lifecycle

    /// The pool's `run()` started: connect to every endpoint.
    mutating func start() -> [Action] {
        choiceIsStale = true
        guard case .idle = phase else { return [] }
        phase = .running
        var actions: [Action] = []
        for id in order { fill(id, into: &actions) }
        return actions
    }

    /// Graceful shutdown: waiting tasks fail, no new task is taken; connections close as their tasks finish.
    mutating func shutDown() -> [Action] {
        choiceIsStale = true
        switch phase {
        case .draining, .finished: return []
        case .idle, .running: break
        }
        phase = .draining
        var actions: [Action] = []
        let error = AiotaskClientError(.connectionLost, reason: "the client pool is shutting down")
        for waiter in waiters { actions.append(.fail(waiter, error)) }
        waiters = []
        for id in connections.ids.sorted(by: { $0.raw < $1.raw }) {
            connections[id]?.takesTasks = false
            closeIfIdle(id, into: &actions)
        }
        finishIfDrained(into: &actions)
        return actions
    }

    var isFinished: Bool {
        if case .finished = phase { return true }
        return false
    }

    // MARK: Endpoints

    /// The endpoints are now `addresses` (given, or a host name's addresses): new ones are connected, gone ones
    /// take no new task and close once idle.
    mutating func resolved(_ addresses: [ServerAddress]) -> [Action] {
        choiceIsStale = true
        var actions: [Action] = []
        var known: [ServerAddress: EndpointID] = [:]
        for id in order { if let endpoint = endpoints[id] { known[endpoint.address] = id } }
        var newOrder: [EndpointID] = []
        for address in addresses {
            if let id = known.removeValue(forKey: address) {
                newOrder.append(id)
            } else if !newOrder.contains(where: { endpoints[$0]?.address == address }) {
                let id = EndpointID(raw: makeID())
                endpoints[id] = Endpoint(address: address)
                newOrder.append(id)
                if case .running = phase { fill(id, into: &actions) }
            }
        }
        order = newOrder
        for id in known.values.sorted() {
            endpoints[id]?.isRemoved = true
            for connection in endpoints[id]?.connections ?? [] {
                connections[connection]?.takesTasks = false
                closeIfIdle(connection, into: &actions)
            }
            forgetIfUnused(id)
        }
        serveWaiters(into: &actions)
        return actions
    }

    /// The endpoints tasks go to, in order.
    var addresses: [ServerAddress] { order.compactMap { endpoints[$0]?.address } }

    // MARK: Connection events

    mutating func connected(_ id: ConnectionID, endpoint endpointID: EndpointID) -> [Action] {
        choiceIsStale = true
        var actions: [Action] = []
        // Its slot is freed by closed(_:error:).
        guard var endpoint = endpoints[endpointID] else { return [.close(id)] }
        endpoint.connecting -= 1
        var connection = Connection(id: id, endpoint: endpointID)
        if endpoint.isRemoved || !isTakingTasks {
            connection.takesTasks = false
            connection.isClosing = true
            actions.append(.close(id))
        } else if endpoint.isEjected {
            endpoint.isEjected = false
            actions.append(.restored(endpointID, endpoint.address))
        }
        endpoint.failures = 0
        endpoint.isStopping = false
        endpoint.connections.append(id)
        endpoints[endpointID] = endpoint
        connections.insert(connection)
        serveWaiters(into: &actions)
        return actions
    }

    mutating func connectFailed(
        _ id: ConnectionID,
        endpoint endpointID: EndpointID,
        error: AiotaskClientError
    )
        -> [Action]
    {
        choiceIsStale = true
        var actions: [Action] = []
        connections.free(id)
        endpoints[endpointID]?.connecting -= 1
        lastError = error
        eject(endpointID, error: error, into: &actions)
        forgetIfUnused(endpointID)
        finishIfDrained(into: &actions)
        return actions
    }

    /// The server said `GOODBYE` on the connection: it is stopping, so no new task goes to any of its connections
    /// (their own `GOODBYE` is on its way); the ones sent finish.
    mutating func goodbye(_ id: ConnectionID) -> [Action] {
        choiceIsStale = true
        guard let endpoint = connections[id]?.endpoint else { return [] }
        connections[id]?.sawGoodbye = true
        for connection in endpoints[endpoint]?.connections ?? [] { connections[connection]?.takesTasks = false }
        return []
    }

    /// A task found the connection no longer taking tasks (it had said `GOODBYE` or ended): no new task goes there.
    /// The task's own ``release(_:)`` follows.
    mutating func refused(_ id: ConnectionID) -> [Action] {
        choiceIsStale = true
        connections[id]?.takesTasks = false
        return []
    }

    /// The connection ended. Unless the pool closed it or its server said `GOODBYE`, it dropped: its endpoint is
    /// ejected. Otherwise, while the pool runs, a new connection is tried after ``Settings/backoffBase``.
    mutating func closed(_ id: ConnectionID, error: AiotaskClientError) -> [Action] {
        choiceIsStale = true
        guard let connection = connections.remove(id) else {
            // A connection never counted in (its endpoint was gone): only its slot is left.
            connections.free(id)
            return []
        }
        var actions: [Action] = []
        let endpointID = connection.endpoint
        endpoints[endpointID]?.connections.removeAll { $0 == id }
        if case .running = phase, let endpoint = endpoints[endpointID], !endpoint.isRemoved {
            if connection.sawGoodbye { endpoints[endpointID]?.isStopping = true }
            if connection.sawGoodbye || connection.isClosing {
                // The server is stopping (a restart, a reload), or the pool closed a connection that had refused a
                // task: try it again soon; if the server is gone, connecting fails and ejects it.
                scheduleRetry(endpointID, after: settings.backoffBase, into: &actions)
            } else {
                lastError = error
                eject(endpointID, error: error, into: &actions)
            }
        }
        forgetIfUnused(endpointID)
        finishIfDrained(into: &actions)
        return actions
    }

    /// The backoff of an endpoint has passed: connect its missing connections.
    mutating func retryDue(_ endpointID: EndpointID) -> [Action] {
        choiceIsStale = true
        endpoints[endpointID]?.retryScheduled = false
        var actions: [Action] = []
        if case .running = phase { fill(endpointID, into: &actions) }
        return actions
    }

    // MARK: Tasks

    /// A task looks for a connection; `waiter` names it should it have to wait (nil: it does not wait, and is
    /// answered ``Acquired/wait`` without being queued).
    mutating func acquire(_ waiter: WaiterID?) -> Acquired {
        switch phase {
        case .draining, .finished:
            return .fail(AiotaskClientError(.connectionLost, reason: "the client pool is shutting down"))
        case .idle, .running:
            break
        }
        if let slot = choose() {
            return .connection(connections.take(slot))
        }
        if let waiter { waiters.append(waiter) }
        return .wait
    }

    /// A new id for a waiter, a connection or an endpoint.
    mutating func makeWaiterID() -> WaiterID { WaiterID(raw: makeID()) }

    /// A task sent on `id` has its answer.
    mutating func release(_ id: ConnectionID) -> [Action] {
        connections[id]?.outstanding -= 1
        var actions: [Action] = []
        closeIfIdle(id, into: &actions)
        finishIfDrained(into: &actions)
        return actions
    }

    /// A waiting task gives up (its retry limit passed, or it was cancelled): it fails with `error` unless a
    /// connection was found for it already.
    mutating func stopWaiting(_ waiter: WaiterID, error: AiotaskClientError?) -> [Action] {
        guard let index = waiters.firstIndex(of: waiter) else { return [] }
        waiters.remove(at: index)
        let error =
            error
            ?? AiotaskClientError(
                lastError?.code ?? .connectFailed,
                reason: "no endpoint took the task in time"
                    + (lastError.map { "; last error: \($0.reason)" } ?? " (no endpoint connected)")
            )
        return [.fail(waiter, error)]
    }

    /// Tasks outstanding on each endpoint, in order (for tests and statistics).
    var outstandingPerEndpoint: [Int] {
        order.map { id in
            endpoints[id]!.connections.reduce(0) { $0 + (connections[$1]?.outstanding ?? 0) }
        }
    }

    /// Whether each endpoint, in order, takes tasks now.
    var takesTasksPerEndpoint: [Bool] { order.map { isUsable($0) } }

    // MARK: Choosing

    private var isTakingTasks: Bool {
        if case .running = phase { return true }
        if case .idle = phase { return true }
        return false
    }

    private func isUsable(_ id: EndpointID) -> Bool {
        guard let endpoint = endpoints[id], !endpoint.isEjected, !endpoint.isRemoved else { return false }
        return endpoint.connections.contains { connections[$0]?.takesTasks == true }
    }

    /// The endpoints that take tasks, in order, each with its connections that take tasks (in the order they were
    /// made), by slot.
    private struct Choice {
        struct Entry {
            /// The endpoint's place in ``PoolStateMachine/order``.
            let orderIndex: Int
            /// Its connections in ``Choice/slots``.
            let slots: Range<Int>
        }

        var entries: [Entry] = []
        var slots: [Int] = []
    }

    private mutating func rebuildChoice() {
        choiceIsStale = false
        choice.entries.removeAll(keepingCapacity: true)
        choice.slots.removeAll(keepingCapacity: true)
        for (index, id) in order.enumerated() {
            guard let endpoint = endpoints[id], !endpoint.isEjected, !endpoint.isRemoved else { continue }
            let start = choice.slots.count
            for connection in endpoint.connections where connections[connection]?.takesTasks == true {
                choice.slots.append(connection.slot)
            }
            if choice.slots.count > start {
                choice.entries.append(Choice.Entry(orderIndex: index, slots: start..<choice.slots.count))
            }
        }
    }

    /// The tasks outstanding on the connections of `entry` that take tasks.
    private func load(of entry: Choice.Entry) -> Int {
        var total = 0
        for index in entry.slots { total += connections.outstanding(atSlot: choice.slots[index]) }
        return total
    }

    /// The slot of the connection for the next task, by the strategy; nil when no endpoint takes tasks.
    private mutating func choose() -> Int? {
        if choiceIsStale { rebuildChoice() }
        let count = choice.entries.count
        guard count > 0 else { return nil }
        let entry: Choice.Entry
        switch settings.strategy {
        case .firstAvailable:
            entry = choice.entries[0]
        case .roundRobin:
            // The first endpoint taking tasks at or after the cursor, going round: as if every endpoint of `order`
            // were tried in turn from the cursor.
            let cursor = roundRobinCursor % order.count
            entry = choice.entries.first { $0.orderIndex >= cursor } ?? choice.entries[0]
            roundRobinCursor = (entry.orderIndex + 1) % order.count
        default:
            if count == 1 {
                entry = choice.entries[0]
            } else {
                let first = Int(nextRandom() % UInt64(count))
                var second = Int(nextRandom() % UInt64(count - 1))
                if second >= first { second += 1 }
                let a = choice.entries[first]
                let b = choice.entries[second]
                entry = load(of: b) < load(of: a) ? b : a
            }
        }
        var best = choice.slots[entry.slots.lowerBound]
        var fewest = connections.outstanding(atSlot: best)
        for index in entry.slots.dropFirst() {
            let slot = choice.slots[index]
            let outstanding = connections.outstanding(atSlot: slot)
            if outstanding < fewest { (best, fewest) = (slot, outstanding) }
        }
        return best
    }

    /// SplitMix64: a seeded sequence, so that tests replay the same choices.
    private mutating func nextRandom() -> UInt64 {
        random &+= 0x9E37_79B9_7F4A_7C15
        var z = random
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    // MARK: Helpers

    private mutating func makeID() -> Int {
        nextID += 1
        return nextID
    }

    /// Connects the endpoint's missing connections, unless it waits for its backoff.
    private mutating func fill(_ endpointID: EndpointID, into actions: inout [Action]) {
        guard var endpoint = endpoints[endpointID], !endpoint.isRemoved, !endpoint.retryScheduled else { return }
        let open = endpoint.connections.count { connections[$0]?.takesTasks == true }
        let missing = settings.connectionsPerEndpoint - open - endpoint.connecting
        guard missing > 0 else { return }
        for _ in 0..<missing {
            let id = connections.reserve(raw: makeID())
            endpoint.connecting += 1
            actions.append(.connect(id, endpointID, endpoint.address))
        }
        endpoints[endpointID] = endpoint
    }

    private mutating func eject(_ endpointID: EndpointID, error: AiotaskClientError, into actions: inout [Action]) {
        guard case .running = phase, var endpoint = endpoints[endpointID], !endpoint.isRemoved else { return }
        // One failure per round of attempts: the connections tried together count once.
        if !endpoint.retryScheduled { endpoint.failures += 1 }
        let wasEjected = endpoint.isEjected
        endpoint.isEjected = true
        endpoints[endpointID] = endpoint
        let delay = backoff(afterFailures: endpoint.failures)
        if !wasEjected {
            actions.append(
                .ejected(
                    endpointID,
                    endpoint.address,
                    failures: endpoint.failures,
                    retryIn: delay,
                    expected: endpoint.isStopping,
                    error
                )
            )
        }
        scheduleRetry(endpointID, after: delay, into: &actions)
    }

    /// ``Settings/backoffBase`` doubled for each failure after the first, up to ``Settings/backoffLimit``.
    func backoff(afterFailures failures: Int) -> Duration {
        var delay = settings.backoffBase
        for _ in 1..<max(1, failures) {
            delay = delay * 2
            if delay >= settings.backoffLimit { return settings.backoffLimit }
        }
        return min(delay, settings.backoffLimit)
    }

    private mutating func scheduleRetry(_ endpointID: EndpointID, after delay: Duration, into actions: inout [Action]) {
        guard endpoints[endpointID]?.retryScheduled == false else { return }
        endpoints[endpointID]?.retryScheduled = true
        actions.append(.scheduleRetry(endpointID, after: delay))
    }

    private mutating func closeIfIdle(_ id: ConnectionID, into actions: inout [Action]) {
        guard var connection = connections[id], !connection.takesTasks, !connection.isClosing,
            connection.outstanding == 0
        else { return }
        connection.isClosing = true
        connections[id] = connection
        actions.append(.close(id))
    }

    /// Drops a removed endpoint once nothing refers to it.
    private mutating func forgetIfUnused(_ id: EndpointID) {
        guard let endpoint = endpoints[id], endpoint.isRemoved, endpoint.connecting == 0,
            endpoint.connections.isEmpty
        else { return }
        endpoints[id] = nil
    }

    private mutating func serveWaiters(into actions: inout [Action]) {
        guard isTakingTasks else { return }
        while !waiters.isEmpty, let slot = choose() {
            actions.append(.resume(waiters.removeFirst(), connections.take(slot)))
        }
    }

    private mutating func finishIfDrained(into actions: inout [Action]) {
        guard case .draining = phase else { return }
        guard connections.isEmpty, endpoints.values.allSatisfy({ $0.connecting == 0 }) else { return }
        phase = .finished
        actions.append(.finished)
    }

    /// The connections by ``ConnectionID/slot``: an array instead of a dictionary, so that a task's choice and its
    /// release hash nothing. A slot is reserved when the connection is asked for and freed when it ends (or its
    /// attempt fails), then reused; every lookup checks the whole id, so a late event about an ended connection
    /// finds nothing even when its slot holds a new one.
    private struct ConnectionTable {
        private var slots: [Connection?] = []
        /// The `raw` of the id each slot is reserved for; 0 while free.
        private var owners: [Int] = []
        private var freeSlots: [Int] = []
        private(set) var count = 0

        var isEmpty: Bool { count == 0 }

        /// The ids of the connections made and not ended.
        var ids: [ConnectionID] { slots.compactMap { $0?.id } }

        /// An id for a new connection, with a slot of its own.
        mutating func reserve(raw: Int) -> ConnectionID {
            precondition(raw != 0, "0 marks a free slot")
            if let slot = freeSlots.popLast() {
                owners[slot] = raw
                return ConnectionID(raw: raw, slot: slot)
            }
            slots.append(nil)
            owners.append(raw)
            return ConnectionID(raw: raw, slot: slots.count - 1)
        }

        /// Frees the slot of a connection that was never made, or has ended.
        mutating func free(_ id: ConnectionID) {
            guard id.slot < owners.count, owners[id.slot] == id.raw else { return }
            if slots[id.slot] != nil { count -= 1 }
            slots[id.slot] = nil
            owners[id.slot] = 0
            freeSlots.append(id.slot)
        }

        mutating func insert(_ connection: Connection) {
            let slot = connection.id.slot
            precondition(owners[slot] == connection.id.raw && slots[slot] == nil, "\(connection.id) has no free slot")
            slots[slot] = connection
            count += 1
        }

        mutating func remove(_ id: ConnectionID) -> Connection? {
            guard let connection = self[id] else { return nil }
            free(id)
            return connection
        }

        subscript(id: ConnectionID) -> Connection? {
            get {
                guard id.slot < slots.count, let connection = slots[id.slot], connection.id == id else { return nil }
                return connection
            }
            set {
                guard let newValue, self[id] != nil else { return }
                slots[id.slot] = newValue
            }
        }

        func outstanding(atSlot slot: Int) -> Int { slots[slot]!.outstanding }

        /// Counts a task outstanding on the connection in `slot`, and returns its id.
        mutating func take(_ slot: Int) -> ConnectionID {
            slots[slot]!.outstanding += 1
            return slots[slot]!.id
        }
    }
}
