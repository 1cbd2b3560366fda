import AiotaskProtocol
import NIOCore
import NIOPosix

/// A server that answers every task at once with its own bytes, in this process, so that a benchmark against it
/// measures the client library alone.
final class StubTaskServer: Sendable {
    private let group: MultiThreadedEventLoopGroup
    private let channel: any Channel
    /// The TCP port it listens on, on 127.0.0.1.
    let port: Int

    private init(group: MultiThreadedEventLoopGroup, channel: any Channel, port: Int) {
        self.group = group
        self.channel = channel
        self.port = port
    }

    /// Starts listening on 127.0.0.1 at a free port, on a thread of its own.
    static func start() async throws -> StubTaskServer {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(StubConnectionHandler())
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return StubTaskServer(group: group, channel: channel, port: channel.localAddress?.port ?? 0)
    }

    func stop() async {
        try? await channel.close()
        try? await group.shutdownGracefully()
    }
}

/// Answers `HELLO` with `HELLO` and every `SUBMIT` or `ENQUEUE` with a `RESULT` of the task's bytes; the answers
/// to one read leave in one write.
private final class StubConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var output = ByteBuffer()
    // NIO's processor, not a pipeline step: decoded frames go straight to `answer`, so the stub costs little next to
    // the client it serves. (The package's own StreamDecoder copies less, but is not public.)
    private var frames = NIOSingleStepByteToMessageProcessor(FrameDecoder(maximumPayloadLength: Int(UInt32.max)))

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        do {
            try frames.process(buffer: unwrapInboundIn(data)) { answer($0, context: context) }
        } catch {
            context.close(promise: nil)
        }
    }

    private func answer(_ inbound: InboundFrame, context: ChannelHandlerContext) {
        guard case .frame(let frame) = inbound else {
            context.close(promise: nil)
            return
        }
        let answer: Frame
        switch frame {
        case .hello: answer = .hello(Hello(maximumPayloadLength: UInt32.max))
        case .submit(let id, _, let payload), .enqueue(let id, let payload): answer = .result(id, payload)
        default: return
        }
        do {
            try output.writeFrame(answer)
        } catch {
            context.close(promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        guard output.readableBytes > 0 else { return }
        let bytes = output
        output = context.channel.allocator.buffer(capacity: 0)
        context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
    }
}
