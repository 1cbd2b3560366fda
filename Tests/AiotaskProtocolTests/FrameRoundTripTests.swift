import AiotaskProtocol
import AiotaskTestSupport
import NIOCore
import Testing

@Suite("Frame round trips")
struct FrameRoundTripTests {
    @Test("Every frame decodes to itself", arguments: sampleFrames)
    func roundTrip(_ frame: Frame) throws {
        let bytes = try encode(frame)
        #expect(bytes.count == frame.type.headerLength + frame.payloadLength)
        #expect(bytes.first == frame.type.rawValue)
        #expect(try decodeAll(bytes) == [.frame(frame)])
    }

    @Test("A stream of every frame decodes fed one byte at a time")
    func oneByteAtATime() throws {
        let bytes = try encode(sampleFrames)
        let frames = try decodeAll(chunks(of: bytes, sizes: [1]))
        #expect(frames == sampleFrames.map { .frame($0) })
    }

    @Test("decode() driven directly, one byte at a time, yields each frame exactly when its last byte arrives")
    func directDecode() throws {
        var decoder = FrameDecoder(maximumPayloadLength: 1024)
        var buffer = ByteBuffer()
        for frame in sampleFrames {
            let bytes = try encode(frame)
            for (index, byte) in bytes.enumerated() {
                buffer.writeInteger(byte)
                let decoded = try decoder.decode(buffer: &buffer)
                if index == bytes.count - 1 {
                    #expect(decoded == .frame(frame))
                    #expect(buffer.readableBytes == 0)
                } else {
                    #expect(decoded == nil)
                }
            }
        }
        #expect(try decoder.decodeLast(buffer: &buffer, seenEOF: true) == nil)
    }

    @Test("A stream of every frame decodes in random splits", arguments: [1, 2, 3, 0xdead_beef])
    func randomSplits(seed: UInt64) throws {
        var generator = SplitMix64(seed: seed)
        let bytes = try encode(sampleFrames + sampleFrames.shuffled(using: &generator))
        let expected = try decodeAll(bytes)
        #expect(expected.count == 2 * sampleFrames.count)
        for _ in 0..<50 {
            let pieces = randomChunks(of: bytes, maximumChunk: 40, using: &generator)
            #expect(try decodeAll(pieces) == expected)
        }
    }

    @Test("Pipelined tasks with large payloads decode in random splits")
    func largePayloads() throws {
        var generator = SplitMix64(seed: 42)
        var frames: [Frame] = []
        for index in 0..<20 {
            let id = TaskID(high: UInt64(index), low: generator.next())
            let payload = ByteBuffer(bytes: generator.bytes(count: Int.random(in: 0...70_000, using: &generator)))
            if payload.readableBytes <= 65_535 - 16 {
                frames.append(.enqueue(id, payload: payload))
            } else {
                frames.append(.submit(id, timeout: .seconds(index + 1), payload: payload))
            }
            frames.append(.result(id, payload))
        }
        let bytes = try encode(frames)
        let pieces = randomChunks(of: bytes, maximumChunk: 9_000, using: &generator)
        #expect(try decodeAll(pieces) == frames.map { .frame($0) })
    }

    @Test("A HELLO with bytes after its five known ones decodes, ignoring them (room for later versions)")
    func helloExtraBytes() throws {
        let bytes: [UInt8] = [0x80, 0x00, 0x00, 0x00, 0x08, 0x02, 0x00, 0x01, 0x00, 0x00, 0xaa, 0xbb, 0xcc]
        let next = try encode(.infoRequest)
        #expect(
            try decodeAll(bytes + next) == [
                .frame(.hello(Hello(version: 2, maximumPayloadLength: 65_536))), .frame(.infoRequest),
            ]
        )
    }

    @Test("Invalid UTF-8 in a FAILED or ERROR message is repaired, not rejected")
    func invalidUTF8() throws {
        let failed: [UInt8] = [0x83, 0x00, 0x00, 0x00, 0x13] + knownIDBytes + [0x01, 0xff, 0x41]
        #expect(try decodeAll(failed) == [.frame(.failed(knownID, .handlerError, message: "\u{FFFD}A"))])
        let error: [UInt8] = [0x87, 0x00, 0x00, 0x00, 0x02, 0xc3, 0x28]
        #expect(try decodeAll(error) == [.frame(.error("\u{FFFD}("))])
    }

    @Test("The INFO frame carries ServerInfo JSON")
    func infoJSON() throws {
        let json = ascii(#"{"version":"0.1.0","pid":42}"#)
        #expect(try decodeAll(try encode(.info(ByteBuffer(json)))) == [.frame(.info(ByteBuffer(json)))])
    }
}
