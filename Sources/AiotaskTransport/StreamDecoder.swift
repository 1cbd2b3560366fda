import AiotaskProtocol
import NIOCore

/// Cuts the bytes a channel handler reads into messages with a ``LengthPrefixedDecoder``, handing each message
/// straight to the handler, and copying each byte at most once.
///
/// This is what NIO's `ByteToMessageHandler` does, minus a pipeline step per message: there, each decoded message
/// is wrapped in an `NIOAny`, passed down the pipeline and unwrapped with a dynamic cast — a measurable share of
/// the server's time when a read holds dozens of small frames.
///
/// It also copies less. `ByteToMessageHandler` appends every read to one accumulation buffer until a frame is
/// complete: a megabyte-sized frame arriving in many reads is copied as the buffer grows (and grows again), and
/// the bytes of the next frame behind it are copied along. Here, messages are decoded straight from each read
/// buffer; when a frame straddles reads, only the bytes that frame lacks are copied, into a buffer sized for it
/// from its header (after the decoder's limits are checked); whatever follows the frame in the read is decoded
/// from the read buffer again. Memory reserved ahead of the bytes that arrived is bounded (``reserveAhead``).
///
/// With a ``ReadWindow`` (the channel reading through ``DirectFrameReads``), the rest of a large frame is not even
/// copied once: the channel reads it straight into the frame's buffer.
///
/// Reads that come out of TLS are the other way round (``copiesReads``): NIOSSL decrypts every read into one buffer
/// it keeps and reuses, so any slice kept of it — a message, the start of a frame — makes NIOSSL copy that whole
/// buffer (its capacity, up to a megabyte) before its next read. Such reads are copied once, each byte, into
/// buffers of the decoder's own, and nothing of NIOSSL's buffer is kept.
public struct StreamDecoder<Decoder: LengthPrefixedDecoder> {
    /// The framing; its settings may change between reads.
    public var decoder: Decoder
    /// Bytes read and not decoded yet: a slice of a read buffer, or a buffer assembling one frame.
    @usableFromInline var pending = ByteBuffer()
    /// Whether `pending` is a buffer of this decoder's own that no decoded message shares, so bytes can be appended
    /// in place.
    @usableFromInline var pendingIsAssembly = false
    /// Allocates assembly buffers; nil for ``FastCopyBuffers`` of the exact size needed.
    @usableFromInline let allocator: ByteBufferAllocator?
    /// Where the channel reads the rest of a large frame, if it reads through ``DirectFrameReads``.
    @usableFromInline let readWindow: ReadWindow?
    /// Whether each read is copied into buffers of the decoder's own, none of it kept: the reads come in a buffer
    /// their producer reuses (NIOSSL's).
    @usableFromInline let copiesReads: Bool

    /// Most bytes reserved for a frame beyond those received so far (or as many as received, if more): a frame up
    /// to this size gets one buffer of its exact size; a larger one grows by doubling.
    public static var reserveAhead: Int { 2 << 20 }
    /// Bytes copied at a time while a frame's header is incomplete.
    @usableFromInline static var headerProbe: Int { 64 }
    /// Fewest bytes a frame must lack for its rest to be read straight into its buffer: below that, a copy costs
    /// less than the extra reads of stopping at the frame's end.
    @usableFromInline static var directReadMinimum: Int { 64 * 1024 }

    /// - Parameters:
    ///   - decoder: The framing.
    ///   - allocator: Allocates the buffers frames are assembled in. By default they are ``FastCopyBuffers`` of the
    ///     exact size needed; a `ByteBufferAllocator` rounds sizes up to a power of two.
    ///   - readWindow: The window of the channel's ``DirectFrameReads``, if it reads through them.
    ///   - copiesReads: Whether the reads come in a buffer their producer reuses, as TLS's do: nothing of it is kept.
    @inlinable
    public init(
        _ decoder: Decoder,
        allocator: ByteBufferAllocator? = nil,
        readWindow: ReadWindow? = nil,
        copiesReads: Bool = false
    ) {
        self.decoder = decoder
        self.allocator = allocator
        self.readWindow = readWindow
        self.copiesReads = copiesReads
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
        if let readWindow, readWindow.retract(after: bytes) {
            // The bytes are in place already, behind those pending.
            pending.moveWriterIndex(forwardBy: bytes.readableBytes)
            try decodeAvailable(body)
            offerReadWindow()
            return
        }
        try decodeCopying(bytes, body)
        offerReadWindow()
    }

