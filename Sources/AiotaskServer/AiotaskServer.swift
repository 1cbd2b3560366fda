import AiotaskProtocol
import AiotaskTransport
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// An aiotask worker: its listening sockets and its supervised pool, all on one event loop.
///
/// It is a `Service` of swift-service-lifecycle: ``run()`` starts it if it is not started yet, serves until
/// graceful shutdown or cancellation, then drains and returns, so an application can run it in its own
/// `ServiceGroup` beside its other services. ``start(configuration:logger:eventLoop:)`` and ``shutdown()`` do the
/// two halves by hand, on the same path:
///
/// ```swift
/// let server = try await AiotaskServer.start(configuration: configuration, logger: logger)
/// // … serve …
/// try await server.shutdown()
/// ```
public final class AiotaskServer: Sendable {
    /// Where the server is in its life. Moves only forward: created → starting → running → stopping → stopped (a
    /// failed start, or a shutdown before any start, goes straight to stopped).
    private enum Lifecycle {
        case created
        case starting
        case running(Running)
        case stopping(Running)
        case stopped(Running?)

        /// The pool and sockets, once started; kept while stopping and after, so that statistics stay readable.
        var running: Running? {
            switch self {
            case .created, .starting: nil
            case .running(let running), .stopping(let running): running
            case .stopped(let running): running
            }
        }
    }

    /// What a started server holds.
    private struct Running: Sendable {
        let supervisor: NIOLoopBound<Supervisor>
        let listeners: [any Channel]
        /// The agent check's listeners: closed only once the drain is over, so that HAProxy hears `drain` during it.
        let agentListeners: [any Channel]
        let ownedSocketPaths: [String]
        let localAddresses: [SocketAddress]
        /// The metrics listener, when one is configured.
        let metrics: MetricsListener?
        /// What the `tls://` listeners serve new connections with; nil without one.
        let tls: TLSListenerState?
    }

    /// What ``shutdown()`` is to do, decided under the lock.
    private enum ShutdownAction {
        case drain(Running)
        case waitForStart
        case waitForDrain
    }

    private let configuration: ServerConfiguration
    private let loop: any EventLoop
    private let logger: Logger
    private let lifecycle = NIOLockedValueBox(Lifecycle.created)
    /// Signalled by graceful shutdown or cancellation of ``run()``: what ``run()`` serves until.
    let stopRequested = OneShotEvent()
    /// Signalled once the start has succeeded or failed.
    private let startFinished = OneShotEvent()
    /// Signalled once the server has drained and stopped its pool (or will never start).
    private let stopped = OneShotEvent()

    /// The local addresses the server listens on, in the order of the configuration (adopted sockets last); empty
    /// until it has started.
    public var localAddresses: [SocketAddress] {
        lifecycle.withLockedValue { $0.running?.localAddresses ?? [] }
    }

    /// The local addresses where the agent check is answered (``ServerConfiguration/agentListenAddresses``); empty
    /// until the server has started.
    public var agentAddresses: [SocketAddress] {
        lifecycle.withLockedValue { $0.running?.agentListeners.compactMap(\.localAddress) ?? [] }
    }

    /// The local addresses of the metrics listener (configured addresses first, adopted sockets last); empty when
    /// there is none or the server has not started.
    public var metricsLocalAddresses: [SocketAddress] {
        lifecycle.withLockedValue { $0.running?.metrics?.localAddresses ?? [] }
    }

    /// A server that does nothing until ``run()`` starts it.
    ///
    /// - Parameters:
    ///   - configuration: the addresses to listen on, the handler the pool runs, and the limits.
    ///   - logger: where the server and its pool log.
    ///   - eventLoop: the loop everything runs on; by default one of NIO's shared loops.
    public init(configuration: ServerConfiguration, logger: Logger, eventLoop: (any EventLoop)? = nil) {
        self.configuration = configuration
        self.loop = eventLoop ?? MultiThreadedEventLoopGroup.singleton.next()
        self.logger = logger
    }

    /// Starts the pool, waits until its processes are up, then starts listening.
    ///
    /// - Parameters:
    ///   - configuration: the addresses to listen on, the handler the pool runs, and the limits.
    ///   - logger: where the server and its pool log.
    ///   - eventLoop: the loop everything runs on; by default one of NIO's shared loops.
    /// - Throws: ``ServerError`` when there is nothing to listen on or an address cannot be listened on; the
    ///   error of the pool when its processes cannot start.
    public static func start(
        configuration: ServerConfiguration,
        logger: Logger,
        eventLoop: (any EventLoop)? = nil
    ) async throws -> AiotaskServer {
        let server = AiotaskServer(configuration: configuration, logger: logger, eventLoop: eventLoop)
        try await server.startIfCreated()
        return server
    }

