import NIOCore

/// A decoder for a length-prefixed framing that can tell, from a frame's header alone, how long the whole frame is.
public protocol LengthPrefixedDecoder: NIOSingleStepByteToMessageDecoder {
    /// The length, header included, of the frame at the front of `buffer`, once its header is complete and the frame
    /// will be decoded when all of it is there; nil while the header is incomplete, and for anything the decoder
    /// handles otherwise (a frame over its limit, bytes being skipped, a malformed header).
    ///
    /// Only a length that passed the decoder's limits may be returned: a ``StreamDecoder`` reserves memory for it.
    func frameLength(at buffer: ByteBuffer) -> Int?
}

extension NIOSingleStepByteToMessageDecoder {
    /// The end of a stream in a length-prefixed framing: the next whole message, or nil when no byte is left; bytes
    /// left that make no whole message are a message the end of the stream cut short: they are skipped, and
    /// `truncated` (given how many there were) says what to throw.
    ///
    /// Every framing's `decodeLast(buffer:seenEOF:)` ends this way.
    @inlinable
    public mutating func decodeLastWhole<Failure: Error>(
        buffer: inout ByteBuffer,
        truncated: (_ bytesLeft: Int) -> Failure
    ) throws -> InboundOut? {
        if let message = try decode(buffer: &buffer) { return message }
        guard buffer.readableBytes > 0 else { return nil }
        let left = buffer.readableBytes
        buffer.moveReaderIndex(to: buffer.writerIndex)
        throw truncated(left)
    }
}
