import AiotaskProtocol
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A client of several aiotask servers: it keeps connections to each, balances tasks over them, takes a failing
/// server out and tries it again later.
///
/// ```swift
/// let pool = AiotaskClientPool(
///     endpoints: .addresses([.tcp(host: "10.0.0.11", port: 4242), .tcp(host: "10.0.0.12", port: 4242)]),
///     logger: logger
/// )
/// try await withThrowingDiscardingTaskGroup { group in
///     group.addTask { try await pool.run() }     // or a ServiceGroup entry
///     let result = try await pool.submit(Array("hello".utf8))
///     …
/// }
/// ```
///
/// It is a `Service`: ``run()`` makes and owns the connections, and returns once the pool has drained after a
/// graceful shutdown (tasks already sent finish; new ones fail with ``AiotaskClientError/Code/connectionLost``)
/// or at once when its task is cancelled (pending tasks fail with that code). Tasks submitted before ``run()``
/// starts wait for it.
///
/// - **Endpoints**: a list of addresses, or a host name resolved to all its addresses and resolved again every
///   ``Endpoints/host(_:port:every:)`` interval; an address that disappears takes no new task and its
///   connections close once their tasks are done.
/// - **Balancing**: ``Configuration/strategy`` (``BalancingStrategy``) chooses the endpoint of each task;
///   ``Configuration/connectionsPerEndpoint`` connections are kept to each.
/// - **Ejection**: an endpoint that cannot be connected, or whose connection drops, takes no new task; it is tried
///   again after ``Configuration/backoffBase``, doubling with each failure up to ``Configuration/backoffLimit``,
///   and takes tasks again once a connection is made.
/// - **`GOODBYE`**: a connection whose server stops takes no new task; the tasks sent there finish.
/// - **Failures**: as on a ``ReconnectingClient``, a task the server never started (refused with
///   `FailureReason.shuttingDown`, or not sent because the connection had just ended) goes to another endpoint,
///   until ``Configuration/retryLimit`` has passed since it was submitted. A task that was sent and then lost with
///   its connection may have run: it fails with ``AiotaskClientError/Code/connectionLost`` and is never sent
///   again. A task that finds no endpoint taking tasks waits for one, at most the retry limit.
///
/// It logs connections at `debug`, `GOODBYE` and an endpoint's return at `info`, an ejection at `warning`.
public final class AiotaskClientPool: TaskSubmitter, Service {
    /// Where the servers are.
    public struct Endpoints: Sendable {
        enum Source: Sendable {
            case addresses([ServerAddress])
            case host(String, port: Int, every: Duration)
        }

        let source: Source

        /// These servers, in this order (the order ``BalancingStrategy/firstAvailable`` and
        /// ``BalancingStrategy/roundRobin`` follow).
        public static func addresses(_ addresses: [ServerAddress]) -> Endpoints {
            Endpoints(source: .addresses(addresses))
        }

        /// Every address `host` resolves to (IPv4 and IPv6), on `port`, resolved again every `interval` (a DNS name
        /// with one record per server, such as a Kubernetes headless Service).
        public static func host(_ host: String, port: Int, every interval: Duration = .seconds(30)) -> Endpoints {
            Endpoints(source: .host(host, port: port, every: interval))
        }
    }

    /// How an ``AiotaskClientPool`` connects, balances and retries.
    public struct Configuration: Sendable {
        /// How many connections to keep to each endpoint; at least 1. One connection carries many tasks at once;
        /// more spread a busy client over more event loops (see docs/deployment.md, "Sizing").
        public var connectionsPerEndpoint: Int
        /// How the endpoint of each task is chosen.
        public var strategy: BalancingStrategy
        /// How long one connection attempt, handshake included, may take.
        public var connectTimeout: Duration
        /// How long a task may look for an endpoint that takes it, from its submission.
        public var retryLimit: Duration
        /// The wait before an ejected endpoint is tried again after its first failure; it doubles with each
        /// failure in a row.
        public var backoffBase: Duration
        /// The longest wait between two attempts at an ejected endpoint.
        public var backoffLimit: Duration
        /// The largest result to accept, announced to each server as by ``AiotaskClient``.
        public var maximumResultLength: Int
        /// The group connections run on; nil for `MultiThreadedEventLoopGroup.singleton`.
        public var eventLoopGroup: (any EventLoopGroup)?
        /// For `tls://` endpoints: trust roots, the name to check, the client's certificate.
        public var tls: ClientTLSConfiguration

