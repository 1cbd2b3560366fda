import NIOCore

/// Cuts the bytes a channel handler reads into messages with a `NIOSingleStepByteToMessageDecoder`, handing each
/// message straight to the handler.
///
/// This is what NIO's `ByteToMessageHandler` does, minus a pipeline step per message: there, each decoded message
/// is wrapped in an `NIOAny`, passed down the pipeline and unwrapped with a dynamic cast — a measurable share of
/// the server's time when a read holds dozens of small frames. Bytes of an incomplete message are kept until the
/// rest arrives.
public struct StreamDecoder<Decoder: NIOSingleStepByteToMessageDecoder> {
    @usableFromInline var decoder: Decoder
    /// Bytes read and not decoded yet: the start of an incomplete message.
    @usableFromInline var pending = ByteBuffer()

    @inlinable
    public init(_ decoder: Decoder) {
        self.decoder = decoder
    }

    /// Bytes received and not decoded yet.
    @inlinable
    public var pendingBytes: Int { pending.readableBytes }

    /// Decodes every whole message in what was pending followed by `bytes`, calling `body` with each in order.
    ///
    /// - Throws: what the decoder or `body` throws; the stream is then broken, and nothing more is decoded.
    @inlinable
    public mutating func decode(
        _ bytes: ByteBuffer,
        _ body: (Decoder.InboundOut) throws -> Void
    ) throws {
        if pending.readableBytes == 0 {
            pending = bytes
        } else {
            var bytes = bytes
            if pending.writableBytes < bytes.readableBytes, pending.readerIndex > 0 { pending.discardReadBytes() }
            pending.writeBuffer(&bytes)
        }
        while let message = try decoder.decode(buffer: &pending) {
            try body(message)
        }
        if pending.readableBytes == 0 { pending = ByteBuffer() }
    }

    /// At the end of the stream: decodes what is left, calling `body` with each message.
    ///
    /// - Throws: what the decoder throws, typically because the stream ended inside a message.
    @inlinable
    public mutating func decodeLast(_ body: (Decoder.InboundOut) throws -> Void) throws {
        while let message = try decoder.decodeLast(buffer: &pending, seenEOF: true) {
            try body(message)
        }
        pending = ByteBuffer()
    }
}
