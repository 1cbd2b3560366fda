import AiotaskProtocol
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

@Suite("Shared memory: the arena's space and the link's framing")
struct SharedPayloadFramingTests {
    @Test("regions go in the first gap large enough, aligned, and come back in any order")
    func firstFit() {
        var space = SharedPayloadSpace(capacity: 1000)
        let a = space.allocate(100)!
        let b = space.allocate(100)!
        let c = space.allocate(100)!
        #expect(a == 0..<100)
        #expect(b == 128..<228)
        #expect(c == 256..<356)
        #expect(space.allocate(700) == nil)
        space.release(b)
        // Too large for the gap b left: goes after c.
        #expect(space.allocate(200) == 384..<584)
        // Fits the gap.
        #expect(space.allocate(120) == 128..<248)
        space.release(a)
        space.release(c)
        #expect(space.allocate(128) == 0..<128)
        #expect(space.regions == [0..<128, 128..<248, 384..<584])
        // Past the last region, from the next multiple of 64: exactly to the end.
        #expect(space.allocate(416) == nil)
        #expect(space.allocate(360) == 640..<1000)
        #expect(space.allocate(128) == 256..<384)
        #expect(space.allocate(1) == nil)
    }

    @Test("requests inline and in the arena decode from any split of the stream; plain links have no kind byte")
    func requests() throws {
        var stream = ByteBuffer()
        stream.writeInlineRequestHeader(length: 5)
        stream.writeString("hello")
        stream.writeSharedRequest(offset: 4096, length: 1 << 20)
        stream.writeInlineRequestHeader(length: 0)
        let expected: [PoolRequest] = [
            .inline(ByteBuffer(string: "hello")), .shared(offset: 4096, length: 1 << 20), .inline(ByteBuffer()),
        ]
        for split in 0...stream.readableBytes {
            var decoder = PoolRequestDecoder(maximumLength: 100, hasKinds: true)
            var buffer = ByteBuffer()
            var decoded: [PoolRequest] = []
            for piece in [
                stream.getSlice(at: 0, length: split)!,
                stream.getSlice(at: split, length: stream.readableBytes - split)!,
            ] {
                buffer.writeImmutableBuffer(piece)
                while let request = try decoder.decode(buffer: &buffer) { decoded.append(request) }
            }
            #expect(decoded == expected, "split at \(split)")
        }

        var plain = ByteBuffer()
        plain.writeHandlerRequest(ByteBuffer(string: "hi"))
        var decoder = PoolRequestDecoder(maximumLength: 100, hasKinds: false)
        #expect(decoder.frameLength(at: plain) == 6)
        #expect(try decoder.decode(buffer: &plain) == .inline(ByteBuffer(string: "hi")))
    }

    @Test("an unknown request kind and an inline task over the limit break the framing")
    func badRequests() throws {
        var unknown = ByteBuffer(bytes: [7, 0, 0, 0, 1, 0])
        var decoder = PoolRequestDecoder(maximumLength: 100, hasKinds: true)
        #expect(throws: SharedPayloadFramingError.unknownRequestKind(7)) { try decoder.decode(buffer: &unknown) }
        var large = ByteBuffer()
        large.writeInlineRequestHeader(length: 101)
        #expect(decoder.frameLength(at: large) == nil)
        #expect(throws: HandlerFramingError.requestTooLarge(length: 101, limit: 100)) {
            try decoder.decode(buffer: &large)
        }
    }

    @Test("a result in the arena is a reply only from a process offered one")
    func sharedResults() throws {
        var bytes = ByteBuffer(bytes: [2, 0, 0, 1, 0, 0, 0, 0x10, 0])
        var offered = PoolReplyDecoder(maximumLength: 100, acceptsSharedResults: true)
        #expect(offered.frameLength(at: bytes) == 9)
        var copy = bytes
        #expect(try offered.decode(buffer: &copy) == .sharedResult(offset: 4096, length: 256))
        var truncated = bytes.getSlice(at: 0, length: 6)!
        #expect(try offered.decode(buffer: &truncated) == nil)
        #expect(throws: HandlerFramingError.truncated(bytesLeft: 6)) {
            try offered.decodeLast(buffer: &truncated, seenEOF: true)
        }

        var plain = PoolReplyDecoder(maximumLength: 100, acceptsSharedResults: false)
        #expect(throws: HandlerFramingError.unknownReplyKind(2)) { try plain.decode(buffer: &bytes) }
        var result = ByteBuffer()
        result.writeHandlerReply(.result(ByteBuffer(string: "ok")))
        #expect(try plain.decode(buffer: &result) == .handler(.result(ByteBuffer(string: "ok"))))
    }
}
