import AiotaskProtocol
import NIOCore
import Testing

/// A header for `type` announcing `length` payload bytes.
func header(_ type: FrameType, length: Int) -> [UInt8] {
    if type.isExtension {
        return [
            type.rawValue, UInt8(length >> 24 & 0xff), UInt8(length >> 16 & 0xff), UInt8(length >> 8 & 0xff),
            UInt8(length & 0xff),
        ]
    }
    return [type.rawValue, UInt8(length >> 8 & 0xff), UInt8(length & 0xff)]
}

/// A complete frame of `type` with the given raw payload.
func rawFrame(_ type: FrameType, _ payload: [UInt8]) -> [UInt8] {
    header(type, length: payload.count) + payload
}

@Suite("Frame decoder: bad input")
struct FrameDecoderErrorTests {
    @Test(
        "An unknown type byte throws at once, before any length arrives",
        arguments: [0x00, 0x05, 0x7f, 0x8d, 0xc0, 0xff] as [UInt8]
    )
    func unknownType(_ type: UInt8) throws {
        var decoder = FrameDecoder(maximumPayloadLength: 1024)
        var buffer = ByteBuffer([type])
        #expect(throws: ProtocolError.unknownFrameType(type)) { try decoder.decode(buffer: &buffer) }
        // Also after a good frame, in one chunk.
        let bytes = try encode(.status(knownID)) + [type, 0x00, 0x00]
        let error = protocolError { _ = try decodeAll(bytes) }
        #expect(error == .unknownFrameType(type))
    }

    struct LengthCase: CustomTestStringConvertible, Sendable {
        var type: FrameType
        var length: Int
        /// Whether a payload of `length` arbitrary bytes (zeros here) is well-formed.
        var valid: Bool
        var testDescription: String { "\(type) with \(length) payload bytes: \(valid ? "valid" : "malformed")" }
    }

    static let lengthCases: [LengthCase] = [
        LengthCase(type: .enqueue, length: 0, valid: false),
        LengthCase(type: .enqueue, length: 15, valid: false),
        LengthCase(type: .enqueue, length: 16, valid: true),
        LengthCase(type: .enqueue, length: 17, valid: true),
        LengthCase(type: .update, length: 0, valid: false),
        LengthCase(type: .update, length: 16, valid: false),
        LengthCase(type: .update, length: 17, valid: true),
        LengthCase(type: .update, length: 18, valid: false),
        LengthCase(type: .done, length: 15, valid: false),
        LengthCase(type: .done, length: 16, valid: true),
        LengthCase(type: .status, length: 15, valid: false),
        LengthCase(type: .status, length: 16, valid: true),
        LengthCase(type: .status, length: 17, valid: false),
        LengthCase(type: .hello, length: 0, valid: false),
        LengthCase(type: .hello, length: 4, valid: false),
        LengthCase(type: .hello, length: 5, valid: true),
        LengthCase(type: .hello, length: 6, valid: true),
        LengthCase(type: .submit, length: 15, valid: false),
        LengthCase(type: .submit, length: 16, valid: false),
        LengthCase(type: .submit, length: 19, valid: false),
        LengthCase(type: .submit, length: 20, valid: true),
        LengthCase(type: .result, length: 15, valid: false),
        LengthCase(type: .result, length: 16, valid: true),
        LengthCase(type: .failed, length: 15, valid: false),
        LengthCase(type: .failed, length: 16, valid: false),
        LengthCase(type: .failed, length: 17, valid: true),
        LengthCase(type: .cancel, length: 15, valid: false),
        LengthCase(type: .cancel, length: 16, valid: true),
        LengthCase(type: .cancel, length: 17, valid: false),
        LengthCase(type: .infoRequest, length: 0, valid: true),
        LengthCase(type: .infoRequest, length: 1, valid: false),
        LengthCase(type: .drain, length: 1, valid: true),
        LengthCase(type: .drain, length: 0, valid: false),
        LengthCase(type: .drain, length: 2, valid: false),
        LengthCase(type: .poolRequest, length: 0, valid: true),
        LengthCase(type: .poolRequest, length: 1, valid: false),
        LengthCase(type: .traceContext, length: 16, valid: false),
        LengthCase(type: .traceContext, length: 17, valid: true),
        LengthCase(type: .traceContext, length: 100, valid: true),
        LengthCase(type: .info, length: 0, valid: true),
        LengthCase(type: .error, length: 0, valid: true),
    ]

