import AiotaskProtocol
import AiotaskTestSupport
import AiotaskTransport
import NIOConcurrencyHelpers
@_spi(CustomByteBufferAllocator) import NIOCore
import NIOEmbedded
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The largest block requested from ``trackingAllocator`` since the last reset.
private let largestAllocation = NIOLockedValueBox(0)

/// A plain `malloc` allocator that records the largest block it was asked for.
private let trackingAllocator = ByteBufferAllocator(
    allocate: { size in
        largestAllocation.withLockedValue { $0 = max($0, size) }
        return malloc(size)
    },
    reallocate: { pointer, _, newSize in
        largestAllocation.withLockedValue { $0 = max($0, newSize) }
        return realloc(pointer, newSize)
    },
    deallocate: { free($0) },
    copy: { $0.copyMemory(from: $1, byteCount: $2) }
)

/// Runs `chunks` through a channel whose pipeline is `handler` (NIO's `ByteToMessageHandler`, for reference), then
/// ends the input: the messages, or the first error.
private func feed<Message>(
    _ chunks: [[UInt8]],
    to handler: some ChannelInboundHandler,
    as type: Message.Type
) -> Result<[Message], any Error> {
    let channel = EmbeddedChannel(handler: handler)
    var messages: [Message] = []
    do {
        for chunk in chunks {
            try channel.writeInbound(ByteBuffer(chunk))
            while let message = try channel.readInbound(as: Message.self) { messages.append(message) }
        }
        _ = try channel.finish(acceptAlreadyClosed: true)
        while let message = try channel.readInbound(as: Message.self) { messages.append(message) }
        return .success(messages)
    } catch {
        _ = try? channel.finish(acceptAlreadyClosed: true)
        return .failure(error)
    }
}

/// Decodes `chunks` with a ``StreamDecoder``, as the connection and pool-link handlers do, then ends the stream:
/// the messages, or the first error.
private func decodeStream<Decoder: LengthPrefixedDecoder>(
    _ chunks: [[UInt8]],
    _ decoder: Decoder,
    allocator: ByteBufferAllocator? = nil,
    copiesReads: Bool = false
) -> Result<[Decoder.InboundOut], any Error> {
    var stream = StreamDecoder(decoder, allocator: allocator, copiesReads: copiesReads)
    var messages: [Decoder.InboundOut] = []
    do {
        for chunk in chunks {
            try stream.decode(ByteBuffer(chunk)) { messages.append($0) }
        }
        try stream.decodeLast { messages.append($0) }
        return .success(messages)
    } catch {
        return .failure(error)
    }
}

private func assemble(
    _ chunks: [[UInt8]],
    _ decoder: FrameDecoder,
    allocator: ByteBufferAllocator? = nil,
    copiesReads: Bool = false
) -> Result<[InboundFrame], any Error> {
    decodeStream(chunks, decoder, allocator: allocator, copiesReads: copiesReads)
}

/// A payload whose bytes all differ from their neighbours, so any misplaced byte shows.
private func pattern(_ count: Int, seed: Int = 0) -> ByteBuffer {
    ByteBuffer(bytes: (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ $0 >> 8 &+ seed) })
}

@Suite("Stream decoder: large frames assembled without re-copying", .serialized)
struct StreamDecoderAssemblyTests {
    /// Small limits, so that one stream holds frames under, near and over them.
    static func smallDecoder() -> FrameDecoder {
        FrameDecoder(maximumPayloadLength: 600, maximumControlFrameLength: 400)
    }

    /// Every sample frame, a frame of several KiB, an oversized one, and a last small frame.
    static func mixedStream() throws -> (bytes: [UInt8], frames: [InboundFrame]) {
        let large = Frame.result(knownID, pattern(500))
        let oversized = Frame.enqueue(knownID, payload: pattern(700, seed: 1))
        let frames =
            sampleFrames.filter { $0.payloadLength <= 400 } + [large, oversized, .status(knownID), large]
        let bytes = try encode(frames)
        let expected = try decodeAll([bytes], decoder: smallDecoder())
        #expect(expected.contains(.oversized(.enqueue, knownID, length: 700)))
        #expect(expected.contains(.frame(large)))
        return (bytes, expected)
    }