    /// Decodes what was pending followed by `bytes`, a buffer of the channel's own.
    @inlinable
    mutating func decodeCopying(
        _ bytes: ByteBuffer,
        _ body: (Decoder.InboundOut) throws -> Void
    ) throws {
        var incoming = bytes
        while incoming.readableBytes > 0 {
            if pending.readableBytes == 0 {
                if copiesReads {
                    // Every byte, once, into a buffer sized as a frame's assembly is: the messages decoded from it
                    // and the start of a frame it ends with share no storage with the producer's buffer.
                    pending = makeAssembly(
                        adding: incoming.readableBytes,
                        frameLength: decoder.frameLength(at: incoming)
                    )
                    pending.writeBuffer(&incoming)
                    pendingIsAssembly = true
                } else {
                    // Nothing pending: decode straight from the read buffer.
                    pending = incoming
                    pendingIsAssembly = false
                }
                try decodeAvailable(body)
                return
            }
            // Complete the frame at the front with just the bytes it lacks (or a few, while its header is
            // incomplete); what follows it in this read is decoded from the read buffer, not copied.
            let frameLength = decoder.frameLength(at: pending)
            let wanted = frameLength.map { $0 - pending.readableBytes } ?? Self.headerProbe
            let take = min(max(wanted, 1), incoming.readableBytes)
            if !pendingIsAssembly || pending.writableBytes < take {
                pending = makeAssembly(adding: take, frameLength: frameLength)
                pendingIsAssembly = true
            }
            var slice = incoming.readSlice(length: take)!
            pending.writeBuffer(&slice)
            try decodeAvailable(body)
        }
    }

    /// When a large frame lacks enough bytes, offers the empty end of its buffer to the channel's next read (making
    /// that buffer now if the frame's start is still in a read buffer).
    @inlinable
    mutating func offerReadWindow() {
        guard let readWindow, let frameLength = decoder.frameLength(at: pending),
            frameLength - pending.readableBytes >= Self.directReadMinimum
        else { return }
        if !pendingIsAssembly {
            pending = makeAssembly(adding: 0, frameLength: frameLength)
            pendingIsAssembly = true
        }
        let count = min(frameLength - pending.readableBytes, pending.writableBytes)
        guard count >= Self.directReadMinimum else { return }
        // The buffer is this decoder's alone (no message shares it), so this is its own memory, which stays put:
        // nothing is appended to the buffer until the window is retracted.
        let start = pending.withUnsafeMutableWritableBytes { $0.baseAddress! }
        readWindow.offer(count, at: start, in: pending)
    }

    /// A buffer of this decoder's own holding the pending bytes, with room for `adding` more, and — when the frame's
    /// length is known — for the rest of the frame, within ``reserveAhead`` of what has arrived.
    @inlinable
    mutating func makeAssembly(adding: Int, frameLength: Int?) -> ByteBuffer {
        let received = pending.readableBytes + adding
        var capacity = received
        if let frameLength {
            capacity = max(received, min(frameLength, received + max(received, Self.reserveAhead)))
        }
        var assembly = allocator?.buffer(capacity: capacity) ?? FastCopyBuffers.buffer(exactCapacity: capacity)
        assembly.writeBuffer(&pending)
        pending = ByteBuffer()
        return assembly
    }

    /// Delivers every message complete in `pending`.
    @inlinable
    mutating func decodeAvailable(_ body: (Decoder.InboundOut) throws -> Void) throws {
        while let message = try decoder.decode(buffer: &pending) {
            // The message may share the buffer's storage: never append to it in place again.
            pendingIsAssembly = false
            try body(message)
        }
        if pending.readableBytes == 0 {
            pending = ByteBuffer()
            pendingIsAssembly = false
        }
    }

    /// At the end of the stream: decodes what is left, calling `body` with each message.
    ///
    /// - Throws: what the decoder throws, typically because the stream ended inside a message.
    @inlinable
    public mutating func decodeLast(_ body: (Decoder.InboundOut) throws -> Void) throws {
        readWindow?.retract()
        while let message = try decoder.decodeLast(buffer: &pending, seenEOF: true) {
            try body(message)
        }
        pending = ByteBuffer()
        pendingIsAssembly = false
    }
}
