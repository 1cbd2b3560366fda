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
