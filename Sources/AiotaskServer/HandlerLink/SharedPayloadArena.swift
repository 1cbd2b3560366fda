import AiotaskProtocol
import AiotaskTransport
import CAiotaskShims
import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Memory a pool process running a library handler shares with the daemon for large tasks and results, so that
/// their bytes cross between the two processes with one copy on each side instead of through the link's pipes.
///
/// It lives in the same `memfd` as the process's ``TaskClaims``, after the claims page: a page of header (the
/// process's announcement that it maps the arena) and ``capacity`` bytes of payload space. The daemon places a
/// large task in a region of the space it allocated (``SharedPayloadSpace``) and sends only the region's place on the
/// link; the process copies the task out, and puts a result that fits back in the same region. A region belongs to
/// one task from the moment it is sent until its reply is read, or it is withdrawn unclaimed; the link's messages
/// order every access, so neither side ever reads a region the other is writing.
package final class SharedPayloadArena {
    /// The environment variable giving a pool process the payload space's size in bytes; set only when the memory was
    /// made. It also tells the process that its link uses ``SharedPayloadFraming``.
    static let capacityKey = "AIOTASK_SHARED_PAYLOAD_BYTES"
    /// The payload space of each pool process running a library handler, unless configured otherwise
    /// (``ServerConfiguration/sharedPayloadBytes``).
    static let defaultCapacity = 4 << 20
    /// Smallest payload placed in the arena; smaller ones travel inline, where a copy costs less than the bookkeeping.
    static let threshold = 64 * 1024

    /// Where the arena starts in the `memfd`: after the task-claims page.
    private static let fileOffset = Int(AIOTASK_CLAIMS_SIZE)
    /// The header page before the payload space.
    private static let headerSize = 4096
    private static let announcedMagic: UInt32 = 0x6169_6F70  // "aiop"

    private let mapping: UnsafeMutableRawPointer
    private let mappingSize: Int
    /// The payload space.
    private let space: UnsafeMutableRawPointer
    /// Bytes of payload space.
    let capacity: Int

    private init(mapping: UnsafeMutableRawPointer, capacity: Int) {
        self.mapping = mapping
        self.mappingSize = Self.headerSize + capacity
        self.space = mapping + Self.headerSize
        self.capacity = capacity
    }

    deinit {
        munmap(mapping, mappingSize)
    }

    /// In the daemon: grows the task-claims memory `descriptor` to hold an arena of `capacity` bytes after the
    /// claims, and maps it; nil if the system refuses (the process then gets every payload through its link).
    static func create(on descriptor: CInt, capacity: Int = defaultCapacity) -> SharedPayloadArena? {
        guard ftruncate(descriptor, off_t(fileOffset + headerSize + capacity)) == 0 else { return nil }
        return map(descriptor, capacity: capacity)
    }

    /// In a pool process: whether the daemon made an arena for it — its link then uses ``SharedPayloadFraming``,
    /// whether or not the process can map the arena — and the arena, mapped and announced, unless mapping failed.
    ///
    /// Call it before ``TaskClaims/inherited()``, which closes the descriptor. The variable is cleared, so programs
    /// the handler starts do not take it for theirs.
    package static func inherited() -> (isOffered: Bool, arena: SharedPayloadArena?) {
        guard let value = getenv(capacityKey) else { return (false, nil) }
        let capacity = Int(String(cString: value))
        unsetenv(capacityKey)
        guard let capacity, capacity > 0,
            let descriptor = getenv(TaskClaims.descriptorKey).flatMap({ CInt(String(cString: $0)) }),
            let arena = map(descriptor, capacity: capacity)
        else { return (true, nil) }
        aiotask_store_release(arena.announcement, announcedMagic)
        return (true, arena)
    }

    private static func map(_ descriptor: CInt, capacity: Int) -> SharedPayloadArena? {
        let size = headerSize + capacity
        let memory = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, off_t(fileOffset))
        guard let memory, memory != MAP_FAILED else { return nil }
        return SharedPayloadArena(mapping: memory, capacity: capacity)
    }

    private var announcement: UnsafeMutablePointer<UInt32> {
        mapping.assumingMemoryBound(to: UInt32.self)
    }

    /// In the daemon: whether the process mapped the arena, so that tasks may be placed in it.
    var isAnnounced: Bool {
        aiotask_load_acquire(announcement) == Self.announcedMagic
    }

    /// Whether `length` bytes at `offset` lie inside the payload space.
    func contains(offset: Int, length: Int) -> Bool {
        offset >= 0 && length >= 0 && offset <= capacity && length <= capacity - offset
    }

    /// Copies `bytes` into the payload space at `offset`; the caller owns that region and checked that it fits.
    func write(_ bytes: ByteBuffer, at offset: Int) {
        precondition(contains(offset: offset, length: bytes.readableBytes))
        bytes.withUnsafeReadableBytes { source in
            guard let base = source.baseAddress else { return }
            (space + offset).copyMemory(from: base, byteCount: source.count)
        }
    }

    /// A copy of the `length` bytes at `offset` of the payload space, in a buffer the kernel copies from fast.
    func read(offset: Int, length: Int) -> ByteBuffer {
        var buffer = FastCopyBuffers.buffer(exactCapacity: length)
        read(offset: offset, length: length, into: &buffer)
        return buffer
    }

    /// Replaces the contents of `buffer` with the `length` bytes at `offset` of the payload space, reusing its memory
    /// when no one else holds it.
    func read(offset: Int, length: Int, into buffer: inout ByteBuffer) {
        precondition(contains(offset: offset, length: length))
        buffer.clear(minimumCapacity: length)
        buffer.writeBytes(UnsafeRawBufferPointer(start: space + offset, count: length))
    }
}
