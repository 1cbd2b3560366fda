import AiotaskProtocol
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The opt-in listener of `GET /metrics` (``ServerConfiguration/metricsListenAddresses``,
/// ``ServerConfiguration/metricsAdoptedSockets``): a minimal HTTP/1.1 server on an event loop of its own, so that
/// scrapes — a thousand at once, or slow and hostile ones — never take the task path's loop for more than the hop
/// that copies the counters (``Supervisor/metricsSnapshot()``).
final class MetricsListener: Sendable {
    private let group: MultiThreadedEventLoopGroup
    let channels: [any Channel]
    let ownedSocketPaths: [String]

    private init(group: MultiThreadedEventLoopGroup, channels: [any Channel], ownedSocketPaths: [String]) {
        self.group = group
        self.channels = channels
        self.ownedSocketPaths = ownedSocketPaths
    }

    var localAddresses: [SocketAddress] { channels.compactMap(\.localAddress) }

    /// Binds the addresses and adopts the sockets; nil when there are none.
    ///
    /// - Throws: ``ServerError/cannotListen(_:)`` naming the address that failed.
    static func start(
        addresses: [ServerAddress],
        adopted: [AdoptedSocket],
        limits: MetricsHTTPHandler.Limits,
        logger: Logger,
        render: @escaping MetricsHTTPHandler.Render
    ) async throws -> MetricsListener? {
        guard !addresses.isEmpty || !adopted.isEmpty else { return nil }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let open = NIOLockedValueBox(0)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                let count = open.withLockedValue { count in
                    count += 1
                    return count
                }
                channel.closeFuture.whenComplete { _ in open.withLockedValue { $0 -= 1 } }
                return channel.eventLoop.makeCompletedFuture {
                    var decoderLimits = NIOHTTPDecoderLimitConfiguration()
                    decoderLimits.maxHeaderListSize = limits.maximumHeaderBytes
                    decoderLimits.maxHeaderFieldSize = limits.maximumHeaderBytes
                    decoderLimits.maxHeaderFieldCount = 100
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(HTTPResponseEncoder())
                    try sync.addHandler(
                        ByteToMessageHandler(
                            HTTPRequestDecoder(
                                leftOverBytesStrategy: .dropBytes,
                                informationalResponseStrategy: .drop,
                                limitConfiguration: decoderLimits
                            )
                        )
                    )
                    try sync.addHandler(
                        MetricsHTTPHandler(
                            render: render,
                            limits: limits,
                            isOverConnectionLimit: count > limits.maximumConnections
                        )
                    )
                }
            }
        var channels: [any Channel] = []
        var owned: [String] = []
        var binding = ""
        do {
            for address in addresses {
                binding = "\(address)"
                switch address {
                case .tcp(let host, let port):
                    channels.append(try await bootstrap.bind(host: host, port: port).get())
                case .tls:
                    throw MetricsListenError.tls
                case .unix(let path):
                    try UnixSocketPath.prepareForListening(at: path)
                    channels.append(
                        try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: false).get()
                    )
                    owned.append(path)
                }
                logger.info("serving metrics on \(address)")
            }
            for socket in adopted {
                binding = "adopted socket \(socket.name) (fd \(socket.descriptor))"
                channels.append(try await bootstrap.withBoundSocket(socket.descriptor).get())
                logger.info("serving metrics on adopted socket \(socket.name) (fd \(socket.descriptor))")
            }
        } catch {
            for channel in channels { try? await channel.close() }
            try? await group.shutdownGracefully()
            throw ServerError.cannotListen(ListenError(address: "metrics \(binding)", error: error))
        }
        return MetricsListener(group: group, channels: channels, ownedSocketPaths: owned)
    }

    /// Closes the sockets and stops the listener's loop; scrapes under way are cut.
    func stop() async {
        for channel in channels { try? await channel.close() }
        for path in ownedSocketPaths { unlink(path) }
        try? await group.shutdownGracefully()
    }
}

/// Why a metrics address cannot be listened on.
struct MetricsListenError: Error, CustomStringConvertible {
    static let tls = MetricsListenError()

    var description: String { "the metrics listener serves plain HTTP: give tcp://HOST:PORT or unix:/PATH" }
}
