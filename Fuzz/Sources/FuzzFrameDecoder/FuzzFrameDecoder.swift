import AiotaskProtocol
import NIOCore

/// libFuzzer's entry point: decodes one input as a stream from a client (or a server) and checks what comes out.
///
/// The first byte of the input chooses how the rest is split into reads, so that the fuzzer explores frames
/// cut at every point. Anything but frames, oversized-frame notices and `ProtocolError` — a crash, a trap, a
/// sanitizer report, a decoder that stops consuming, or a frame that does not survive re-encoding — is a finding.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrameDecoder(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let chunk = Int(data[0] % 32) + 1
    let bytes = UnsafeBufferPointer(start: data + 1, count: size - 1)
    var decoder = FrameDecoder(maximumPayloadLength: 64, maximumControlFrameLength: 128)
    var buffer = ByteBuffer()
    var frames: [InboundFrame] = []
    // Each frame takes at least a 3-byte header, so more frames than this means the decoder loops.
    let bound = bytes.count / 3 + 1
    do {
        var start = 0
        while start < bytes.count {
            let end = min(bytes.count, start + chunk)
            buffer.writeBytes(UnsafeBufferPointer(rebasing: bytes[start..<end]))
            start = end
            while let frame = try decoder.decode(buffer: &buffer) {
                frames.append(frame)
                precondition(frames.count <= bound, "the decoder yields frames without consuming bytes")
            }
        }
        while let frame = try decoder.decodeLast(buffer: &buffer, seenEOF: true) {
            frames.append(frame)
            precondition(frames.count <= bound, "decodeLast yields frames without consuming bytes")
        }
        precondition(buffer.readableBytes == 0, "bytes left after a clean end of stream")
    } catch is ProtocolError {
        // Refusing the input is a correct outcome.
    } catch {
        preconditionFailure("an error that is not a ProtocolError: \(error)")
    }
    for case .frame(let frame) in frames {
        var encoded = ByteBuffer()
        do {
            try encoded.writeFrame(frame)
        } catch {
            preconditionFailure("a decoded frame does not encode: \(frame): \(error)")
        }
        // A repaired (invalid UTF-8) message can grow up to three times.
        var again = FrameDecoder(maximumPayloadLength: 64, maximumControlFrameLength: 3 * 128)
        let decoded = try? again.decode(buffer: &encoded)
        precondition(decoded == .frame(frame), "\(frame) re-decodes as \(String(describing: decoded))")
    }
    return 0
}

/// libFuzzer's driver, which parses its options, then runs the inputs or the fuzzing loop.
@_silgen_name("LLVMFuzzerRunDriver")
private func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<Int32>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> Int32
) -> Int32

/// The program's entry point. SwiftPM links an executable target's `main` to `<target>_main`, so libFuzzer's own
/// `main` is not used; this starts its driver instead.
@_cdecl("FuzzFrameDecoder_main")
public func fuzzerMain(
    _ argc: Int32,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
) -> Int32 {
    var argc = argc
    var argv = argv
    return runFuzzerDriver(&argc, &argv) { data, size in fuzzFrameDecoder(data, size) }
}