    /// Starts the server unless it was started (or stopped) before.
    func startIfCreated() async throws {
        let isFirst = lifecycle.withLockedValue { state -> Bool in
            guard case .created = state else { return false }
            state = .starting
            return true
        }
        guard isFirst else { return }
        defer { startFinished.signal() }
        do {
            let running = try await Self.listen(configuration: configuration, loop: loop, logger: logger)
            lifecycle.withLockedValue { $0 = .running(running) }
        } catch {
            lifecycle.withLockedValue { $0 = .stopped(nil) }
            stopped.signal()
            throw error
        }
    }

    private static func listen(
        configuration: ServerConfiguration,
        loop: any EventLoop,
        logger: Logger
    ) async throws -> Running {
        guard !configuration.listenAddresses.isEmpty || !configuration.adoptedSockets.isEmpty else {
            throw ServerError.nothingToListenOn
        }
        // Before any process starts: a path another server listens on is refused, never taken over.
        for case .unix(let path) in configuration.listenAddresses {
            do {
                try UnixSocketPath.prepareForListening(at: path)
            } catch {
                throw ServerError.cannotListen(ListenError(address: "unix:\(path)", error: error))
            }
        }
        // Before any process starts too: TLS material that cannot serve is a configuration error.
        var tls: TLSListenerState?
        let tlsListener =
            configuration.listenAddresses.first(where: { if case .tls = $0 { true } else { false } })
            .map { "\($0)" }
            ?? configuration.adoptedSockets.first(where: \.usesTLS).map { "adopted socket \($0.name)" }
        if let tlsListener {
            do {
                tls = try TLSListenerState(configuration.tls)
            } catch {
                throw ServerError.cannotListen(ListenError(address: tlsListener, error: error))
            }
        }
        let supervisor = try await loop.submit {
            NIOLoopBound(Supervisor(loop: loop, configuration: configuration, logger: logger), eventLoop: loop)
        }.get()
        try await loop.flatSubmit { supervisor.value.start() }.get()

        var listeners: [any Channel] = []
        var agentListeners: [any Channel] = []
        var ownedSocketPaths: [String] = []
        // The address being bound, named in the error if that fails.
        var binding = ""
        do {
            let bootstrap = makeBootstrap(
                loop: loop,
                supervisor: supervisor,
                configuration: configuration,
                logger: logger
            )
            let tlsBootstrap = tls.map { makeTLSBootstrap(loop: loop, supervisor: supervisor, tls: $0, logger: logger) }
            for address in configuration.listenAddresses {
                binding = "\(address)"
                switch address {
                case .tcp(let host, let port):
                    listeners.append(try await bootstrap.bind(host: host, port: port).get())
                case .tls(let host, let port):
                    guard let tlsBootstrap else { preconditionFailure("a tls:// address without its TLS state") }
                    listeners.append(try await tlsBootstrap.bind(host: host, port: port).get())
                case .unix(let path):
                    listeners.append(
                        try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: false).get()
                    )
                    ownedSocketPaths.append(path)
                }
                logger.info("listening on \(address)")
            }
            for socket in configuration.adoptedSockets {
                binding = "adopted socket \(socket.name) (fd \(socket.descriptor))"
                if socket.usesTLS {
                    guard let tlsBootstrap else { preconditionFailure("a TLS socket without its TLS state") }
                    listeners.append(try await tlsBootstrap.withBoundSocket(socket.descriptor).get())
                    logger.info("serving adopted socket \(socket.name) (fd \(socket.descriptor)) over TLS")
                } else {
                    listeners.append(try await bootstrap.withBoundSocket(socket.descriptor).get())
                    logger.info("serving adopted socket \(socket.name) (fd \(socket.descriptor))")
                }
            }
            // After NIO's own accept handler, whose errors travel towards the pipeline's tail.
            for listener in listeners {
                try await listener.pipeline.addHandler(AcceptErrorLogger(logger: logger)).get()
            }
            let agentBootstrap = makeAgentBootstrap(loop: loop, supervisor: supervisor, logger: logger)
            for address in configuration.agentListenAddresses {
                binding = "agent check \(address)"
                guard case .tcp(let host, let port) = address else {
                    throw AgentListenError.notTCP
                }
                let listener = try await agentBootstrap.bind(host: host, port: port).get()
                agentListeners.append(listener)
                // The bound port, for a configured port 0.
                let bound = listener.localAddress.flatMap { local in
                    local.port.map { ServerAddress.tcp(host: local.ipAddress ?? host, port: $0) }
                }
                logger.info("answering HAProxy's agent check on \(bound ?? address)")
            }
        } catch {
            for listener in listeners + agentListeners { try? await listener.close() }
            // Nothing was accepted, so nothing drains: the pool just stops, without a "draining" log.
            try? await loop.flatSubmit { supervisor.value.shutdown(drainTimeout: .zero, announce: false) }.get()
            throw ServerError.cannotListen(ListenError(address: binding, error: error))
        }
        let metrics: MetricsListener?
        do {
            metrics = try await MetricsListener.start(
                addresses: configuration.metricsListenAddresses,
                adopted: configuration.metricsAdoptedSockets,
                limits: configuration.metricsLimits,
                logger: logger,
                render: { format in Self.renderMetrics(supervisor: supervisor, loop: loop, format: format) }
            )
        } catch {
            for listener in listeners + agentListeners { try? await listener.close() }
            try? await loop.flatSubmit { supervisor.value.shutdown(drainTimeout: .zero, announce: false) }.get()
            throw error
        }
        return Running(
            supervisor: supervisor,
            listeners: listeners,
            agentListeners: agentListeners,
            ownedSocketPaths: ownedSocketPaths,
            localAddresses: listeners.compactMap(\.localAddress),
            metrics: metrics,
            tls: tls
        )
    }

    /// The options every listener of clients shares, plain or TLS: a deep backlog, reused addresses, no half-closed
    /// connections, and the allocator whose large buffers the kernel copies fast.
    private static func clientListener(on loop: any EventLoop) -> ServerBootstrap {
        ServerBootstrap(group: loop, childGroup: loop)
            // Out of descriptors, `accept` fails until one is closed: NIO would retry at once, in a loop that
            // spins a core (and, with ``AcceptErrorLogger``, floods the journal). It waits a second instead, and
            // passes the error on to be logged.
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        AcceptBackoffHandler(shouldForwardIOErrorCaught: true)
                    )
                }
            }
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: false)
            .childChannelOption(.allocator, value: FastCopyBuffers.allocator)
    }

    /// Sends a TCP connection's small frames at once (`TCP_NODELAY`); a Unix connection has no such option.
    ///
    /// `.tcpOption`, never `.socketOption`: at the socket level the same number is `SO_DEBUG`, which needs
    /// `CAP_NET_ADMIN`, so a daemon without it (any non-root user, the packaged service) would close every
    /// TCP connection it accepted.
    private static func disableNagle(on channel: any Channel) throws {
        guard channel.localAddress?.protocol != .unix else { return }
        try channel.syncOptions?.setOption(.tcpOption(.tcp_nodelay), value: 1)
    }

    private static func makeBootstrap(
        loop: any EventLoop,
        supervisor: NIOLoopBound<Supervisor>,
        configuration: ServerConfiguration,
        logger: Logger
    ) -> ServerBootstrap {
        clientListener(on: loop)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try disableNagle(on: channel)
                    let reads = DirectFrameReads()
                    try reads.install(on: channel)
                    try channel.pipeline.syncOperations.addHandler(
                        ConnectionHandler(supervisor: supervisor.value, logger: logger, readWindow: reads.window)
                    )
                }
            }
    }

    /// The bootstrap of a `tls://` listener: TLS first, then ``TLSAdmissionHandler``, which adds the connection's
    /// ``ConnectionHandler`` once the handshake is over and the client let in. No direct frame reads: the bytes a
    /// frame is made of come out of TLS, not out of the socket.
    private static func makeTLSBootstrap(
        loop: any EventLoop,
        supervisor: NIOLoopBound<Supervisor>,
        tls: TLSListenerState,
        logger: Logger
    ) -> ServerBootstrap {
        clientListener(on: loop)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try disableNagle(on: channel)
                    try channel.syncOptions?.setOption(.recvAllocator, value: DirectFrameReads.largeReads)
                    let current = tls.forNewConnection
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: current.context))
                    try channel.pipeline.syncOperations.addHandler(
                        TLSAdmissionHandler(
                            supervisor: supervisor.value,
                            logger: logger,
                            allowedClients: current.allowedClients,
                            handshakeTimeout: current.handshakeTimeout
                        )
                    )
                }
            }
    }

    private static func makeAgentBootstrap(
        loop: any EventLoop,
        supervisor: NIOLoopBound<Supervisor>,
        logger: Logger
    ) -> ServerBootstrap {
        ServerBootstrap(group: loop, childGroup: loop)
            .serverChannelOption(.backlog, value: 128)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: false)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        AgentCheckHandler(supervisor: supervisor.value, logger: logger)
                    )
                }
            }
    }

    /// The exposition of a scrape: the counters and live gauges copied in one hop to the server's loop, then
    /// `/proc` read and the text rendered on the caller's side of the hop (the metrics listener's loop).
    private static func renderMetrics(
        supervisor: NIOLoopBound<Supervisor>,
        loop: any EventLoop,
        format: MetricsExposition.Format
    ) -> EventLoopFuture<[UInt8]> {
        loop.submit { supervisor.value.metricsSnapshot() }.map { snapshot in
            var snapshot = snapshot
            snapshot.readProcessFigures()
            return MetricsExposition.render(snapshot, format: format)
        }
    }

    /// The counters and live gauges, copied in one hop to the server's loop, with `/proc` read after it.
    func metricsSnapshot() async throws -> MetricsSnapshot {
        let supervisor = try started().supervisor
        var snapshot = try await loop.submit { supervisor.value.metricsSnapshot() }.get()
        snapshot.readProcessFigures()
        return snapshot
    }

    /// The text a scrape of the metrics listener answers now, in the Prometheus text format or OpenMetrics; for
    /// an application that serves it on a server of its own.
    public func metricsExposition(openMetrics: Bool = false) async throws -> String {
        let snapshot = try await metricsSnapshot()
        return String(
            decoding: MetricsExposition.render(snapshot, format: openMetrics ? .openMetrics : .prometheus),
            as: UTF8.self
        )
    }

    /// The pool and sockets of a started server.
    ///
    /// - Throws: ``ServerError/notStarted`` before the server has started.
    private func started() throws(ServerError) -> Running {
        guard let running = lifecycle.withLockedValue({ $0.running }) else { throw ServerError.notStarted }
        return running
    }

    /// The server's live statistics.
    public func info() async throws -> ServerInfo {
        let supervisor = try started().supervisor
        return try await loop.submit { supervisor.value.info() }.get()
    }

    /// The pool's live state, slot by slot, with the statistics: what `POOL` carries.
    public func poolStatus() async throws -> PoolStatus {
        let supervisor = try started().supervisor
        return try await loop.submit { supervisor.value.poolStatus() }.get()
    }

    /// Applies a new configuration to the running server without closing its sockets or losing a task
    /// (see `docs` on reload: the pool is rolled over to the new handler and size). Listening addresses and
    /// adopted sockets are kept as they are.
    ///
    /// The `tls://` listeners serve new connections with the TLS material of `configuration`
    /// (``ServerConfiguration/tls``); connections already open keep theirs. Material that cannot serve throws
    /// ``ServerTLSError`` before anything changes.
    public func reload(_ configuration: ServerConfiguration) async throws {
        let running = try started()
        try running.tls?.replace(with: configuration.tls)
        try await loop.submit { [supervisor = running.supervisor] in supervisor.value.reload(configuration) }.get()
    }

    /// Whether the event loop answers within `limit` and the pool keeps at least one process alive.
    public func isHealthy(within limit: Duration) async -> Bool {
        guard let supervisor = try? started().supervisor else { return false }
        let answer = loop.submit { supervisor.value.isHealthy }
        // The timer must not run on the loop being checked: a stuck loop would never fire it.
        let once = OneShotContinuation<Bool>()
        return await withCheckedContinuation { continuation in
            once.set(continuation)
            let timer = Task {
                guard (try? await Task.sleep(for: limit)) != nil else { return }
                once.resume(returning: false)
            }
            answer.whenComplete { result in
                once.resume(returning: (try? result.get()) ?? false)
                timer.cancel()
            }
        }
    }

    /// A one-line summary of the pool, queue and counters, for `systemctl status`.
    public func statusLine() async throws -> String {
        let supervisor = try started().supervisor
        return try await loop.submit { supervisor.value.statusLine }.get()
    }

    #if DEBUG
        /// Blocks the event loop for an hour: lets tests prove that a stuck loop stops the watchdog. Debug builds only.
        public func debugStallEventLoop() {
            loop.execute { sleep(3600) }
        }
    #endif

    /// How many tasks went to the current pool processes through shared memory, and how many arena regions they
    /// hold now.
    func sharedPayloadUsage() async throws -> (tasks: Int, regionsInUse: Int) {
        let supervisor = try started().supervisor
        return try await loop.submit { supervisor.value.sharedPayloadUsage }.get()
    }

    /// The number of tasks queued or running.
    public func tasksInFlight() async throws -> Int {
        let supervisor = try started().supervisor
        return try await loop.submit { supervisor.value.tasksInFlight }.get()
    }

    /// Stops listening, says `GOODBYE` to the extended clients, drains the tasks in flight (up to the configured
    /// drain timeout), fails what is left with `shuttingDown` or `interrupted`, and stops every pool process.
    ///
    /// The path ``run()`` ends with. Called again, or while ``run()`` drains, it waits for that drain; while the
    /// server starts, it waits for the start, then drains; on a server never started, it only makes sure the server
    /// never starts. A ``run()`` serving the server goes on until graceful shutdown or cancellation (a service that
    /// returned earlier would end its group), then returns at once.
    public func shutdown() async throws {
        let action = lifecycle.withLockedValue { state -> ShutdownAction in
            switch state {
            case .created:
                state = .stopped(nil)
                stopped.signal()
                return .waitForDrain
            case .running(let running):
                state = .stopping(running)
                return .drain(running)
            case .starting:
                return .waitForStart
            case .stopping, .stopped:
                return .waitForDrain
            }
        }
        let running: Running
        switch action {
        case .drain(let toDrain):
            running = toDrain
        case .waitForStart:
            await startFinished.wait()
            return try await shutdown()
        case .waitForDrain:
            await stopped.wait()
            return
        }
        // Whatever happens below, the server is stopped for everyone waiting on it.
        defer {
            lifecycle.withLockedValue { $0 = .stopped(running) }
            stopped.signal()
        }
        for listener in running.listeners { try? await listener.close() }
        for path in running.ownedSocketPaths { unlink(path) }
        // The metrics listener serves through the drain, so that it can be watched, and stops last.
        do {
            try await loop.flatSubmit { [supervisor = running.supervisor, drainTimeout = configuration.drainTimeout] in
                supervisor.value.shutdown(drainTimeout: drainTimeout)
            }.get()
        } catch {
            for listener in running.agentListeners { try? await listener.close() }
            await running.metrics?.stop()
            throw error
        }
        for listener in running.agentListeners { try? await listener.close() }
        await running.metrics?.stop()
        logger.info("worker stopped")
    }
}