    @Test("Payload lengths each type accepts and rejects", arguments: lengthCases)
    func payloadLengths(_ testCase: LengthCase) throws {
        let bytes = rawFrame(testCase.type, [UInt8](repeating: 0, count: testCase.length))
        if testCase.valid {
            let frames = try decodeAll(bytes)
            #expect(frames.count == 1)
            if case .frame(let frame) = frames.first { #expect(frame.type == testCase.type) }
        } else {
            let error = protocolError { _ = try decodeAll(bytes) }
            guard let error, error.code == .malformedFrame else {
                Issue.record("expected malformedFrame, got \(String(describing: error))")
                return
            }
            #expect(error.frameType == testCase.type)
            #expect(error.reason?.isEmpty == false)
        }
    }

    @Test(
        "A control frame over the limit throws as soon as its header arrives",
        arguments: [
            (FrameType.update, 1025), (.status, 0xffff), (.hello, 1025), (.failed, 0x7fff_ffff), (.cancel, 2000),
            (.infoRequest, 1025), (.info, 0xffff_ffff), (.error, 65_537),
        ]
    )
    func controlFrameOverLimit(_ type: FrameType, _ length: Int) throws {
        var decoder = FrameDecoder(maximumPayloadLength: 1 << 26, maximumControlFrameLength: 1024)
        var buffer = ByteBuffer(header(type, length: length))  // no payload at all
        #expect(throws: ProtocolError.frameTooLarge(type, length: length, limit: 1024)) {
            try decoder.decode(buffer: &buffer)
        }
    }

