import AiotaskProtocol
import AiotaskTestSupport
import AiotaskTransport
import NIOCore
import NIOPosix
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// What a link reading through ``DirectFrameReads`` delivered by the end of its stream.
private struct Received: Sendable {
    var replies: [HandlerReply] = []
    var failure: (any Error)?
    var bytesReadInPlace = 0
}

/// Decodes handler replies as a pool link does: a ``StreamDecoder`` whose channel reads through
/// ``DirectFrameReads``. Reports everything once the stream ends.
private final class CollectingHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private var decoder: StreamDecoder<HandlerReplyDecoder>
    private let window: ReadWindow
    private let done: EventLoopPromise<Received>
    private var received = Received()

    init(window: ReadWindow, done: EventLoopPromise<Received>) {
        self.decoder = StreamDecoder(HandlerReplyDecoder(maximumLength: 8 << 20), readWindow: window)
        self.window = window
        self.done = done
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard received.failure == nil else { return }
        do {
            try decoder.decode(unwrapInboundIn(data)) { received.replies.append($0) }
        } catch {
            received.failure = error
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if received.failure == nil {
            do {
                try decoder.decodeLast { received.replies.append($0) }
            } catch {
                received.failure = error
            }
        }
        received.bytesReadInPlace = window.bytesReadInPlace
        done.succeed(received)
    }
}

/// Writes `chunks` into a pipe whose read end a channel reads through ``DirectFrameReads``, closes it, and returns
/// what the channel decoded. The pipe keeps its default size (64 KiB), so a large frame takes many reads.
private func sendThroughPipe(_ chunks: [[UInt8]]) async throws -> Received {
    var ends: [CInt] = [0, 0]
    try #require(pipe(&ends) == 0)
    let (readEnd, writeEnd) = (ends[0], ends[1])
    let loop = MultiThreadedEventLoopGroup.singleton.next()
    let done = loop.makePromise(of: Received.self)
    _ = try await NIOPipeBootstrap(group: loop)
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                let reads = DirectFrameReads()
                try reads.install(on: channel)
                try channel.pipeline.syncOperations.addHandler(CollectingHandler(window: reads.window, done: done))
            }
        }
        .takingOwnershipOfDescriptor(input: readEnd)
        .get()
    let writer = Task.detached {
        for chunk in chunks {
            var done = 0
            while done < chunk.count {
                let written = chunk.withUnsafeBytes { write(writeEnd, $0.baseAddress! + done, chunk.count - done) }
                if written < 0, errno == EINTR { continue }
                guard written > 0 else { break }
                done += written
            }
        }
        close(writeEnd)
    }
    let received = try await withTimeout { try await done.futureResult.get() }
    await writer.value
    return received
}

extension SplitMix64 {
    /// `count` random bytes, eight per step of the generator.
    mutating func fastBytes(count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count + 8)
        bytes.withUnsafeMutableBytes { raw in
            for offset in stride(from: 0, to: count, by: 8) {
                raw.storeBytes(of: next(), toByteOffset: offset, as: UInt64.self)
            }
        }
        return Array(bytes.prefix(count))
    }
}

/// Cuts `bytes` into pieces of 1 byte to 300 KiB.
private func randomChunks(_ bytes: [UInt8], using random: inout SplitMix64) -> [[UInt8]] {
    var chunks: [[UInt8]] = []
    var start = 0
    while start < bytes.count {
        let end = min(bytes.count, start + Int.random(in: 1...300_000, using: &random))
        chunks.append(Array(bytes[start..<end]))
        start = end
    }
    return chunks
}

@Suite("Direct reads: large frames read straight into the buffers they are assembled in")
struct DirectFrameReadsTests {
    @Test(
        "large frames in random pieces are read straight into their buffers and arrive whole, between small ones",
        arguments: [1, 2, 3] as [UInt64]
    )
    func largeFramesAreReadStraightIntoTheirBuffersAndArriveWhole(seed: UInt64) async throws {
        var random = SplitMix64(seed: seed)
        // Frames larger than the decoder reserves at once (2 MiB), of the usual large sizes, just around the
        // direct-read minimum (64 KiB), and small ones in between.
        let sizes = [3 << 20, 1 << 20, 100, 70_000, 65_535, 0, 65_536 + 5, (1 << 20) + 1, 200_000, 7]
        var expected: [HandlerReply] = sizes.map { .result(ByteBuffer(bytes: random.fastBytes(count: $0))) }
        expected.insert(.error("in between"), at: 3)
        var stream = ByteBuffer()
        for reply in expected { stream.writeHandlerReply(reply) }

        let received = try await sendThroughPipe(randomChunks(Array(stream.readableBytesView), using: &random))

        #expect(received.failure == nil, "\(String(describing: received.failure))")
        #expect(received.replies == expected)
        // Without direct reads nothing is read in place; with them, most bytes of the large frames are.
        #expect(received.bytesReadInPlace > (5 << 20) / 2)
    }

    @Test("a stream that ends inside a large frame fails as truncated, counting the bytes read into its buffer")
    func aStreamEndingInsideAFrameKeepsTheBytesReadIntoItsBuffer() async throws {
        var random = SplitMix64(seed: 7)
        let whole = ByteBuffer(bytes: random.fastBytes(count: 1 << 20))
        var stream = ByteBuffer()
        stream.writeHandlerReply(.result(whole))
        let sent = 5 + 600_000
        let chunks = stride(from: 0, to: sent, by: 64 * 1024).map { start in
            Array(stream.readableBytesView.dropFirst(start).prefix(min(64 * 1024, sent - start)))
        }

        let received = try await sendThroughPipe(chunks)

        #expect(received.replies.isEmpty)
        #expect(received.failure as? HandlerFramingError == .truncated(bytesLeft: sent))
        #expect(received.bytesReadInPlace > 500_000)
    }
}