/// Why a server could not start: a code to switch on, and for a socket that could not be listened on, which
/// address and why (``listenError``).
public struct ServerError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of problem this is.
    public struct Code: Hashable, Sendable {
        private enum Base: Hashable, Sendable {
            case nothingToListenOn, cannotListen, notStarted
        }

        private let base: Base

        private init(_ base: Base) {
            self.base = base
        }

        /// The configuration names no address and no socket was passed in.
        public static let nothingToListenOn = Code(.nothingToListenOn)
        /// Binding or adopting a socket failed.
        public static let cannotListen = Code(.cannotListen)
        /// The server was asked for something only a started server has; ``AiotaskServer/run()`` has not started
        /// it yet.
        public static let notStarted = Code(.notStarted)
    }

    public var code: Code
    /// For ``Code/cannotListen``: the address, the errno and the reason.
    public var listenError: ListenError?

    /// The configuration names no address and no socket was passed in.
    public static let nothingToListenOn = ServerError(code: .nothingToListenOn, listenError: nil)

    /// The server has not started yet.
    public static let notStarted = ServerError(code: .notStarted, listenError: nil)

    /// Binding or adopting a socket failed: which address, and why.
    public static func cannotListen(_ error: ListenError) -> ServerError {
        ServerError(code: .cannotListen, listenError: error)
    }

    public var description: String {
        if let listenError { return listenError.description }
        if code == .notStarted { return "the server has not started" }
        return "no address to listen on: give --listen ADDRESS, or pass sockets"
    }
}

/// Why an agent-check address cannot be listened on.
struct AgentListenError: Error, CustomStringConvertible {
    static let notTCP = AgentListenError()

    var description: String { "the agent check takes a TCP address (tcp://HOST:PORT): HAProxy's agent speaks TCP" }
}

/// A continuation resumed by whichever of several racing events comes first.
private final class OneShotContinuation<Value: Sendable>: Sendable {
    private let continuation = NIOLockedValueBox<CheckedContinuation<Value, Never>?>(nil)

    func set(_ continuation: CheckedContinuation<Value, Never>) {
        self.continuation.withLockedValue { $0 = continuation }
    }

    func resume(returning value: Value) {
        continuation.withLockedValue { $0.take() }?.resume(returning: value)
    }
}