    @Test("The default control-frame limit is 64 KiB")
    func defaultControlLimit() throws {
        var decoder = FrameDecoder(maximumPayloadLength: 1 << 26)
        #expect(decoder.maximumControlFrameLength == 65_536)
        var buffer = ByteBuffer(header(.error, length: 65_537))
        #expect(throws: ProtocolError.frameTooLarge(.error, length: 65_537, limit: 65_536)) {
            try decoder.decode(buffer: &buffer)
        }
        // Exactly at the limit is fine.
        let message = String(repeating: "e", count: 65_536)
        #expect(try decodeAll(try encode(.error(message))) == [.frame(.error(message))])
    }

    @Test("A task frame exactly at the payload limit decodes; one byte more is oversized")
    func payloadLimitBoundary() throws {
        let decoder = FrameDecoder(maximumPayloadLength: 100, maximumControlFrameLength: 64)
        let atLimit: [Frame] = [
            .enqueue(knownID, payload: ByteBuffer(repeating: 1, count: 100)),
            .submit(knownID, timeout: nil, payload: ByteBuffer(repeating: 2, count: 100)),
            .done(knownID, result: ByteBuffer(repeating: 3, count: 100)),
            .result(knownID, ByteBuffer(repeating: 4, count: 100)),
        ]
        for frame in atLimit {
            #expect(try decodeAll(try encode(frame), decoder: decoder) == [.frame(frame)])
        }
        let overLimit: [Frame] = [
            .enqueue(knownID, payload: ByteBuffer(repeating: 1, count: 101)),
            .submit(knownID, timeout: nil, payload: ByteBuffer(repeating: 2, count: 101)),
            .done(knownID, result: ByteBuffer(repeating: 3, count: 101)),
            .result(knownID, ByteBuffer(repeating: 4, count: 101)),
        ]
        for frame in overLimit {
            #expect(
                try decodeAll(try encode(frame), decoder: decoder) == [.oversized(frame.type, knownID, length: 101)]
            )
        }
    }

    @Test("An oversized task is reported once its id arrives, without waiting for or buffering its bytes")
    func oversizedReportedEarly() throws {
        var decoder = FrameDecoder(maximumPayloadLength: 1024)
        // SUBMIT announcing 1 GiB of task bytes.
        let length = 16 + 4 + (1 << 30)
        var buffer = ByteBuffer(header(.submit, length: length))
        #expect(try decoder.decode(buffer: &buffer) == nil)
        buffer.writeBytes(knownIDBytes.prefix(15))
        #expect(try decoder.decode(buffer: &buffer) == nil)
        buffer.writeBytes(knownIDBytes.suffix(1) + [0, 0, 0, 9, 0xaa, 0xbb])
        #expect(try decoder.decode(buffer: &buffer) == .oversized(.submit, knownID, length: 1 << 30))
        #expect(buffer.readableBytes == 0)
        // The rest is dropped as it comes.
        buffer.writeBytes([UInt8](repeating: 0xcc, count: 4096))
        #expect(try decoder.decode(buffer: &buffer) == nil)
        #expect(buffer.readableBytes == 0)
    }

    @Test(
        "The frame after an oversized one decodes, however the skipped bytes are split",
        arguments: [[1], [7], [3, 1000, 5], [16, 4, 1], [4096], [100_000]]
    )
    func oversizedThenNext(_ sizes: [Int]) throws {
        let decoder = FrameDecoder(maximumPayloadLength: 1000)
        let otherID = TaskID(high: 1, low: 2)
        let frames: [Frame] = [
            .submit(knownID, timeout: .seconds(1), payload: ByteBuffer(repeating: 0x5a, count: 5000)),
            .status(otherID),
            .enqueue(otherID, payload: ByteBuffer(repeating: 0x33, count: 1001)),
            .enqueue(otherID, payload: ByteBuffer(ascii("small"))),
            .cancel(knownID),
        ]
        let bytes = try encode(frames)
        #expect(
            try decodeAll(chunks(of: bytes, sizes: sizes), decoder: decoder) == [
                .oversized(.submit, knownID, length: 5000),
                .frame(.status(otherID)),
                .oversized(.enqueue, otherID, length: 1001),
                .frame(.enqueue(otherID, payload: ByteBuffer(ascii("small")))),
                .frame(.cancel(knownID)),
            ]
        )
    }

    @Test("A limit of Int.max means no limit rather than an overflow")
    func unlimited() throws {
        let decoder = FrameDecoder(maximumPayloadLength: .max, maximumControlFrameLength: .max)
        let frames: [Frame] = [
            .submit(knownID, timeout: nil, payload: ByteBuffer(ascii("task"))),
            .enqueue(knownID, payload: ByteBuffer(ascii("task"))),
            .error("x"),
        ]
        #expect(try decodeAll(try encode(frames), decoder: decoder) == frames.map { .frame($0) })
    }

    @Test("Every proper prefix of a frame is a truncated stream at EOF", arguments: sampleFrames)
    func truncatedAtEOF(_ frame: Frame) throws {
        let bytes = try encode(frame)
        for cut in 1..<bytes.count {
            let prefix = Array(bytes.prefix(cut))
            let error = protocolError { _ = try decodeAll(chunks(of: prefix, sizes: [3])) }
            #expect(error == .truncatedStream(bytesLeft: cut))
        }
    }

    @Test("decodeLast returns nil on a clean end and throws on a partial frame")
    func decodeLastDirect() throws {
        var decoder = FrameDecoder(maximumPayloadLength: 1024)
        var empty = ByteBuffer()
        #expect(try decoder.decodeLast(buffer: &empty, seenEOF: true) == nil)

        var buffer = ByteBuffer(try encode(.status(knownID)) + [0x04, 0x00])
        #expect(try decoder.decodeLast(buffer: &buffer, seenEOF: true) == .frame(.status(knownID)))
        #expect(throws: ProtocolError.truncatedStream(bytesLeft: 2)) {
            try decoder.decodeLast(buffer: &buffer, seenEOF: true)
        }
        #expect(buffer.readableBytes == 0)
        #expect(try decoder.decodeLast(buffer: &buffer, seenEOF: true) == nil)
    }

    @Test("A stream ending inside the skipped bytes of an oversized task is truncated")
    func truncatedInsideOversized() throws {
        let decoder = FrameDecoder(maximumPayloadLength: 10)
        let bytes = try encode(.enqueue(knownID, payload: ByteBuffer(repeating: 9, count: 50)))
        let cut = Array(bytes.prefix(3 + 16 + 20))

        // Oversized frame seen while the connection is open, the rest never comes.
        let processor = NIOSingleStepByteToMessageProcessor(decoder)
        var frames: [InboundFrame] = []
        try processor.process(buffer: ByteBuffer(cut)) { frames.append($0) }
        #expect(frames == [.oversized(.enqueue, knownID, length: 50)])
        #expect(throws: ProtocolError.truncatedStream(bytesLeft: 30)) {
            try processor.finishProcessing(seenEOF: true) { frames.append($0) }
        }

        // The same bytes arriving together with the end of the stream.
        var lastDecoder = decoder
        var buffer = ByteBuffer(cut)
        #expect(throws: ProtocolError.truncatedStream(bytesLeft: 30)) {
            try lastDecoder.decodeLast(buffer: &buffer, seenEOF: true)
        }
        #expect(try lastDecoder.decodeLast(buffer: &buffer, seenEOF: true) == nil)

        // Complete oversized frame at EOF: fine.
        #expect(try decodeAll(bytes, decoder: decoder) == [.oversized(.enqueue, knownID, length: 50)])
    }

    @Test("Error descriptions name the problem")
    func descriptions() {
        #expect(ProtocolError.unknownFrameType(9).description == "unknown frame type 9")
        #expect(
            ProtocolError.unknownFrameType(22).description
                == "unknown frame type 22 (a TLS handshake? this listener speaks plain frames, not TLS)"
        )
        #expect(
            ProtocolError.frameTooLarge(.error, length: 70_000, limit: 65_536).description
                == "ERROR frame of 70000 bytes exceeds the limit of 65536 bytes"
        )
        #expect(
            ProtocolError.malformedFrame(.update, reason: "missing status byte").description
                == "malformed UPDATE frame: missing status byte"
        )
        #expect(ProtocolError.truncatedStream(bytesLeft: 3).description.contains("3 bytes"))
        #expect(ProtocolError.payloadExceedsLegacyFrame(.done, length: 70_000).description.contains("DONE"))
    }
}

extension FrameDecoderErrorTests {
    @Test("A DRAIN byte other than 0 or 1 is a malformed frame", arguments: [2, 0x80, 0xff] as [UInt8])
    func drainByte(_ value: UInt8) throws {
        let error = protocolError { _ = try decodeAll(rawFrame(.drain, [value])) }
        #expect(error?.code == .malformedFrame)
        #expect(error?.frameType == .drain)
        #expect(error?.reason?.contains("neither 0 nor 1") == true)
    }
}
