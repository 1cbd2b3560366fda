import AiotaskProtocol
import NIOCore

/// The reading side of a channel handler that decodes its channel's bytes with a ``StreamDecoder``: each read cut
/// into messages, and at the channel's end what is left — the one path the server's client connections, the client
/// library and the links to pool processes share.
///
/// A message handed on may close the channel, and closing it ends the stream from inside a read:
/// ``end(receive:broke:)`` then decodes nothing, since the bytes behind that message are no longer for anyone. A
/// stream that broke the framing decodes nothing more either. (The state lives in a class of its own so that the end, which arrives in
/// the middle of a read, does not touch the decoder being read with.)
///
/// Confined to the channel's event loop.
///
/// Its stored properties are `@exclusivity(unchecked)`: it lives on one event loop and the state machines it feeds
/// never call back into it, so no two accesses overlap, and the run-time checks Swift would otherwise make on each
/// access of a class's property cost about a tenth of the daemon's CPU per task (docs/performance.md).
package final class InboundStream<Decoder: LengthPrefixedDecoder> {
    /// The decoder; its framing's settings may change between reads.
    package var decoder: StreamDecoder<Decoder>
    /// Set while messages are being handed on, one of which may close the channel.
    @exclusivity(unchecked) private var isDecoding = false
    /// Set once the stream broke the framing, or ended.
    package private(set) var isOver = false

    /// - Parameters:
    ///   - decoder: The framing.
    ///   - readWindow: The window of the channel's ``DirectFrameReads``, if it reads through them.
    ///   - copiesReads: Whether the reads come in a buffer their producer reuses (TLS): see ``StreamDecoder``.
    package init(_ decoder: Decoder, readWindow: ReadWindow? = nil, copiesReads: Bool = false) {
        self.decoder = StreamDecoder(decoder, readWindow: readWindow, copiesReads: copiesReads)
    }

    /// Decodes the bytes of one read, handing each whole message to `receive` in order. When the bytes break the
    /// framing, `broke` gets the error, and nothing more is decoded.
    ///
    /// - Returns: whether a message was handed on.
    @discardableResult
    package func read(
        _ bytes: ByteBuffer,
        receive: (Decoder.InboundOut) -> Void,
        broke: (any Error) -> Void
    ) -> Bool {
        guard !isOver else { return false }
        isDecoding = true
        defer { isDecoding = false }
        var received = false
        do {
            try decoder.decode(bytes) {
                received = true
                receive($0)
            }
        } catch {
            isOver = true
            broke(error)
        }
        return received
    }

    /// Decodes nothing more: the stream or the channel failed.
    package func stop() {
        isOver = true
    }

    /// At the channel's end: hands on the messages that arrived just before it, and reports a stream that ends inside
    /// a message to `broke` — unless the end comes from inside ``read(_:receive:broke:)`` or the stream is over.
    package func end(receive: (Decoder.InboundOut) -> Void, broke: (any Error) -> Void) {
        guard !isOver, !isDecoding else { return }
        isOver = true
        do {
            try decoder.decodeLast { receive($0) }
        } catch {
            broke(error)
        }
    }
}
