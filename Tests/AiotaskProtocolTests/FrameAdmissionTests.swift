import AiotaskProtocol
import AiotaskTransport
import NIOCore
import Testing

/// ``FrameDecoder/admitPartialTask``: a server decides, from its header, whether it holds a task frame's bytes while
/// the rest arrives.
@Suite("Admission of frames still arriving")
struct FrameAdmissionTests {
    /// The bytes of an `ENQUEUE` of `size` task bytes.
    private static func frame(_ id: TaskID, size: Int) throws -> [UInt8] {
        var buffer = ByteBuffer()
        try buffer.writeFrame(.enqueue(id, payload: ByteBuffer(repeating: 7, count: size)))
        return Array(buffer.readableBytesView)
    }

    /// Feeds `pieces` one by one through a ``StreamDecoder`` whose admission answers `admit`, recording each question.
    private static func decode(_ pieces: [[UInt8]], admit: Bool) throws -> (frames: [InboundFrame], asked: [Int]) {
        var decoder = FrameDecoder(maximumPayloadLength: 1 << 20)
        nonisolated(unsafe) var asked: [Int] = []
        decoder.admitPartialTask = { length in
            asked.append(length)
            return admit
        }
        var stream = StreamDecoder(decoder)
        var frames: [InboundFrame] = []
        for piece in pieces { try stream.decode(ByteBuffer(bytes: piece)) { frames.append($0) } }
        return (frames, asked)
    }

    @Test("a frame that arrives whole is never asked about")
    func wholeFrame() throws {
        let id = TaskID.random()
        let (frames, asked) = try Self.decode([try Self.frame(id, size: 1000)], admit: false)
        #expect(frames == [.frame(.enqueue(id, payload: ByteBuffer(repeating: 7, count: 1000)))])
        #expect(asked.isEmpty)
    }

    @Test("a frame admitted from its header is asked about once and decodes whole, however it is split")
    func admitted() throws {
        let id = TaskID.random()
        let bytes = try Self.frame(id, size: 30_000)
        // Two bytes of header first, then pieces of 1,000 bytes.
        let pieces =
            [Array(bytes[..<2])]
            + stride(from: 2, to: bytes.count, by: 1000).map { Array(bytes[$0..<min($0 + 1000, bytes.count)]) }
        let (frames, asked) = try Self.decode(pieces, admit: true)
        #expect(frames == [.frame(.enqueue(id, payload: ByteBuffer(repeating: 7, count: 30_000)))])
        #expect(asked.count == 1)
        #expect(asked.first == 30_000 + TaskID.byteCount)
    }

    @Test(
        "a frame refused from its header is skipped without being held, reported with its id, and the next frame decodes"
    )
    func refused() throws {
        let refusedID = TaskID.random()
        let nextID = TaskID.random()
        let bytes = try Self.frame(refusedID, size: 30_000)
        let next = try Self.frame(nextID, size: 10)
        let (frames, asked) = try Self.decode(
            [Array(bytes[..<100]), Array(bytes[100...]) + next],
            admit: false
        )
        #expect(
            frames == [
                .oversized(.enqueue, refusedID, length: 30_000),
                .frame(.enqueue(nextID, payload: ByteBuffer(repeating: 7, count: 10))),
            ]
        )
        #expect(asked == [30_000 + TaskID.byteCount])
    }
}
