import AiotaskProtocol
import AiotaskTestSupport
import NIOCore
import Testing

@Suite("Frame decoder fuzzing")
struct FrameDecoderFuzzTests {
    /// Bytes that look enough like frames to get past the first checks often: a known or random type byte,
    /// a small or random length, then random bytes, usually as many as announced.
    static func garbage(using generator: inout SplitMix64) -> [UInt8] {
        let knownTypes: [UInt8] = [1, 2, 3, 4, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87]
        var bytes: [UInt8] = []
        for _ in 0..<Int.random(in: 1...4, using: &generator) {
            let type =
                Int.random(in: 0..<8, using: &generator) == 0
                ? UInt8.random(in: 0...255, using: &generator) : knownTypes.randomElement(using: &generator)!
            let length =
                Int.random(in: 0..<8, using: &generator) == 0
                ? Int(UInt32.random(in: 0...UInt32.max, using: &generator)) : Int.random(in: 0...80, using: &generator)
            if type & 0x80 != 0 {
                bytes += [type, UInt8(length >> 24 & 0xff), UInt8(length >> 16 & 0xff), UInt8(length >> 8 & 0xff)]
                bytes.append(UInt8(length & 0xff))
            } else {
                bytes += [type, UInt8(length >> 8 & 0xff), UInt8(length & 0xff)]
            }
            // Mostly exactly as many bytes as announced (so decoding goes on to the next frame), else a few more
            // or fewer.
            let count =
                length <= 80 && Int.random(in: 0..<4, using: &generator) != 0
                ? length : Int.random(in: 0...min(length + 2, 90), using: &generator)
            bytes += generator.bytes(count: count)
        }
        return bytes
    }

    /// Decodes `bytes` in random chunks by driving `decode`/`decodeLast` directly, with a bound on the number
    /// of rounds, so that a decoder that yields without consuming fails the test instead of hanging it.
    ///
    /// Frames decoded before an error are kept in `frames`. Problems that are not protocol errors are added to
    /// `problems` (checking with `#expect` on every iteration would dominate the run time).
    static func decodeBounded(
        _ bytes: [UInt8],
        into frames: inout [InboundFrame],
        problems: inout [String],
        maximumChunk: Int = 16,
        using generator: inout SplitMix64
    ) throws {
        var decoder = FrameDecoder(maximumPayloadLength: 48, maximumControlFrameLength: 40)
        var buffer = ByteBuffer()
        // Each frame consumes at least a 3-byte header.
        let bound = bytes.count / 3 + 1
        var start = 0
        while start < bytes.count {
            let end = min(bytes.count, start + Int.random(in: 1...maximumChunk, using: &generator))
            buffer.writeBytes(bytes[start..<end])
            start = end
            while let frame = try decoder.decode(buffer: &buffer) {
                frames.append(frame)
                guard frames.count <= bound else { return problems.append("decoder looped on \(bytes)") }
            }
        }
        while let frame = try decoder.decodeLast(buffer: &buffer, seenEOF: true) {
            frames.append(frame)
            guard frames.count <= bound else { return problems.append("decodeLast looped on \(bytes)") }
        }
        if buffer.readableBytes != 0 { problems.append("bytes left after a clean end: \(bytes)") }
    }

    @Test("20,000 random inputs only ever yield frames or throw ProtocolError; what decodes re-encodes")
    func randomGarbage() throws {
        var generator = SplitMix64(seed: 0xa10_7a5c)
        var outcomes = (frames: 0, oversized: 0, errors: 0)
        var problems: [String] = []
        for iteration in 0..<20_000 {
            let bytes =
                iteration % 4 == 0
                ? generator.bytes(count: Int.random(in: 0...64, using: &generator))
                : Self.garbage(using: &generator)
            var frames: [InboundFrame] = []
            do {
                try Self.decodeBounded(bytes, into: &frames, problems: &problems, using: &generator)
            } catch is ProtocolError {
                outcomes.errors += 1
            } catch {
                problems.append("unexpected error \(error) on \(bytes)")
            }
            for inbound in frames {
                guard case .frame(let frame) = inbound else {
                    outcomes.oversized += 1
                    continue
                }
                outcomes.frames += 1
                // Whatever decodes must encode and decode to itself. (Compare frames, not bytes: a HELLO may
                // carry bytes this version ignores, and invalid UTF-8 in a message is repaired.)
                var buffer = ByteBuffer()
                try buffer.writeFrame(frame)
                // Repairing a message can triple its length, hence the larger control limit.
                var decoder = FrameDecoder(maximumPayloadLength: 48, maximumControlFrameLength: 3 * 40)
                let again = try decoder.decode(buffer: &buffer)
                if again != .frame(frame) || buffer.readableBytes != 0 {
                    problems.append("\(frame) re-decoded as \(String(describing: again))")
                }
            }
        }
        #expect(problems.isEmpty, "\(problems.prefix(5))")
        // The generator must reach every outcome, or it tests little.
        #expect(outcomes.frames > 4_000)
        #expect(outcomes.oversized > 500)
        #expect(outcomes.errors > 5_000)
    }

    @Test("Valid streams with corrupted bytes only ever yield frames or throw ProtocolError")
    func corruptedStreams() throws {
        var generator = SplitMix64(seed: 99)
        let valid = try encode(sampleFrames)
        var problems: [String] = []
        for _ in 0..<500 {
            var bytes = valid
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                bytes[Int.random(in: 0..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            }
            if Bool.random(using: &generator) { bytes.removeLast(Int.random(in: 0...40, using: &generator)) }
            var frames: [InboundFrame] = []
            do {
                try Self.decodeBounded(bytes, into: &frames, problems: &problems, maximumChunk: 64, using: &generator)
            } catch is ProtocolError {
            } catch {
                problems.append("unexpected error \(error)")
            }
        }
        #expect(problems.isEmpty, "\(problems.prefix(5))")
    }
}
