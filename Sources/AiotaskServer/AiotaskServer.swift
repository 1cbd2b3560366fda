import AiotaskProtocol
import AiotaskTransport
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A running aiotask worker: its listening sockets and its supervised pool, all on one event loop.
///
/// ```swift
/// let server = try await AiotaskServer.start(configuration: configuration, logger: logger)
/// // … serve …
/// try await server.shutdown()
/// ```
public final class AiotaskServer: Sendable {
    /// The local addresses the server listens on, in the order of the configuration (adopted sockets last).
    public let localAddresses: [SocketAddress]

    private let loop: any EventLoop
    private let supervisor: NIOLoopBound<Supervisor>
    private let listeners: [any Channel]
    private let ownedSocketPaths: [String]
    private let drainTimeout: Duration
    private let logger: Logger

    private init(
        loop: any EventLoop,
        supervisor: NIOLoopBound<Supervisor>,
        listeners: [any Channel],
        ownedSocketPaths: [String],
        drainTimeout: Duration,
        logger: Logger
    ) {
        self.loop = loop
        self.supervisor = supervisor
        self.listeners = listeners
        self.ownedSocketPaths = ownedSocketPaths
        self.localAddresses = listeners.compactMap(\.localAddress)
        self.drainTimeout = drainTimeout
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
        configuration: WorkerConfiguration,
        logger: Logger,
        eventLoop: (any EventLoop)? = nil
    ) async throws -> AiotaskServer {
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
        let loop = eventLoop ?? MultiThreadedEventLoopGroup.singleton.next()
        let supervisor = try await loop.submit {
            NIOLoopBound(Supervisor(loop: loop, configuration: configuration, logger: logger), eventLoop: loop)
        }.get()
        try await loop.flatSubmit { supervisor.value.start() }.get()

        var listeners: [any Channel] = []
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
            for address in configuration.listenAddresses {
                binding = "\(address)"
                switch address {
                case .tcp(let host, let port):
                    listeners.append(try await bootstrap.bind(host: host, port: port).get())
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
                listeners.append(try await bootstrap.withBoundSocket(socket.descriptor).get())
                logger.info("serving adopted socket \(socket.name) (fd \(socket.descriptor))")
            }
        } catch {
            for listener in listeners { try? await listener.close() }
            // Nothing was accepted, so nothing drains: the pool just stops, without a "draining" log.
            try? await loop.flatSubmit { supervisor.value.shutdown(drainTimeout: .zero, announce: false) }.get()
            throw ServerError.cannotListen(ListenError(address: binding, error: error))
        }
        return AiotaskServer(
            loop: loop,
            supervisor: supervisor,
            listeners: listeners,
            ownedSocketPaths: ownedSocketPaths,
            drainTimeout: configuration.drainTimeout,
            logger: logger
        )
    }

    private static func makeBootstrap(
        loop: any EventLoop,
        supervisor: NIOLoopBound<Supervisor>,
        configuration: WorkerConfiguration,
        logger: Logger
    ) -> ServerBootstrap {
        ServerBootstrap(group: loop, childGroup: loop)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: false)
            .childChannelOption(.allocator, value: FastCopyBuffers.allocator)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if channel.localAddress?.protocol != .unix {
                        try channel.syncOptions?.setOption(.socketOption(.tcp_nodelay), value: 1)
                    }
                    let reads = DirectFrameReads()
                    try reads.install(on: channel)
                    try channel.pipeline.syncOperations.addHandler(
                        ClientConnectionHandler(supervisor: supervisor.value, logger: logger, readWindow: reads.window)
                    )
                }
            }
    }

    /// The server's live statistics.
    public func info() async throws -> ServerInfo {
        try await loop.submit { [supervisor] in supervisor.value.info() }.get()
    }

    /// Applies a new configuration to the running server without closing its sockets or losing a task
    /// (see `docs` on reload: the pool is rolled over to the new handler and size). Listening addresses and
    /// adopted sockets are kept as they are.
    public func reload(_ configuration: WorkerConfiguration) async throws {
        try await loop.submit { [supervisor] in supervisor.value.reload(configuration) }.get()
    }

    /// Whether the event loop answers within `limit` and the pool keeps at least one process alive.
    public func isHealthy(within limit: Duration) async -> Bool {
        let answer = loop.submit { [supervisor] in supervisor.value.isHealthy }
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
        try await loop.submit { [supervisor] in supervisor.value.statusLine }.get()
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
        try await loop.submit { [supervisor] in supervisor.value.sharedPayloadUsage }.get()
    }

    /// The number of tasks queued or running.
    public func tasksInFlight() async throws -> Int {
        try await loop.submit { [supervisor] in supervisor.value.tasksInFlight }.get()
    }

    /// Stops listening, says `GOODBYE` to the extended clients, drains the tasks in flight (up to the configured
    /// drain timeout), fails what is left with `shuttingDown` or `interrupted`, and stops every pool process.
    public func shutdown() async throws {
        for listener in listeners { try? await listener.close() }
        for path in ownedSocketPaths { unlink(path) }
        try await loop.flatSubmit { [supervisor, drainTimeout] in
            supervisor.value.shutdown(drainTimeout: drainTimeout)
        }.get()
        logger.info("worker stopped")
    }
}

/// Why a server could not start: a code to switch on, and for a socket that could not be listened on, which
/// address and why (``listenError``).
public struct ServerError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of problem this is.
    public struct Code: Hashable, Sendable {
        private enum Base: Hashable, Sendable {
            case nothingToListenOn, cannotListen
        }

        private let base: Base

        private init(_ base: Base) {
            self.base = base
        }

        /// The configuration names no address and no socket was passed in.
        public static let nothingToListenOn = Code(.nothingToListenOn)
        /// Binding or adopting a socket failed.
        public static let cannotListen = Code(.cannotListen)
    }

    public var code: Code
    /// For ``Code/cannotListen``: the address, the errno and the reason.
    public var listenError: ListenError?

    /// The configuration names no address and no socket was passed in.
    public static let nothingToListenOn = ServerError(code: .nothingToListenOn, listenError: nil)

    /// Binding or adopting a socket failed: which address, and why.
    public static func cannotListen(_ error: ListenError) -> ServerError {
        ServerError(code: .cannotListen, listenError: error)
    }

    public var description: String {
        if let listenError { return listenError.description }
        return "no address to listen on: give --listen ADDRESS, or pass sockets"
    }
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
