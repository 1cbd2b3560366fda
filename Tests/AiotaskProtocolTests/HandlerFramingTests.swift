import AiotaskProtocol
import AiotaskTestSupport
import AiotaskTransport
import NIOCore
import Testing

@Suite("Handler framing")
struct HandlerFramingTests {
    @Test("Request bytes: u32 BE length, then the task")
    func requestBytes() {
        var buffer = ByteBuffer()
        buffer.writeHandlerRequest(ByteBuffer(ascii("hello")))
        buffer.writeHandlerRequest(ByteBuffer())
        #expect(buffer.bytes == [0, 0, 0, 5] + ascii("hello") + [0, 0, 0, 0])
    }

    @Test("Reply bytes: kind, u32 BE length, then the bytes")
    func replyBytes() {
        var buffer = ByteBuffer()
        buffer.writeHandlerReply(.result(ByteBuffer(ascii("ok"))))
        buffer.writeHandlerReply(.error("bad"))
        buffer.writeHandlerReply(.error("é"))
        #expect(
            buffer.bytes == [0, 0, 0, 0, 2] + ascii("ok") + [1, 0, 0, 0, 3] + ascii("bad") + [
                1, 0, 0, 0, 2, 0xc3, 0xa9,
            ]
        )
    }

    static let replies: [HandlerReply] = [
        .result(ByteBuffer(ascii("HELLO"))), .result(ByteBuffer()), .error("boom"), .error(""),
        .result(ByteBuffer(repeating: 0xee, count: 70_000)), .error("ünïcödé ✓"),
    ]

    @Test("Replies decode fed in small pieces and whole")
    func replyRoundTrip() throws {
        var bytes = ByteBuffer()
        for reply in Self.replies { bytes.writeHandlerReply(reply) }
        for sizes in [[1, 1, 1, 997], [bytes.readableBytes], [3, 5000, 7]] {
            // As the supervisor's link handler reads them.
            var stream = StreamDecoder(HandlerReplyDecoder(maximumLength: 100_000))
            var decoded: [HandlerReply] = []
            for chunk in chunks(of: bytes.bytes, sizes: sizes) {
                try stream.decode(ByteBuffer(chunk)) { decoded.append($0) }
            }
            try stream.decodeLast { decoded.append($0) }
            #expect(decoded == Self.replies)
        }
    }

    @Test("A reply stream that ends inside a reply throws at its end, after the whole replies before it")
    func truncatedReplyStream() throws {
        var bytes = ByteBuffer()
        bytes.writeHandlerReply(.result(ByteBuffer(ascii("whole"))))
        bytes.writeHandlerReply(.result(ByteBuffer(ascii("cut short"))))
        for sizes in [[1], [bytes.readableBytes - 3]] {
            var stream = StreamDecoder(HandlerReplyDecoder(maximumLength: 100_000))
            var decoded: [HandlerReply] = []
            for chunk in chunks(of: Array(bytes.bytes.dropLast(3)), sizes: sizes) {
                try stream.decode(ByteBuffer(chunk)) { decoded.append($0) }
            }
            #expect(decoded == [.result(ByteBuffer(ascii("whole")))])
            #expect(stream.pendingBytes == 5 + "cut short".utf8.count - 3)
            #expect(throws: HandlerFramingError.truncated(bytesLeft: 11)) {
                try stream.decodeLast { decoded.append($0) }
            }
        }
    }

    @Test("Requests decode fed one byte at a time and whole")
    func requestRoundTrip() throws {
        let tasks = [ByteBuffer(ascii("a")), ByteBuffer(), ByteBuffer(repeating: 7, count: 10_000)]
        var bytes = ByteBuffer()
        for task in tasks { bytes.writeHandlerRequest(task) }
        for sizes in [[1], [bytes.readableBytes], [2, 9]] {
            let processor = NIOSingleStepByteToMessageProcessor(HandlerRequestDecoder(maximumLength: 10_000))
            var decoded: [ByteBuffer] = []
            for chunk in chunks(of: bytes.bytes, sizes: sizes) {
                try processor.process(buffer: ByteBuffer(chunk)) { decoded.append($0) }
            }
            try processor.finishProcessing(seenEOF: true) { decoded.append($0) }
            #expect(decoded == tasks)
        }
    }

    @Test(
        "An unknown reply kind throws as soon as its first byte arrives",
        arguments: [2, 0x0a, 0x68, 0xff] as [UInt8]
    )
    func unknownKind(_ kind: UInt8) {
        var decoder = HandlerReplyDecoder(maximumLength: 1024)
        var buffer = ByteBuffer([kind])
        #expect(throws: HandlerFramingError.unknownReplyKind(kind)) { try decoder.decode(buffer: &buffer) }
    }

    @Test("Stray text on stdout is a framing violation")
    func strayText() {
        var decoder = HandlerReplyDecoder(maximumLength: 1024)
        var buffer = ByteBuffer(ascii("hello from print()\n"))
        #expect(throws: HandlerFramingError.unknownReplyKind(0x68)) { try decoder.decode(buffer: &buffer) }
    }

    @Test("A reply over the limit throws as soon as its header arrives")
    func replyTooLarge() throws {
        var decoder = HandlerReplyDecoder(maximumLength: 1024)
        var buffer = ByteBuffer([1, 0, 0, 4, 1])
        #expect(throws: HandlerFramingError.replyTooLarge(length: 1025, limit: 1024)) {
            try decoder.decode(buffer: &buffer)
        }
        var atLimit = ByteBuffer()
        atLimit.writeHandlerReply(.result(ByteBuffer(repeating: 1, count: 1024)))
        #expect(try decoder.decode(buffer: &atLimit) == .result(ByteBuffer(repeating: 1, count: 1024)))
    }

    @Test("A request over the limit throws as soon as its length arrives")
    func requestTooLarge() throws {
        var decoder = HandlerRequestDecoder(maximumLength: 10)
        var buffer = ByteBuffer([0xff, 0xff, 0xff, 0xff])
        #expect(throws: HandlerFramingError.requestTooLarge(length: 0xffff_ffff, limit: 10)) {
            try decoder.decode(buffer: &buffer)
        }
    }

    @Test("Partial headers wait for more")
    func partial() throws {
        var replies = HandlerReplyDecoder(maximumLength: 10)
        var buffer = ByteBuffer([0, 0, 0])
        #expect(try replies.decode(buffer: &buffer) == nil)
        buffer.writeBytes([0, 1])
        #expect(try replies.decode(buffer: &buffer) == nil)
        buffer.writeBytes([0x41])
        #expect(try replies.decode(buffer: &buffer) == .result(ByteBuffer(ascii("A"))))

        var requests = HandlerRequestDecoder(maximumLength: 10)
        var request = ByteBuffer([0, 0, 0])
        #expect(try requests.decode(buffer: &request) == nil)
    }

    @Test("A stream ending inside a frame is truncated; a clean end is not")
    func truncated() throws {
        var replies = HandlerReplyDecoder(maximumLength: 100)
        var empty = ByteBuffer()
        #expect(try replies.decodeLast(buffer: &empty, seenEOF: true) == nil)
        var buffer = ByteBuffer([0, 0, 0, 0, 5, 0x41, 0x42])
        #expect(throws: HandlerFramingError.truncated(bytesLeft: 7)) {
            try replies.decodeLast(buffer: &buffer, seenEOF: true)
        }
        #expect(buffer.readableBytes == 0)

        var requests = HandlerRequestDecoder(maximumLength: 100)
        #expect(try requests.decodeLast(buffer: &empty, seenEOF: true) == nil)
        var request = ByteBuffer([0, 0, 0, 3, 0x41])
        #expect(throws: HandlerFramingError.truncated(bytesLeft: 5)) {
            try requests.decodeLast(buffer: &request, seenEOF: true)
        }
    }

    @Test("An error message that is not UTF-8 is repaired, not rejected")
    func invalidUTF8() throws {
        var decoder = HandlerReplyDecoder(maximumLength: 100)
        var buffer = ByteBuffer([1, 0, 0, 0, 2, 0xff, 0x41])
        #expect(try decoder.decode(buffer: &buffer) == .error("\u{FFFD}A"))
    }

    @Test("Error descriptions")
    func descriptions() {
        #expect(HandlerFramingError.unknownReplyKind(7).description.contains("7"))
        #expect(HandlerFramingError.replyTooLarge(length: 5, limit: 4).description.contains("limit of 4"))
        #expect(HandlerFramingError.requestTooLarge(length: 5, limit: 4).description.contains("5 bytes"))
        #expect(HandlerFramingError.truncated(bytesLeft: 2).description.contains("2 bytes"))
    }

    @Test("Random garbage only ever yields replies or throws HandlerFramingError")
    func fuzz() {
        var generator = SplitMix64(seed: 0x5eed_4a4d)
        for _ in 0..<5000 {
            var bytes = generator.bytes(count: Int.random(in: 0...40, using: &generator))
            if !bytes.isEmpty && Bool.random(using: &generator) { bytes[0] &= 1 }
            if bytes.count > 4 && Bool.random(using: &generator) { bytes[1] = 0; bytes[2] = 0; bytes[3] = 0 }
            var decoder = HandlerReplyDecoder(maximumLength: 32)
            var buffer = ByteBuffer(bytes)
            do {
                // Every reply consumes at least its 5-byte header, so more rounds than that mean a loop.
                var rounds = 0
                while try decoder.decode(buffer: &buffer) != nil, rounds <= bytes.count / 5 { rounds += 1 }
                while try decoder.decodeLast(buffer: &buffer, seenEOF: true) != nil, rounds <= bytes.count / 5 {
                    rounds += 1
                }
                #expect(rounds <= bytes.count / 5)
            } catch is HandlerFramingError {
            } catch {
                Issue.record("unexpected error \(error)")
            }
        }
    }
}