    // `copiesReads`: as TLS connections decode, keeping nothing of the read buffers.
    @Test("a stream split in two at every byte decodes as it does in one piece", arguments: [false, true])
    func everySplitPoint(copiesReads: Bool) throws {
        let (bytes, expected) = try Self.mixedStream()
        for split in 1..<bytes.count {
            let result = assemble(
                [Array(bytes[..<split]), Array(bytes[split...])],
                Self.smallDecoder(),
                copiesReads: copiesReads
            )
            guard case .success(let frames) = result, frames == expected else {
                Issue.record("split at \(split) of \(bytes.count): \(result)")
                return
            }
        }
    }

    @Test(
        "a stream fed one byte at a time, and in three pieces around every frame boundary, decodes alike",
        arguments: [false, true]
    )
    func byteByByteAndAroundBoundaries(copiesReads: Bool) throws {
        let (bytes, expected) = try Self.mixedStream()
        #expect(try assemble(bytes.map { [$0] }, Self.smallDecoder(), copiesReads: copiesReads).get() == expected)
        // Boundaries: the end of every frame in the stream.
        var boundaries: [Int] = []
        var decoder = Self.smallDecoder()
        var buffer = ByteBuffer(bytes)
        while try decoder.decode(buffer: &buffer) != nil { boundaries.append(buffer.readerIndex) }
        for boundary in boundaries where boundary > 2 && boundary < bytes.count - 2 {
            for offset in [-2, -1, 0, 1, 2] {
                let first = boundary + offset - 1
                let second = boundary + offset + 1
                let chunks = [Array(bytes[..<first]), Array(bytes[first..<second]), Array(bytes[second...])]
                #expect(
                    try assemble(chunks, Self.smallDecoder(), copiesReads: copiesReads).get() == expected,
                    "around \(boundary)"
                )
            }
        }
    }

    // NIOSSL decrypts every read into one buffer it reuses: a slice kept of it made NIOSSL copy the whole buffer
    // before each read (a quarter of the daemon's time with 1 MiB tasks over TLS).
    @Test("copying reads, the decoder keeps nothing of the read buffer: its producer reuses it in place")
    func copiedReadsKeepNothing() throws {
        let frames: [Frame] = [
            .result(knownID, pattern(300)), .status(knownID), .submit(knownID, timeout: nil, payload: pattern(70_000)),
            .result(knownID, pattern(500, seed: 2)),
        ]
        let bytes = try encode(frames)
        var stream = StreamDecoder(FrameDecoder(maximumPayloadLength: 8 << 20), copiesReads: true)
        var messages: [InboundFrame] = []
        // One buffer for every read, as NIOSSL has: the reads end inside headers, payloads and between frames.
        var read = ByteBuffer()
        read.reserveCapacity(bytes.count)
        let storage = read.withVeryUnsafeBytes { UInt(bitPattern: $0.baseAddress) }
        for chunk in chunks(of: bytes, sizes: [7, 150, 333, 64, 9000, 3]) {
            // Clearing a buffer whose storage another buffer shares allocates new storage.
            read.clear()
            #expect(read.withVeryUnsafeBytes { UInt(bitPattern: $0.baseAddress) } == storage)
            read.writeBytes(chunk)
            try stream.decode(read) { messages.append($0) }
        }
        try stream.decodeLast { messages.append($0) }
        // The read buffer was overwritten under every message decoded from it: each still holds its own bytes.
        #expect(messages == frames.map { .frame($0) })
    }

    @Test("a 3 MiB frame in 4 KiB reads arrives whole in one buffer of its exact size; the frame behind it too")
    func largeFrameAcrossManyReads() throws {
        let payload = pattern(3 * 1024 * 1024 + 7)
        let large = Frame.submit(knownID, timeout: .milliseconds(250), payload: payload)
        let bytes = try encode([large, .status(knownID)])
        let frames = try assemble(chunks(of: bytes, sizes: [4096]), FrameDecoder(maximumPayloadLength: 8 << 20)).get()
        #expect(frames == [.frame(large), .frame(.status(knownID))])
        guard case .frame(.submit(_, _, let received)) = frames.first else { return }
        // Assembled in one buffer sized from the header: not the power of two an accumulating buffer grows to.
        #expect(received.storageCapacity == (try encode(large)).count)
    }

    @Test("the memory reserved for a frame is bounded by the bytes that arrived, not by the length announced")
    func reservationIsBounded() throws {
        let announced = 60 * 1024 * 1024
        let bytes = header(.result, length: announced) + knownIDBytes + [UInt8](repeating: 7, count: 1000)
        largestAllocation.withLockedValue { $0 = 0 }
        let result = assemble(
            [Array(bytes[..<3]), Array(bytes[3...])],
            FrameDecoder(maximumPayloadLength: 64 * 1024 * 1024),
            allocator: trackingAllocator
        )
        // The stream ends inside the frame: a truncated stream, as before.
        #expect(throws: ProtocolError.self) { try result.get() }
        let largest = largestAllocation.withLockedValue { $0 }
        #expect(largest > 0)
        // A ByteBufferAllocator rounds capacities up to a power of two (the default buffers are exact).
        #expect(largest <= 2 * (bytes.count + StreamDecoder<FrameDecoder>.reserveAhead))
    }

    @Test("an oversized frame split inside its header is skipped without buffering its bytes")
    func oversizedSplitInHeader() throws {
        let oversized = Frame.submit(knownID, timeout: nil, payload: pattern(1024 * 1024))
        let bytes = try encode([oversized, .status(knownID)])
        largestAllocation.withLockedValue { $0 = 0 }
        let chunks = [Array(bytes[..<2]), Array(bytes[2..<9])] + chunks(of: Array(bytes[9...]), sizes: [4096, 100])
        let frames = try assemble(chunks, FrameDecoder(maximumPayloadLength: 1000), allocator: trackingAllocator).get()
        #expect(frames == [.oversized(.submit, knownID, length: 1024 * 1024), .frame(.status(knownID))])
        // Only the header was assembled: a few dozen bytes, never the announced megabyte.
        #expect(largestAllocation.withLockedValue { $0 } <= 128)
    }

    @Test("a control frame over its limit throws before its bytes are buffered, as before")
    func controlFrameTooLarge() throws {
        let bytes = header(.info, length: 5000) + [UInt8](repeating: 0x20, count: 100)
        let decoder = FrameDecoder(maximumPayloadLength: 6000, maximumControlFrameLength: 4000)
        largestAllocation.withLockedValue { $0 = 0 }
        let result = assemble(bytes.map { [$0] }, decoder, allocator: trackingAllocator)
        #expect(throws: ProtocolError.frameTooLarge(.info, length: 5000, limit: 4000)) { try result.get() }
        #expect(largestAllocation.withLockedValue { $0 } <= 128)
    }

    @Test("1,000 mutated streams in random pieces: the same frames or the same error as NIO's ByteToMessageHandler")
    func sameAsByteToMessageHandler() throws {
        var mutator = Mutator(generator: SplitMix64(seed: 0xa55e_b1e5))
        let seeds = [try encode(sampleFrames), try Self.mixedStream().bytes]
        var differences: [String] = []
        for iteration in 0..<1000 {
            let bytes = mutator.mutate(seeds[iteration % 2], splices: seeds, maximumMutations: 4)
            let pieces = randomChunks(
                of: bytes,
                maximumChunk: [7, 100, 3000][iteration % 3],
                using: &mutator.generator
            )
            let reference = feed(pieces, to: ByteToMessageHandler(Self.smallDecoder()), as: InboundFrame.self)
            let assembled = assemble(pieces, Self.smallDecoder())
            switch (reference, assembled) {
            case (.success(let expected), .success(let frames)) where expected == frames:
                continue
            case (.failure(let expected as ProtocolError), .failure(let error as ProtocolError)) where expected == error:
                continue
            default:
                differences.append("\(reference) vs \(assembled)")
            }
        }
        #expect(differences.isEmpty, "\(differences.count) differ, e.g. \(differences.prefix(2))")
    }

    @Test("handler replies: a large result in many reads, an error reply, and a reply over the limit")
    func handlerReplies() throws {
        var stream = ByteBuffer()
        let result = pattern(1024 * 1024 + 3)
        stream.writeHandlerReply(.result(result))
        stream.writeHandlerReply(.error("no"))
        stream.writeHandlerReply(.result(pattern(10)))
        let bytes = stream.bytes
        let decoder = HandlerReplyDecoder(maximumLength: 2 * 1024 * 1024)
        let replies = try decodeStream(chunks(of: bytes, sizes: [1, 4, 65536, 333]), decoder).get()
        #expect(replies == [.result(result), .error("no"), .result(pattern(10))])

        largestAllocation.withLockedValue { $0 = 0 }
        let tooLarge = decodeStream(
            chunks(of: bytes, sizes: [3, 4096]),
            HandlerReplyDecoder(maximumLength: 1000),
            allocator: trackingAllocator
        )
        #expect(throws: HandlerFramingError.replyTooLarge(length: 1024 * 1024 + 3, limit: 1000)) {
            try tooLarge.get()
        }
        #expect(largestAllocation.withLockedValue { $0 } <= 128)
    }
}
