import AiotaskProtocol
import AiotaskTransport
import NIOCore
import NIOEmbedded
import Testing

/// The writer every channel shares, and the reading path beside it, on an `EmbeddedChannel`.
@Suite("Coalescing frame writer and inbound stream")
struct CoalescingFrameWriterTests {
    let id = TaskID(high: 7, low: 9)

    @Test("frames appended in one tick leave in one write, flushed once at the tick's end")
    func coalesces() throws {
        let channel = EmbeddedChannel()
        let writer = CoalescingFrameWriter(channel: channel)
        try writer.append(.update(id, .processing))
        try writer.append(.result(id, ByteBuffer(string: "small")))
        writer.append { $0.writeHandlerRequest(ByteBuffer(string: "task")) }
        // Nothing leaves before the tick ends.
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        channel.embeddedEventLoop.run()
        var expected = ByteBuffer()
        try expected.writeFrame(.update(id, .processing))
        try expected.writeFrame(.result(id, ByteBuffer(string: "small")))
        expected.writeHandlerRequest(ByteBuffer(string: "task"))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == expected)
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        // A flush on a read's completion sends at once, and the tick's end sends nothing again.
        try writer.append(.cancel(id))
        writer.flush()
        #expect(try channel.readOutbound(as: ByteBuffer.self) != nil)
        channel.embeddedEventLoop.run()
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
    }

    @Test("a large payload follows its header as it is, not copied, and the bytes are those of the whole frame")
    func largePayloadsAreNotCopied() throws {
        let channel = EmbeddedChannel()
        let writer = CoalescingFrameWriter(channel: channel)
        let large = ByteBuffer(repeating: 0xab, count: CoalescingFrameWriter.copyLimit + 1)
        try writer.append(.update(id, .done))
        try writer.append(.submit(id, timeout: .seconds(3), payload: large))
        writer.append(header: { $0.writeHandlerRequestHeader(length: large.readableBytes) }, payload: large)
        channel.embeddedEventLoop.run()
        var written: [ByteBuffer] = []
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { written.append(buffer) }
        try #require(written.count == 4)
        #expect(written[1].readableBytesView.elementsEqual(large.readableBytesView))
        #expect(written[3].readableBytesView.elementsEqual(large.readableBytesView))
        // The same memory as the task's: not a copy.
        let base = large.withUnsafeReadableBytes { $0.baseAddress }
        #expect(written[1].withUnsafeReadableBytes { $0.baseAddress } == base)
        #expect(written[3].withUnsafeReadableBytes { $0.baseAddress } == base)
        var expected = ByteBuffer()
        try expected.writeFrame(.update(id, .done))
        try expected.writeFrame(.submit(id, timeout: .seconds(3), payload: large))
        expected.writeHandlerRequest(large)
        var all = ByteBuffer()
        for var buffer in written { all.writeBuffer(&buffer) }
        #expect(all == expected)
    }

    @Test("a discarding writer sends nothing more")
    func discard() throws {
        let channel = EmbeddedChannel()
        let writer = CoalescingFrameWriter(channel: channel)
        try writer.append(.status(id))
        writer.discard()
        try writer.append(.status(id))
        channel.embeddedEventLoop.run()
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
    }

    @Test("the stream's end decodes what is left, but not from inside a read, nor after the framing broke")
    func inboundStreamEnd() throws {
        var bytes = ByteBuffer()
        try bytes.writeFrame(.status(id))
        try bytes.writeFrame(.cancel(id))

        // A message that ends the stream from inside the read: the rest is for no one.
        let stream = InboundStream(FrameDecoder(maximumPayloadLength: 100))
        var received: [InboundFrame] = []
        var errors: [any Error] = []
        stream.read(bytes.getSlice(at: 0, length: bytes.readableBytes - 3)!) {
            received.append($0)
            stream.end(receive: { received.append($0) }, broke: { errors.append($0) })
        } broke: {
            errors.append($0)
        }
        #expect(received == [.frame(.status(id))])
        #expect(errors.isEmpty)

        // At the end, a frame cut short breaks the stream; whole frames before it arrive.
        let ending = InboundStream(FrameDecoder(maximumPayloadLength: 100))
        received = []
        ending.read(bytes.getSlice(at: 0, length: 10)!, receive: { received.append($0) }) { errors.append($0) }
        #expect(received.isEmpty)
        ending.end(receive: { received.append($0) }) { errors.append($0) }
        #expect(errors.count == 1)
        // Over: nothing more is decoded.
        #expect(!ending.read(bytes, receive: { received.append($0) }) { errors.append($0) })
        #expect(received.isEmpty)

        // A stream that broke the framing decodes nothing more, at its end either.
        let broken = InboundStream(FrameDecoder(maximumPayloadLength: 100))
        errors = []
        broken.read(ByteBuffer(bytes: [0x7f, 0, 0]), receive: { received.append($0) }) { errors.append($0) }
        #expect(errors.count == 1)
        #expect(!broken.read(bytes, receive: { received.append($0) }) { errors.append($0) })
        broken.end(receive: { received.append($0) }) { errors.append($0) }
        #expect(received.isEmpty)
        #expect(errors.count == 1)
    }
}
