import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOCore
import NIOEmbedded
import NIOTestUtils
import Testing

/// The decoder in a channel pipeline, as the server and the client run it, fed mutated streams of valid frames,
/// and the corpus of inputs kept from fuzzing with libFuzzer (see `Fuzz/README.md`).
@Suite("Frame decoder: mutated streams and fuzzing corpus")
struct FrameDecoderMutationTests {
    /// The decoder every test here uses: small limits, so that oversized frames are common.
    static func makeDecoder() -> FrameDecoder {
        FrameDecoder(maximumPayloadLength: 48, maximumControlFrameLength: 64)
    }

    @Test("NIO's decoder verifier: every frame decodes alike whole, byte by byte and in any split")
    func verifier() throws {
        var pairs = try sampleFrames.compactMap { frame -> (ByteBuffer, [InboundFrame])? in
            // Frames over this decoder's limits are checked below.
            guard frame.payloadLength <= 48 else { return nil }
            return (ByteBuffer(try encode(frame)), [.frame(frame)])
        }
        let oversized = try encode(.enqueue(knownID, payload: ByteBuffer(repeating: 0x61, count: 100)))
        pairs.append((ByteBuffer(oversized), [.oversized(.enqueue, knownID, length: 100)]))
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs, decoderFactory: Self.makeDecoder)
    }

    @Test("3,000 mutated frame streams in a channel pipeline only ever yield frames or a ProtocolError")
    func mutatedStreamsInPipeline() throws {
        var mutator = Mutator(generator: SplitMix64(seed: 0x5eed_f00d))
        let legacy = try encode(sampleFrames.filter { !$0.type.isExtension })
        let extended = try encode(sampleFrames.filter(\.type.isExtension))
        let everything = try encode(sampleFrames)
        var outcomes = (clean: 0, errors: 0)
        var problems: [String] = []
        for iteration in 0..<3000 {
            let seed = [legacy, extended, everything][iteration % 3]
            let bytes = mutator.mutate(seed, splices: [legacy, extended], maximumMutations: 6)
            switch Self.feed(bytes, chunking: &mutator.generator) {
            case .success: outcomes.clean += 1
            case .failure(let error as ProtocolError): _ = error; outcomes.errors += 1
            case .failure(let error): problems.append("\(error) on \(bytes)")
            }
        }
        #expect(problems.isEmpty, "\(problems.prefix(3))")
        // Both outcomes must be common, or the mutations test little.
        #expect(outcomes.clean > 100)
        #expect(outcomes.errors > 1000)
    }

    @Test("every input in the fuzzing corpus decodes to frames that re-encode, or to a ProtocolError")
    func corpus() throws {
        let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("FuzzCorpus")
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { !$0.hasPrefix(".") }
        #expect(names.count >= 1, "the corpus is empty")
        for name in names.sorted() {
            let input = Array(try Data(contentsOf: directory.appendingPathComponent(name)))
            if let problem = Self.replay(input) { Issue.record("\(name): \(problem)") }
        }
    }

    /// What `Fuzz/Sources/FuzzFrameDecoder` does with one input, returning what it would crash on: the first
    /// byte sets the size of the reads the rest is split into; decoding must end in frames or a `ProtocolError`,
    /// and every frame must encode and decode to itself.
    static func replay(_ input: [UInt8]) -> String? {
        guard let first = input.first else { return nil }
        let bytes = Array(input.dropFirst())
        var frames: [InboundFrame] = []
        do {
            var decoder = FrameDecoder(maximumPayloadLength: 64, maximumControlFrameLength: 128)
            var buffer = ByteBuffer()
            for chunk in chunks(of: bytes, sizes: [Int(first % 32) + 1]) {
                buffer.writeBytes(chunk)
                while let frame = try decoder.decode(buffer: &buffer) {
                    frames.append(frame)
                    if frames.count > bytes.count / 3 + 1 { return "the decoder yields frames without consuming" }
                }
            }
            while let frame = try decoder.decodeLast(buffer: &buffer, seenEOF: true) {
                frames.append(frame)
                if frames.count > bytes.count / 3 + 1 { return "decodeLast yields frames without consuming" }
            }
            if buffer.readableBytes != 0 { return "bytes left after a clean end of stream" }
        } catch is ProtocolError {
        } catch {
            return "an error that is not a ProtocolError: \(error)"
        }
        for case .frame(let frame) in frames {
            var encoded = ByteBuffer()
            do {
                try encoded.writeFrame(frame)
                var again = FrameDecoder(maximumPayloadLength: 64, maximumControlFrameLength: 3 * 128)
                let decoded = try again.decode(buffer: &encoded)
                if decoded != .frame(frame) { return "\(frame) re-decodes as \(String(describing: decoded))" }
            } catch {
                return "\(frame) does not re-encode: \(error)"
            }
        }
        return nil
    }

    /// Feeds `bytes` in random chunks to an `EmbeddedChannel` running the decoder, then closes it: the success
    /// of a stream that decoded to its end, or the first error the pipeline raised.
    static func feed(_ bytes: [UInt8], chunking generator: inout SplitMix64) -> Result<[InboundFrame], any Error> {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(makeDecoder()))
        var frames: [InboundFrame] = []
        do {
            for chunk in randomChunks(of: bytes, maximumChunk: 24, using: &generator) {
                try channel.writeInbound(ByteBuffer(chunk))
                while let frame = try channel.readInbound(as: InboundFrame.self) { frames.append(frame) }
            }
            // The end of the stream: what is left must be a whole frame, or it is a truncated stream.
            _ = try channel.finish(acceptAlreadyClosed: true)
            return .success(frames)
        } catch {
            _ = try? channel.finish(acceptAlreadyClosed: true)
            return .failure(error)
        }
    }
}
