@_spi(CustomByteBufferAllocator) import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The receive allocator of a channel whose large frames are read straight into the buffer a ``StreamDecoder``
/// assembles them in, with no copy in user space.
///
/// NIO reads into buffers of its own choosing; a frame larger than one read is then copied, piece by piece, into
/// the buffer that assembles it — about as much CPU as the kernel's own copy out of the socket. With this
/// allocator, a decoder waiting for the rest of a large frame offers a *window* onto the empty end of its assembly
/// buffer (``ReadWindow``); the channel's next read goes into that window, and the decoder only moves its writer
/// index. Every other read uses a buffer sized by `sizing`, as before.
///
/// Install it with ``install(on:)``, which also limits the channel to one read per readiness event: NIO's pool of
/// read buffers must never keep a window for later reads.
package struct DirectFrameReads: RecvByteBufferAllocator {
    /// The window the decoder offers; shared by the decoder and the channel.
    package let window: ReadWindow
    private var sizing: AdaptiveRecvByteBufferAllocator

    /// Sizes reads by default: starting small and growing up to 1 MiB while reads keep filling the buffer, so a large
    /// message arrives in a few `read` calls (NIO's default stops at 64 KiB), and an idle connection holds no large
    /// buffer.
    package static let largeReads = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 2048, maximum: 1 << 20)

    /// - Parameters:
    ///   - window: Shared with the ``StreamDecoder`` of the channel's handler.
    ///   - sizing: Sizes every read not into a window.
    package init(window: ReadWindow = ReadWindow(), sizing: AdaptiveRecvByteBufferAllocator = largeReads) {
        self.window = window
        self.sizing = sizing
    }

    /// Makes `self` the channel's receive allocator. Call it on the channel's event loop, before the channel reads.
    /// A channel without synchronous options is left as it is: its reads are copied into frames as before.
    package func install(on channel: any Channel) throws {
        guard let options = channel.syncOptions else { return }
        try options.setOption(.maxMessagesPerRead, value: 1)
        try options.setOption(.recvAllocator, value: self)
    }

    package func buffer(allocator: ByteBufferAllocator) -> ByteBuffer {
        window.take() ?? sizing.buffer(allocator: allocator)
    }

    package func nextBufferSize() -> Int? {
        // No size while a window is offered: NIO's pool then asks `buffer(allocator:)` for a fresh buffer (given
        // that `record` says reads may grow) instead of reusing one of its own.
        window.isOffered ? nil : sizing.nextBufferSize()
    }

    package mutating func record(actualReadBytes: Int) -> Bool {
        if !window.lastReadWasWindow { _ = sizing.record(actualReadBytes: actualReadBytes) }
        return true
    }
}

/// Where the next read of a channel goes when its decoder waits for the rest of a large frame: a buffer over the
/// empty end of the decoder's assembly buffer.
///
/// Used only on the channel's event loop (hence `@unchecked Sendable`, which NIO's allocator protocol requires).
/// Public, unlike the rest of this target: ``StreamDecoder``'s public initializer takes one.
public final class ReadWindow: @unchecked Sendable {
    /// The window offered, until the channel takes it for a read.
    private var offered: ByteBuffer?
    /// The assembly buffer the window lies in, kept alive while a read may still land in it.
    private var assembly: ByteBuffer?
    /// Where the window starts, to recognise the read that filled it.
    private var start: UnsafeMutableRawPointer?
    /// Whether the channel took the window for its latest read.
    fileprivate(set) var lastReadWasWindow = false
    /// Bytes the channel has read straight into assembly buffers so far.
    public private(set) var bytesReadInPlace = 0

    public init() {}

    fileprivate var isOffered: Bool { offered != nil }

    fileprivate func take() -> ByteBuffer? {
        lastReadWasWindow = offered != nil
        defer { offered = nil }
        return offered
    }

    /// Offers the `count` bytes at `start`, which lie in `assembly`'s unused capacity, to the channel's next read.
    @usableFromInline
    func offer(_ count: Int, at start: UnsafeMutableRawPointer, in assembly: ByteBuffer) {
        self.offered = ByteBuffer(
            takingOwnershipOf: UnsafeMutableRawBufferPointer(start: start, count: count),
            allocator: Self.borrowedMemory,
            readerIndex: 0,
            writerIndex: 0
        )
        self.assembly = assembly
        self.start = start
    }

    /// Takes the window back, read into or not; the assembly buffer is the decoder's alone again.
    @usableFromInline
    func retract() {
        offered = nil
        assembly = nil
        start = nil
    }

    /// Takes the window back and tells whether `bytes` is what a read put into it (counting them if so); the
    /// assembly buffer is the decoder's alone again.
    @usableFromInline
    func retract(after bytes: ByteBuffer) -> Bool {
        let filled = start.map { start in
            bytes.withUnsafeReadableBytes { $0.baseAddress } == UnsafeRawPointer(start)
        }
        retract()
        guard filled == true else { return false }
        bytesReadInPlace += bytes.readableBytes
        return true
    }

    /// The allocator of window buffers: their memory belongs to an assembly buffer, so it is never freed through
    /// them. A window is only ever read into, in place; were one copied on write, its copy would leak.
    private static let borrowedMemory = ByteBufferAllocator(
        allocate: { size in
            assertionFailure("a read window is never copied")
            return malloc(size)
        },
        reallocate: { pointer, oldSize, newSize in
            assertionFailure("a read window never grows")
            guard let fresh = malloc(newSize) else { return nil }
            if let pointer { fresh.copyMemory(from: pointer, byteCount: min(oldSize, newSize)) }
            return fresh
        },
        deallocate: { _ in },
        copy: { destination, source, count in
            destination.copyMemory(from: source, byteCount: count)
        }
    )
}
