import AiotaskProtocol
import NIOCore
import Testing

@Suite("Frame encoding")
struct FrameEncodingTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var frame: Frame
        var bytes: [UInt8]
        var testDescription: String { name }
    }

    /// Hand-written encodings. The first four are the frames of the original protocol, byte for byte as the
    /// Python aiotask 0.0.2 client packs them (`struct.pack("!BH", type, length) + payload`).
    static let cases: [Case] = [
        Case(
            name: "ENQUEUE hello",
            frame: .enqueue(knownID, payload: ByteBuffer(ascii("hello"))),
            bytes: [0x01, 0x00, 0x15] + knownIDBytes + [0x68, 0x65, 0x6c, 0x6c, 0x6f]
        ),
        Case(
            name: "ENQUEUE empty task",
            frame: .enqueue(knownID, payload: ByteBuffer()),
            bytes: [0x01, 0x00, 0x10] + knownIDBytes
        ),
        Case(
            name: "UPDATE processing",
            frame: .update(knownID, .processing),
            bytes: [0x02, 0x00, 0x11] + knownIDBytes + [0x01]
        ),
        Case(
            name: "UPDATE not found",
            frame: .update(knownID, .notFound),
            bytes: [0x02, 0x00, 0x11] + knownIDBytes + [0xff]
        ),
        Case(
            name: "DONE HELLO",
            frame: .done(knownID, result: ByteBuffer(ascii("HELLO"))),
            bytes: [0x03, 0x00, 0x15] + knownIDBytes + [0x48, 0x45, 0x4c, 0x4c, 0x4f]
        ),
        Case(
            name: "STATUS",
            frame: .status(knownID),
            bytes: [0x04, 0x00, 0x10] + knownIDBytes
        ),
        Case(
            name: "HELLO v1, 64 MiB",
            frame: .hello(Hello(version: 1, maximumPayloadLength: 64 * 1024 * 1024)),
            bytes: [0x80, 0x00, 0x00, 0x00, 0x05, 0x01, 0x04, 0x00, 0x00, 0x00]
        ),
        Case(
            name: "HELLO v2, 64 MiB",
            frame: .hello(Hello(version: 2, maximumPayloadLength: 64 * 1024 * 1024)),
            bytes: [0x80, 0x00, 0x00, 0x00, 0x05, 0x02, 0x04, 0x00, 0x00, 0x00]
        ),
        Case(
            name: "HELLO v3 (the current version), 64 MiB",
            frame: .hello(Hello(maximumPayloadLength: 64 * 1024 * 1024)),
            bytes: [0x80, 0x00, 0x00, 0x00, 0x05, 0x03, 0x04, 0x00, 0x00, 0x00]
        ),
        Case(
            name: "TRACE_CONTEXT with a traceparent and no tracestate",
            frame: .traceContext(
                knownID,
                traceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                traceState: ""
            ),
            bytes: [0x8C, 0x00, 0x00, 0x00, 0x48] + knownIDBytes + [0x37]
                + Array("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".utf8)
        ),
        Case(
            name: "TRACE_CONTEXT with a tracestate",
            frame: .traceContext(knownID, traceParent: "00-x", traceState: "k=v"),
            bytes: [0x8C, 0x00, 0x00, 0x00, 0x18] + knownIDBytes + [0x04] + Array("00-xk=v".utf8)
        ),
        Case(name: "POOL_REQUEST", frame: .poolRequest, bytes: [0x8A, 0x00, 0x00, 0x00, 0x00]),
        Case(
            name: "POOL",
            frame: .pool(ByteBuffer(string: "{}")),
            bytes: [0x8B, 0x00, 0x00, 0x00, 0x02, 0x7B, 0x7D]
        ),
        Case(
            name: "SUBMIT with 1.5 s timeout",
            frame: .submit(knownID, timeout: .milliseconds(1500), payload: ByteBuffer(ascii("x"))),
            bytes: [0x81, 0x00, 0x00, 0x00, 0x15] + knownIDBytes + [0x00, 0x00, 0x05, 0xdc, 0x78]
        ),
        Case(
            name: "SUBMIT with the default timeout",
            frame: .submit(knownID, timeout: nil, payload: ByteBuffer(ascii("x"))),
            bytes: [0x81, 0x00, 0x00, 0x00, 0x15] + knownIDBytes + [0x00, 0x00, 0x00, 0x00, 0x78]
        ),
        Case(
            name: "RESULT ok",
            frame: .result(knownID, ByteBuffer(ascii("ok"))),
            bytes: [0x82, 0x00, 0x00, 0x00, 0x12] + knownIDBytes + [0x6f, 0x6b]
        ),
        Case(
            name: "FAILED timed out",
            frame: .failed(knownID, .timedOut, message: "slow"),
            bytes: [0x83, 0x00, 0x00, 0x00, 0x15] + knownIDBytes + [0x03, 0x73, 0x6c, 0x6f, 0x77]
        ),
        Case(
            name: "FAILED with UTF-8 message",
            frame: .failed(knownID, .handlerError, message: "é"),
            bytes: [0x83, 0x00, 0x00, 0x00, 0x13] + knownIDBytes + [0x01, 0xc3, 0xa9]
        ),
        Case(
            name: "CANCEL",
            frame: .cancel(knownID),
            bytes: [0x84, 0x00, 0x00, 0x00, 0x10] + knownIDBytes
        ),
        Case(
            name: "INFO_REQUEST",
            frame: .infoRequest,
            bytes: [0x85, 0x00, 0x00, 0x00, 0x00]
        ),
        Case(
            name: "INFO",
            frame: .info(ByteBuffer(ascii("{}"))),
            bytes: [0x86, 0x00, 0x00, 0x00, 0x02, 0x7b, 0x7d]
        ),
        Case(
            name: "ERROR",
            frame: .error("bad"),
            bytes: [0x87, 0x00, 0x00, 0x00, 0x03, 0x62, 0x61, 0x64]
        ),
        Case(
            name: "GOODBYE",
            frame: .goodbye("bye"),
            bytes: [0x88, 0x00, 0x00, 0x00, 0x03, 0x62, 0x79, 0x65]
        ),
        Case(
            name: "DRAIN",
            frame: .drain(true),
            bytes: [0x89, 0x00, 0x00, 0x00, 0x01, 0x01]
        ),
        Case(
            name: "DRAIN lifted",
            frame: .drain(false),
            bytes: [0x89, 0x00, 0x00, 0x00, 0x01, 0x00]
        ),
    ]

    @Test("Encodes to the exact bytes", arguments: cases)
    func encodesExactly(_ testCase: Case) throws {
        #expect(try encode(testCase.frame) == testCase.bytes)
        #expect(testCase.frame.payloadLength == testCase.bytes.count - testCase.frame.type.headerLength)
    }

    @Test("Decodes the exact bytes", arguments: cases)
    func decodesExactly(_ testCase: Case) throws {
        #expect(try decodeAll(testCase.bytes) == [.frame(testCase.frame)])
    }

    @Test("Type bytes and header lengths")
    func typeBytes() {
        let types: [(FrameType, UInt8, Int)] = [
            (.enqueue, 1, 3), (.update, 2, 3), (.done, 3, 3), (.status, 4, 3),
            (.hello, 0x80, 5), (.submit, 0x81, 5), (.result, 0x82, 5), (.failed, 0x83, 5),
            (.cancel, 0x84, 5), (.infoRequest, 0x85, 5), (.info, 0x86, 5), (.error, 0x87, 5),
            (.goodbye, 0x88, 5), (.drain, 0x89, 5), (.poolRequest, 0x8A, 5), (.pool, 0x8B, 5),
            (.traceContext, 0x8C, 5),
        ]
        for (type, raw, header) in types {
            #expect(type.rawValue == raw)
            #expect(type.headerLength == header)
            #expect(type.isExtension == (raw >= 0x80))
            #expect(type.isKnown)
        }
        #expect(!FrameType(rawValue: 0).isKnown)
        #expect(!FrameType(rawValue: 5).isKnown)
        #expect(!FrameType(rawValue: 0x8D).isKnown)
        #expect(FrameType(rawValue: 0x99).description == "type 153")
        #expect(Set(types.map { $0.0.description }).count == types.count)
    }

    @Test("Status and failure codes keep their wire values")
    func codes() {
        #expect(TaskStatus.inQueue.rawValue == 0)
        #expect(TaskStatus.processing.rawValue == 1)
        #expect(TaskStatus.done.rawValue == 2)
        #expect(TaskStatus.failed.rawValue == 3)
        #expect(TaskStatus.notSubmitted.rawValue == 254)
        #expect(TaskStatus.notFound.rawValue == 255)
        #expect(TaskStatus(rawValue: 9).description == "unknown status 9")
        let reasons: [FailureReason] = [
            .handlerError, .workerCrashed, .timedOut, .cancelled, .rejected, .payloadTooLarge, .shuttingDown,
            .interrupted,
        ]
        #expect(reasons.map(\.rawValue) == [1, 2, 3, 4, 5, 6, 7, 8])
        #expect(FailureReason(rawValue: 99).description == "failure 99")
        #expect(FailureReason.payloadTooLarge.description == "payload too large")
    }

    @Test("Lengths from 32,768 to 65,535 are written as unsigned 16-bit")
    func largeLegacyLength() throws {
        let payload = ByteBuffer(repeating: 0x61, count: 65_535 - 16)
        let bytes = try encode(.done(knownID, result: payload))
        #expect(bytes.count == 3 + 65_535)
        #expect(Array(bytes.prefix(3)) == [0x03, 0xff, 0xff])
        #expect(try decodeAll(bytes) == [.frame(.done(knownID, result: payload))])

        let half = try encode(.enqueue(knownID, payload: ByteBuffer(repeating: 0, count: 32_768 - 16)))
        #expect(Array(half.prefix(3)) == [0x01, 0x80, 0x00])
    }

    @Test(
        "Original frames over 65,535 payload bytes throw and write nothing",
        arguments: [
            Frame.enqueue(knownID, payload: ByteBuffer(repeating: 1, count: 65_535 - 15)),
            Frame.done(knownID, result: ByteBuffer(repeating: 1, count: 65_535 - 15)),
            Frame.done(knownID, result: ByteBuffer(repeating: 1, count: 1 << 20)),
        ]
    )
    func legacyFrameTooLong(_ frame: Frame) {
        var buffer = ByteBuffer(ascii("xyz"))
        let error = protocolError { try buffer.writeFrame(frame) }
        #expect(error == .payloadExceedsLegacyFrame(frame.type, length: frame.payloadLength))
        #expect(buffer.bytes == ascii("xyz"))
    }

    @Test("Extension frames carry payloads beyond 64 KiB with a 32-bit length")
    func largeExtensionFrame() throws {
        let payload = ByteBuffer(repeating: 0x7a, count: 100_000)
        let bytes = try encode(.result(knownID, payload))
        #expect(Array(bytes.prefix(5)) == [0x82, 0x00, 0x01, 0x86, 0xb0])  // 100,016
        #expect(try decodeAll(bytes) == [.frame(.result(knownID, payload))])
    }

    @Test("Only the readable bytes of a payload are written")
    func readableBytesOnly() throws {
        var payload = ByteBuffer(ascii("..hello"))
        payload.moveReaderIndex(forwardBy: 2)
        #expect(try encode(.enqueue(knownID, payload: payload)) == [0x01, 0x00, 0x15] + knownIDBytes + ascii("hello"))
    }

    static let timeouts: [(Duration?, UInt32)] = [
        (nil, 0),
        (.milliseconds(1), 1),
        (.milliseconds(1500), 1500),
        (.seconds(30), 30_000),
        // Never 0 for a real timeout: that would mean "the server's default".
        (.microseconds(1), 1),
        (.nanoseconds(999_999), 1),
        (.zero, 1),
        (.seconds(-5), 1),
        (.microseconds(2_999), 2),
        (.milliseconds(Int64(UInt32.max)), .max),
        (.seconds(5_000_000), .max),
        (.seconds(Int64.max), .max),
    ]

    @Test("Timeouts are whole milliseconds, 0 for the default, saturating", arguments: timeouts)
    func timeoutEncoding(_ timeout: Duration?, _ milliseconds: UInt32) throws {
        let bytes = try encode(.submit(knownID, timeout: timeout, payload: ByteBuffer()))
        let field = bytes[21..<25].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        #expect(field == milliseconds)
        let expected: Duration? = milliseconds == 0 ? nil : .milliseconds(milliseconds)
        #expect(try decodeAll(bytes) == [.frame(.submit(knownID, timeout: expected, payload: ByteBuffer()))])
    }
}
