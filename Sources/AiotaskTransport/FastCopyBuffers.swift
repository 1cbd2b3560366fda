@_spi(CustomByteBufferAllocator) import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// A `ByteBufferAllocator` whose large buffers start in the middle of a page, where the kernel copies into and out
/// of them at full speed.
///
/// The kernel copies data between a pipe or socket and user memory with `rep movsb`, which on the AMD processors
/// this was measured on runs at a third of its speed when the destination lies 1–31 bytes past the source modulo
/// 4096 (1 MiB read from a pipe: 920 µs instead of 300 µs; the same for loopback TCP). Pipe pages hold data from
/// page offset 0 on, a header of a few bytes ahead of it, and glibc returns large (`mmap`ed) blocks 16 bytes past
/// a page boundary: every large read and write landed in the slow window. Buffers of ``threshold`` bytes or more
/// from this allocator start at offset 2048 of a page instead, half a page from the offsets the kernel's pages
/// use, so neither a read into them nor a write from them (a header of up to a few dozen bytes ahead of the
/// payload) falls in that window.
///
/// `@usableFromInline`: ``StreamDecoder``'s inlinable code assembles frames in these buffers.
@usableFromInline
package enum FastCopyBuffers {
    /// Buffers at least this large start mid-page; smaller ones are plain `malloc` blocks.
    package static let threshold = 16 * 1024
    /// Where in a page a large buffer starts.
    static let pageOffset = 2048
    static let pageSize = 4096
    /// Every block carries a prefix of this many bytes in front of the buffer: a tag (plain or mid-page) and, for
    /// a mid-page block, the address to free.
    static let prefix = 16
    private static let plainTag: UInt64 = 0x6169_6F74_706C_6E00
    private static let alignedTag: UInt64 = 0x6169_6F74_616C_6700

    /// The allocator; use it for read buffers and for the buffers large payloads are assembled in.
    package static let allocator = ByteBufferAllocator(
        allocate: { size in
            FastCopyBuffers.allocate(size)
        },
        reallocate: { pointer, oldSize, newSize in
            FastCopyBuffers.reallocate(pointer, oldSize: oldSize, newSize: newSize)
        },
        deallocate: { pointer in
            FastCopyBuffers.deallocate(pointer)
        },
        copy: { destination, source, count in
            destination.copyMemory(from: source, byteCount: count)
        }
    )

    /// An empty buffer of exactly `capacity` bytes (`ByteBufferAllocator.buffer(capacity:)` rounds up to a power of
    /// two, which would double the memory a large frame holds).
    @usableFromInline
    package static func buffer(exactCapacity capacity: Int) -> ByteBuffer {
        guard capacity > 0, let memory = allocate(capacity) else { return allocator.buffer(capacity: capacity) }
        return ByteBuffer(
            takingOwnershipOf: UnsafeMutableRawBufferPointer(start: memory, count: capacity),
            allocator: allocator,
            readerIndex: 0,
            writerIndex: 0
        )
    }

    static func allocate(_ size: Int) -> UnsafeMutableRawPointer? {
        if size < threshold {
            guard let block = malloc(size + prefix) else { return nil }
            block.storeBytes(of: plainTag, as: UInt64.self)
            return block + prefix
        }
        var block: UnsafeMutableRawPointer?
        guard posix_memalign(&block, pageSize, pageOffset + size) == 0, let block else { return nil }
        let buffer = block + pageOffset
        (buffer - prefix).storeBytes(of: alignedTag, as: UInt64.self)
        (buffer - prefix + 8).storeBytes(of: UInt(bitPattern: block), as: UInt.self)
        return buffer
    }

    static func reallocate(_ pointer: UnsafeMutableRawPointer?, oldSize: Int, newSize: Int) -> UnsafeMutableRawPointer?
    {
        guard let pointer else { return allocate(newSize) }
        let isPlain = (pointer - prefix).load(as: UInt64.self) == plainTag
        if isPlain, newSize < threshold {
            guard let block = realloc(pointer - prefix, newSize + prefix) else { return nil }
            return block + prefix
        }
        guard let fresh = allocate(newSize) else { return nil }
        fresh.copyMemory(from: pointer, byteCount: min(oldSize, newSize))
        deallocate(pointer)
        return fresh
    }

    static func deallocate(_ pointer: UnsafeMutableRawPointer) {
        let header = pointer - prefix
        if header.load(as: UInt64.self) == alignedTag {
            free(UnsafeMutableRawPointer(bitPattern: (header + 8).load(as: UInt.self)))
        } else {
            free(header)
        }
    }
}