        /// A configuration; the defaults suit servers restarted by systemd.
        public init(
            connectionsPerEndpoint: Int = 2,
            strategy: BalancingStrategy = .leastOutstanding,
            connectTimeout: Duration = .seconds(10),
            retryLimit: Duration = .seconds(60),
            backoffBase: Duration = .milliseconds(100),
            backoffLimit: Duration = .seconds(10),
            maximumResultLength: Int = AiotaskClient.defaultMaximumResultLength,
            eventLoopGroup: (any EventLoopGroup)? = nil,
            tls: ClientTLSConfiguration = ClientTLSConfiguration()
        ) {
            self.tls = tls
            self.connectionsPerEndpoint = connectionsPerEndpoint
            self.strategy = strategy
            self.connectTimeout = connectTimeout
            self.retryLimit = retryLimit
            self.backoffBase = backoffBase
            self.backoffLimit = backoffLimit
            self.maximumResultLength = maximumResultLength
            self.eventLoopGroup = eventLoopGroup
        }
    }

    /// The servers tasks go to.
    public let endpoints: Endpoints
    /// How the pool connects, balances and retries.
    public let configuration: Configuration
    private let logger: Logger

    private typealias Machine = PoolStateMachine

    /// The state machine, the connections it names, and the tasks waiting for one.
    private struct State {
        var machine: Machine
        var clients = ClientTable()
        var waiting: [Machine.WaiterID: CheckedContinuation<Machine.ConnectionID, any Error>] = [:]
        var isRunning = false
    }

    /// What ``run()`` does in a child task of its own.
    private enum Work: Sendable {
        case connect(Machine.ConnectionID, Machine.EndpointID, ServerAddress)
        case retry(Machine.EndpointID, after: Duration)
        case close(AiotaskClient)
        case waitLimit(Machine.WaiterID, ContinuousClock.Instant)
    }

    /// The connections made, by ``PoolStateMachine/ConnectionID/slot``: finding a task's connection hashes nothing.
    private struct ClientTable {
        private var slots: [(id: Machine.ConnectionID, client: AiotaskClient)?] = []

        var all: [AiotaskClient] { slots.compactMap { $0?.client } }

        subscript(id: Machine.ConnectionID) -> AiotaskClient? {
            get {
                guard id.slot < slots.count, let entry = slots[id.slot], entry.id == id else { return nil }
                return entry.client
            }
            set {
                if let newValue {
                    while slots.count <= id.slot { slots.append(nil) }
                    slots[id.slot] = (id, newValue)
                } else if id.slot < slots.count, slots[id.slot]?.id == id {
                    slots[id.slot] = nil
                }
            }
        }
    }

    private let state: NIOLockedValueBox<State>
    private let work: AsyncStream<Work>
    private let workContinuation: AsyncStream<Work>.Continuation

    /// A pool of connections to `endpoints`. Nothing is connected until ``run()`` starts.
    public init(endpoints: Endpoints, configuration: Configuration = Configuration(), logger: Logger) {
        precondition(configuration.connectionsPerEndpoint >= 1, "connectionsPerEndpoint must be at least 1")
        self.endpoints = endpoints
        self.configuration = configuration
        self.logger = logger
        let addresses: [ServerAddress]
        switch endpoints.source {
        case .addresses(let list): addresses = list
        case .host: addresses = []
        }
        let settings = Machine.Settings(
            connectionsPerEndpoint: configuration.connectionsPerEndpoint,
            strategy: configuration.strategy,
            backoffBase: configuration.backoffBase,
            backoffLimit: configuration.backoffLimit
        )
        state = NIOLockedValueBox(State(machine: Machine(addresses: addresses, settings: settings)))
        (work, workContinuation) = AsyncStream.makeStream()
    }

    /// A pool of connections to `addresses`; see ``init(endpoints:configuration:logger:)``.
    public convenience init(
        addresses: [ServerAddress],
        configuration: Configuration = Configuration(),
        logger: Logger
    ) {
        self.init(endpoints: .addresses(addresses), configuration: configuration, logger: logger)
    }

    // MARK: Running

