import AiotaskProtocol
import AiotaskTestSupport
import AiotaskTransport
import NIOCore
import Testing

/// The task id used throughout: `12345678-9abc-4def-8123-456789abcdef`.
let knownID = TaskID(high: 0x1234_5678_9abc_4def, low: 0x8123_4567_89ab_cdef)

/// The 16 bytes of ``knownID`` on the wire.
let knownIDBytes: [UInt8] = [
    0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4d, 0xef, 0x81, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
]

extension ByteBuffer {
    init(_ bytes: [UInt8]) {
        self.init(bytes: bytes)
    }

    /// The readable bytes as an array.
    var bytes: [UInt8] { getBytes(at: readerIndex, length: readableBytes) ?? [] }
}

/// The ASCII bytes of a string.
func ascii(_ text: String) -> [UInt8] { Array(text.utf8) }

/// Encodes one frame to its bytes.
func encode(_ frame: Frame) throws -> [UInt8] {
    var buffer = ByteBuffer()
    try buffer.writeFrame(frame)
    return buffer.bytes
}

/// Encodes frames back to back.
func encode(_ frames: [Frame]) throws -> [UInt8] {
    var buffer = ByteBuffer()
    for frame in frames { try buffer.writeFrame(frame) }
    return buffer.bytes
}

/// Splits `bytes` into consecutive chunks whose sizes come from `sizes` (cycled); the last chunk takes the rest.
func chunks(of bytes: [UInt8], sizes: [Int]) -> [[UInt8]] {
    precondition(!sizes.isEmpty && sizes.allSatisfy { $0 > 0 })
    var result: [[UInt8]] = []
    var start = 0
    var index = 0
    while start < bytes.count {
        let end = min(bytes.count, start + sizes[index % sizes.count])
        result.append(Array(bytes[start..<end]))
        start = end
        index += 1
    }
    return result
}

/// Splits `bytes` at random points.
func randomChunks(
    of bytes: [UInt8],
    maximumChunk: Int,
    using generator: inout some RandomNumberGenerator
)
    -> [[UInt8]]
{
    var result: [[UInt8]] = []
    var start = 0
    while start < bytes.count {
        let end = min(bytes.count, start + Int.random(in: 1...maximumChunk, using: &generator))
        result.append(Array(bytes[start..<end]))
        start = end
    }
    return result
}

/// Feeds chunks through a ``StreamDecoder``, as the server's and the client's channel handlers do, then signals
/// EOF.
///
/// - Returns: every frame decoded, in order.
func decodeAll(
    _ chunks: [[UInt8]],
    decoder: FrameDecoder = FrameDecoder(maximumPayloadLength: 64 * 1024 * 1024),
    finish: Bool = true
) throws -> [InboundFrame] {
    var stream = StreamDecoder(decoder)
    var frames: [InboundFrame] = []
    for chunk in chunks {
        try stream.decode(ByteBuffer(chunk)) { frames.append($0) }
    }
    if finish {
        try stream.decodeLast { frames.append($0) }
    }
    return frames
}

/// Decodes a whole byte array in one piece.
func decodeAll(
    _ bytes: [UInt8],
    decoder: FrameDecoder = FrameDecoder(maximumPayloadLength: 64 * 1024 * 1024)
)
    throws -> [InboundFrame]
{
    try decodeAll([bytes], decoder: decoder)
}

/// The error `body` throws, if it is a ``ProtocolError``; records an issue otherwise.
func protocolError(
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
) -> ProtocolError? {
    do {
        try body()
        Issue.record("expected a ProtocolError, nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as ProtocolError {
        return error
    } catch {
        Issue.record("expected a ProtocolError, got \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

/// One frame of every kind, including values this version does not name.
let sampleFrames: [Frame] = [
    .enqueue(knownID, payload: ByteBuffer(ascii("hello"))),
    .enqueue(knownID, payload: ByteBuffer()),
    .update(knownID, .inQueue),
    .update(knownID, .processing),
    .update(knownID, .done),
    .update(knownID, .failed),
    .update(knownID, .notSubmitted),
    .update(knownID, .notFound),
    .update(knownID, TaskStatus(rawValue: 77)),
    .done(knownID, result: ByteBuffer(ascii("HELLO"))),
    .done(knownID, result: ByteBuffer()),
    .status(knownID),
    .hello(Hello(maximumPayloadLength: 64 * 1024 * 1024)),
    .hello(Hello(version: 9, maximumPayloadLength: .max)),
    .submit(knownID, timeout: nil, payload: ByteBuffer(ascii("task"))),
    .submit(knownID, timeout: .milliseconds(1500), payload: ByteBuffer()),
    .submit(TaskID(high: 0, low: 0), timeout: .milliseconds(UInt32.max), payload: ByteBuffer([0, 0xff])),
    .result(knownID, ByteBuffer(ascii("result"))),
    .result(knownID, ByteBuffer()),
    .failed(knownID, .handlerError, message: "division by zero"),
    .failed(knownID, .workerCrashed, message: "killed by signal 9"),
    .failed(knownID, .timedOut, message: ""),
    .failed(knownID, .cancelled, message: "cancelled"),
    .failed(knownID, .rejected, message: "queue full"),
    .failed(knownID, .payloadTooLarge, message: "70000000 bytes"),
    .failed(knownID, .shuttingDown, message: "bye"),
    .failed(knownID, .interrupted, message: "killed at the drain deadline"),
    .failed(knownID, FailureReason(rawValue: 200), message: "naïve — ünïcödé ✓"),
    .cancel(knownID),
    .infoRequest,
    .info(ByteBuffer(ascii(#"{"version":"1.0.0"}"#))),
    .info(ByteBuffer()),
    .error("unknown frame type 9"),
    .error(""),
    .goodbye("the server is stopping"),
    .goodbye(""),
    .drain(true),
    .drain(false),
    .poolRequest,
    .pool(ByteBuffer(ascii(#"{"processes":[]}"#))),
    // Short texts: the decoder checks the layout, not the traceparent, and the mutation tests' control limit is 64.
    .traceContext(knownID, traceParent: "00-4bf9-00f0-01", traceState: ""),
    .traceContext(knownID, traceParent: "00-4bf9-00f0-01", traceState: "a=b"),
    .traceContext(knownID, traceParent: "", traceState: ""),
]
