import AiotaskProtocol
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// What a stub server does with each frame it receives, on the connection's event loop.
typealias StubBehavior = @Sendable (StubConnection, Frame) -> Void

/// The server side of one connection to a ``StubServer``; used on its event loop only.
final class StubConnection {
    private let context: ChannelHandlerContext
    /// Frames the behaviour holds back to answer later.
    var held: [Frame] = []
    /// A counter the behaviour may use, for example to number its answers.
    var counter = 0

    init(context: ChannelHandlerContext) {
        self.context = context
    }

    /// Sends one frame and flushes.
    func send(_ frame: Frame) {
        var buffer = context.channel.allocator.buffer(capacity: frame.payloadLength + 5)
        try! buffer.writeFrame(frame)
        context.writeAndFlush(NIOAny(buffer), promise: nil)
    }

    /// Sends bytes as they are.
    func sendRaw(_ bytes: [UInt8]) {
        context.writeAndFlush(NIOAny(context.channel.allocator.buffer(bytes: bytes)), promise: nil)
    }

    /// Closes the connection.
    func close() {
        context.close(promise: nil)
    }
}

/// A tiny in-process aiotask server that answers frames as a test's behaviour says, and logs what it received.
final class StubServer: Sendable {
    enum Location {
        case tcp(host: String)
        case unix
    }

    /// Where clients connect.
    let address: ServerAddress
    /// Every frame any connection received, in order.
    let log: FrameLog
    private let channel: any Channel
    private let connections: ChannelList
    private let socketPath: String?

    private init(
        address: ServerAddress,
        log: FrameLog,
        channel: any Channel,
        connections: ChannelList,
        socketPath: String?
    ) {
        self.address = address
        self.log = log
        self.channel = channel
        self.connections = connections
        self.socketPath = socketPath
    }

    /// Starts a server on a free TCP port of `127.0.0.1` (or a temporary Unix socket) running `behavior`.
    static func start(
        _ location: Location = .tcp(host: "127.0.0.1"),
        behavior: @escaping StubBehavior = StubBehaviors.standard()
    ) async throws -> StubServer {
        let log = FrameLog()
        let children = ChannelList()
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                children.channels.withLockedValue { $0.append(channel) }
                return channel.eventLoop.makeCompletedFuture {
                    let operations = channel.pipeline.syncOperations
                    try operations.addHandler(ByteToMessageHandler(FrameDecoder(maximumPayloadLength: 1 << 20)))
                    try operations.addHandler(StubServerHandler(behavior: behavior, log: log))
                }
            }
        switch location {
        case .tcp(let host):
            let channel = try await bootstrap.bind(host: host, port: 0).get()
            let port = channel.localAddress!.port!
            return StubServer(
                address: .tcp(host: host, port: port),
                log: log,
                channel: channel,
                connections: children,
                socketPath: nil
            )
        case .unix:
            let path = FileManager.default.temporaryDirectory
                .appendingPathComponent("aiotask-stub-\(UUID().uuidString.prefix(8)).sock").path
            let channel = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
            return StubServer(
                address: .unix(path: path),
                log: log,
                channel: channel,
                connections: children,
                socketPath: path
            )
        }
    }

    /// Closes every accepted connection (the listening socket stays open).
    func dropConnections() {
        for connection in connections.channels.withLockedValue({ $0 }) {
            connection.close(promise: nil)
        }
    }

    /// Waits until every connection accepted so far has closed, from either side.
    func waitUntilConnectionsClose() async {
        for connection in connections.channels.withLockedValue({ $0 }) {
            try? await connection.closeFuture.get()
        }
    }

    /// Sends a frame on every accepted connection.
    func sendToAll(_ frame: Frame) {
        var buffer = ByteBuffer()
        try! buffer.writeFrame(frame)
        for connection in connections.channels.withLockedValue({ $0 }) {
            connection.writeAndFlush(buffer, promise: nil)
        }
    }

    /// Sends bytes as they are on every accepted connection.
    func sendRawToAll(_ bytes: [UInt8]) {
        for connection in connections.channels.withLockedValue({ $0 }) {
            connection.writeAndFlush(ByteBuffer(bytes: bytes), promise: nil)
        }
    }

    /// Stops listening and closes every connection.
    func stop() async {
        dropConnections()
        try? await channel.close()
        if let socketPath { try? FileManager.default.removeItem(atPath: socketPath) }
    }
}

/// The connections a stub server accepted.
final class ChannelList: Sendable {
    let channels = NIOLockedValueBox<[any Channel]>([])
}

/// Feeds a stub server's frames to its behaviour and log.
private final class StubServerHandler: ChannelInboundHandler {
    typealias InboundIn = InboundFrame

    private let behavior: StubBehavior
    private let log: FrameLog
    private var connection: StubConnection?

    init(behavior: @escaping StubBehavior, log: FrameLog) {
        self.behavior = behavior
        self.log = log
    }

    func handlerAdded(context: ChannelHandlerContext) {
        connection = StubConnection(context: context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .frame(let frame) = unwrapInboundIn(data), let connection else { return }
        log.append(frame)
        behavior(connection, frame)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// Ready-made stub behaviours.
enum StubBehaviors {
    /// Answers HELLO with `maximumPayloadLength`; echoes SUBMIT; answers STATUS with `processing`, INFO_REQUEST
    /// with statistics whose `pid` counts the requests from 0, and CANCEL with a cancelled failure.
    static func standard(maximumPayloadLength: UInt32 = 1 << 20) -> StubBehavior {
        { connection, frame in
            switch frame {
            case .hello:
                connection.send(.hello(Hello(maximumPayloadLength: maximumPayloadLength)))
            case .submit(let id, _, let payload):
                connection.send(.result(id, payload))
            case .status(let id):
                connection.send(.update(id, .processing))
            case .infoRequest:
                connection.send(.info(infoJSON(pid: connection.counter)))
                connection.counter += 1
            case .cancel(let id):
                connection.send(.failed(id, .cancelled, message: "cancelled by request"))
            default:
                break
            }
        }
    }

    /// Like ``standard(maximumPayloadLength:)``, but SUBMIT frames go to `onSubmit`.
    static func standard(onSubmit: @escaping @Sendable (StubConnection, TaskID, ByteBuffer) -> Void) -> StubBehavior {
        let base = standard()
        return { connection, frame in
            if case .submit(let id, _, let payload) = frame {
                onSubmit(connection, id, payload)
            } else {
                base(connection, frame)
            }
        }
    }

    /// Statistics in the server's JSON form.
    static func infoJSON(pid: Int) -> ByteBuffer {
        let info = ServerInfo(
            version: "0.1.0-stub",
            pid: pid,
            uptimeSeconds: 12.5,
            handler: "echo",
            workers: .init(configured: 4, alive: 4, busy: 1, restarts: 0),
            queue: .init(length: 2, capacity: 1024),
            tasks: .init(submitted: 10, succeeded: 8, failed: 1, running: 1),
            connections: 1,
            tasksPerSecond: 3.5
        )
        return ByteBuffer(bytes: try! JSONEncoder().encode(info))
    }
}