    /// Connects to the endpoints and keeps the connections until the service shuts down: after a graceful
    /// shutdown it returns once the tasks sent have finished; cancelled, it closes every connection at once.
    /// Call it once.
    public func run() async throws {
        let actions = state.withLockedValue { state in
            precondition(!state.isRunning, "AiotaskClientPool.run() is called once")
            state.isRunning = true
            return state.machine.start()
        }
        logger.debug("client pool starting", metadata: ["endpoints": "\(describeEndpoints)"])
        perform(actions)
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await withDiscardingTaskGroup { group in
                    if case .host(let host, let port, let interval) = endpoints.source {
                        group.addTask { await self.resolveRepeatedly(host, port: port, every: interval) }
                    }
                    for await item in work {
                        group.addTask { await self.carryOut(item) }
                    }
                    // Finished: the resolver stops too.
                    group.cancelAll()
                }
            } onGracefulShutdown: {
                self.shutDown()
            }
        } onCancel: {
            self.closeEverything()
        }
        logger.debug("client pool stopped")
    }

    /// Stops taking tasks; ``run()`` returns once the tasks sent have finished.
    private func shutDown() {
        perform(state.withLockedValue { $0.machine.shutDown() })
    }

    /// Cancelled: every connection closes now, its pending tasks fail with
    /// ``AiotaskClientError/Code/connectionLost``.
    private func closeEverything() {
        workContinuation.finish()
        let (actions, clients) = state.withLockedValue { state in
            (state.machine.shutDown(), state.clients.all)
        }
        perform(actions)
        for client in clients { Task { try? await client.close() } }
    }

    private var describeEndpoints: String {
        switch endpoints.source {
        case .addresses(let addresses): addresses.map { "\($0)" }.joined(separator: ",")
        case .host(let host, let port, _): "\(host):\(port)"
        }
    }

    /// The endpoints that take tasks now, in order: connected, not ejected, not stopping.
    public var endpointsTakingTasks: [ServerAddress] {
        state.withLockedValue { state in
            zip(state.machine.addresses, state.machine.takesTasksPerEndpoint).compactMap { $1 ? $0 : nil }
        }
    }

    /// The tasks sent and not yet answered, over all endpoints.
    public var outstandingTasks: Int {
        state.withLockedValue { $0.machine.outstandingPerEndpoint.reduce(0, +) }
    }

    // MARK: Tasks

    /// Runs a task on one of the endpoints and returns its result, sending it to another endpoint while no server
    /// has started it (see ``AiotaskClientPool``).
    ///
    /// - Throws: ``TaskFailure`` when the task ends without a result; ``AiotaskClientError`` when the connection
    ///   it was sent on is lost (``AiotaskClientError/Code/connectionLost``), when no endpoint took it within
    ///   ``Configuration/retryLimit``, or when the pool is shutting down.
    ///
    /// Traced like ``AiotaskClient/submit(_:timeout:)-(ByteBuffer,_)``: one client span around all the attempts,
    /// each of which carries its trace context.
    public func submit(_ payload: ByteBuffer, timeout: Duration? = nil) async throws -> ByteBuffer {
        try await submit(payload, timeout: timeout, traceParent: nil)
    }

    /// Runs a task that belongs to the trace `traceParent` says (nil: the caller's, as
    /// ``submit(_:timeout:)-(ByteBuffer,_)`` does), sending it again, with the same trace context, while no server
    /// has started it.
    public func submit(
        _ payload: ByteBuffer,
        timeout: Duration? = nil,
        traceParent: TraceParent?
    ) async throws -> ByteBuffer {
        try await TracePropagation.submit(explicit: traceParent) { trace in
            try await submit(payload, timeout: timeout, trace: trace)
        }
    }

    private func submit(_ payload: ByteBuffer, timeout: Duration?, trace: OutboundTrace?) async throws -> ByteBuffer {
        let deadline = ContinuousClock.now + configuration.retryLimit
        while true {
            let (id, client) = try await acquire(before: deadline)
            do {
                let result = try await client.submit(payload, timeout: timeout, trace: trace, reportingUnsent: true)
                release(id)
                return result
            } catch let unsent as UnsentTask {
                // Not sent: the connection had ended, or its server had said GOODBYE.
                refused(id)
                guard ContinuousClock.now < deadline else { throw unsent.error }
            } catch let failure as TaskFailure where failure.reason == .shuttingDown {
                // Refused by a stopping server: never started.
                refused(id)
                guard ContinuousClock.now < deadline else { throw failure }
            } catch {
                release(id)
                throw error
            }
        }
    }

    /// A connection for one task, counted outstanding on it; waits for one while no endpoint takes tasks.
    private func acquire(
        before deadline: ContinuousClock.Instant
    ) async throws -> (
        Machine.ConnectionID, AiotaskClient
    ) {
        while true {
            // The usual case takes the lock once, and makes no continuation.
            let found: (Machine.Acquired, AiotaskClient?) = state.withLockedValue { state in
                let acquired = state.machine.acquire(nil)
                guard case .connection(let id) = acquired else { return (acquired, nil) }
                return (acquired, state.clients[id])
            }
            let id: Machine.ConnectionID
            switch found.0 {
            case .connection(let connection):
                if let client = found.1 { return (connection, client) }
                id = connection
            case .fail(let error):
                throw error
            case .wait:
                id = try await wait(until: deadline)
            }
            if let client = state.withLockedValue({ $0.clients[id] }) { return (id, client) }
            // Closed between the choice and now: its outstanding count goes, and another is chosen.
            release(id)
        }
    }

    /// Queues the task for a connection; the queueing and the storing of its continuation are one step, so that
    /// no ``PoolStateMachine/Action/resume(_:_:)`` can come in between.
    private func wait(until deadline: ContinuousClock.Instant) async throws -> Machine.ConnectionID {
        let waiter = state.withLockedValue { $0.machine.makeWaiterID() }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let outcome: Result<Machine.ConnectionID, any Error>? = state.withLockedValue { state in
                    switch state.machine.acquire(waiter) {
                    case .connection(let id): return .success(id)
                    case .fail(let error): return .failure(error)
                    case .wait:
                        state.waiting[waiter] = continuation
                        return nil
                    }
                }
                if let outcome {
                    continuation.resume(with: outcome)
                    return
                }
                workContinuation.yield(.waitLimit(waiter, deadline))
                // A cancellation before the task was queued found no waiter to stop.
                if Task.isCancelled { stopWaiting(waiter, error: CancellationError()) }
            }
        } onCancel: {
            self.stopWaiting(waiter, error: CancellationError())
        }
    }

    /// Ends the wait of `waiter` unless a connection was found for it already: with `error`, or the machine's own
    /// (the last connect error) when nil or not an ``AiotaskClientError`` (a cancellation keeps its own error).
    private func stopWaiting(_ waiter: Machine.WaiterID, error: (any Error)?) {
        let clientError = error as? AiotaskClientError
        let keepsOwnError = error != nil && clientError == nil
        var cancelled: CheckedContinuation<Machine.ConnectionID, any Error>?
        let actions: [Machine.Action] = state.withLockedValue { state in
            let actions = state.machine.stopWaiting(waiter, error: clientError)
            guard keepsOwnError, !actions.isEmpty else { return actions }
            cancelled = state.waiting.removeValue(forKey: waiter)
            return []
        }
        if let cancelled, let error { cancelled.resume(throwing: error) }
        perform(actions)
    }

    private func release(_ id: Machine.ConnectionID) {
        perform(state.withLockedValue { $0.machine.release(id) })
    }

    private func refused(_ id: Machine.ConnectionID) {
        perform(
            state.withLockedValue { state in
                state.machine.refused(id) + state.machine.release(id)
            }
        )
    }

    // MARK: Carrying out actions

    private func perform(_ actions: [Machine.Action]) {
        for action in actions {
            switch action {
            case .connect(let id, let endpoint, let address):
                workContinuation.yield(.connect(id, endpoint, address))
            case .scheduleRetry(let endpoint, let delay):
                workContinuation.yield(.retry(endpoint, after: delay))
            case .close(let id):
                guard let client = state.withLockedValue({ $0.clients[id] }) else { break }
                if case .terminated = workContinuation.yield(.close(client)) {
                    // run() was cancelled: nothing carries out work any more.
                    Task { try? await client.close() }
                }
            case .resume(let waiter, let id):
                state.withLockedValue { $0.waiting.removeValue(forKey: waiter) }?.resume(returning: id)
            case .fail(let waiter, let error):
                state.withLockedValue { $0.waiting.removeValue(forKey: waiter) }?.resume(throwing: error)
            case .ejected(_, let address, let failures, let delay, let expected, let error):
                // After GOODBYE a server that cannot be reached is restarting or was stopped on purpose.
                logger.log(
                    level: expected ? .info : .warning,
                    "endpoint ejected",
                    metadata: [
                        "endpoint": "\(address)", "failures": "\(failures)", "retry_in": "\(delay)",
                        "error": "\(error)",
                    ]
                )
            case .restored(_, let address):
                logger.info("endpoint takes tasks again", metadata: ["endpoint": "\(address)"])
            case .finished:
                workContinuation.finish()
            }
        }
    }

    private func carryOut(_ item: Work) async {
        switch item {
        case .connect(let id, let endpoint, let address):
            await connect(id, endpoint: endpoint, to: address)
        case .retry(let endpoint, let delay):
            try? await Task.sleep(for: delay)
            perform(state.withLockedValue { $0.machine.retryDue(endpoint) })
        case .close(let client):
            try? await client.close()
        case .waitLimit(let waiter, let deadline):
            try? await Task.sleep(until: deadline)
            stopWaiting(waiter, error: nil)
        }
    }

    /// Makes a connection and watches it until it closes.
    private func connect(_ id: Machine.ConnectionID, endpoint: Machine.EndpointID, to address: ServerAddress) async {
        let client: AiotaskClient
        do {
            client = try await AiotaskClient.connect(
                to: address,
                eventLoopGroup: configuration.eventLoopGroup,
                connectTimeout: configuration.connectTimeout,
                maximumResultLength: configuration.maximumResultLength,
                tls: configuration.tls
            )
        } catch {
            let error =
                error as? AiotaskClientError ?? AiotaskClientError(.connectFailed, reason: "\(address): \(error)")
            logger.debug("cannot connect", metadata: ["endpoint": "\(address)", "error": "\(error)"])
            perform(state.withLockedValue { $0.machine.connectFailed(id, endpoint: endpoint, error: error) })
            return
        }
        logger.debug("connected", metadata: ["endpoint": "\(address)"])
        perform(
            state.withLockedValue { state in
                state.clients[id] = client
                return state.machine.connected(id, endpoint: endpoint)
            }
        )
        let end: ClientChannelHandler.EndOfTasks
        do {
            end = try await client.endOfTasks.get()
        } catch {
            end = .closed(AiotaskClientError(.connectionLost, reason: "\(error)"))
        }
        var closedBy = AiotaskClientError(.connectionLost, reason: "\(address): the server closed the connection")
        switch end {
        case .goodbye(let message):
            // The state first, so that when the entry says "no new tasks there" none can go there.
            perform(state.withLockedValue { $0.machine.goodbye(id) })
            logger.info(
                "server stopping, no new tasks there",
                metadata: ["endpoint": "\(address)", "goodbye": "\(message)"]
            )
        case .closed(let error):
            closedBy = AiotaskClientError(error.code, reason: "\(address): \(error.reason)")
        }
        try? await client.closeFuture.get()
        perform(
            state.withLockedValue { state in
                state.clients[id] = nil
                return state.machine.closed(id, error: closedBy)
            }
        )
    }

    // MARK: Resolving

    private func resolveRepeatedly(_ host: String, port: Int, every interval: Duration) async {
        while !Task.isCancelled {
            do {
                let addresses = try await Self.resolve(host, port: port)
                perform(state.withLockedValue { $0.machine.resolved(addresses) })
            } catch {
                logger.warning(
                    "cannot resolve the endpoints' host name; the last addresses stay",
                    metadata: ["host": "\(host)", "error": "\(error)"]
                )
            }
            try? await Task.sleep(for: interval)
        }
    }

    /// Every address of `host`, in the resolver's order, without repeats.
    static func resolve(_ host: String, port: Int) async throws -> [ServerAddress] {
        try await NIOThreadPool.singleton.runIfActive {
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var list: UnsafeMutablePointer<addrinfo>?
            let status = getaddrinfo(host, nil, &hints, &list)
            guard status == 0 else {
                throw AiotaskClientError(
                    .connectFailed,
                    reason: "cannot resolve \(host): \(String(cString: gai_strerror(status)))"
                )
            }
            defer { freeaddrinfo(list) }
            var addresses: [ServerAddress] = []
            var entry = list
            while let current = entry {
                var name = [CChar](repeating: 0, count: Int(NI_MAXHOST))
                if getnameinfo(
                    current.pointee.ai_addr,
                    current.pointee.ai_addrlen,
                    &name,
                    socklen_t(name.count),
                    nil,
                    0,
                    NI_NUMERICHOST
                ) == 0 {
                    let text = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                    let address = ServerAddress.tcp(host: text, port: port)
                    if !addresses.contains(address) { addresses.append(address) }
                }
                entry = current.pointee.ai_next
            }
            return addresses
        }
    }
}
