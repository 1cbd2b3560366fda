import AiotaskProtocol
import AiotaskTransport
import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The handler process's side of its link to the daemon: plain blocking reads and writes on the two pipe
/// descriptors.
///
/// A pool process runs one task at a time, so it needs no event loop: it reads as many bytes as the pipe holds
/// (several tasks at once when the daemon sends tasks ahead), answers each task with a single `writev`
/// as soon as it is done, and only blocks in `read` when it has no whole task buffered. With ``TaskClaims``, it
/// claims each task before returning it, and skips those the daemon withdrew. With a ``SharedPayloadArena``, it
/// takes large tasks from the arena, and puts results that fit back in their task's region.
package struct HandlerLink {
    /// Why the link failed.
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    private let input: CInt
    private let output: CInt
    private var buffer: ByteBuffer
    private var decoder: ContextualPoolRequestDecoder
    private let claims: TaskClaims?
    private let arena: SharedPayloadArena?
    /// What the daemon said about the task last returned by ``nextTask()``, if it sends a header with each.
    package private(set) var currentContext: TaskContextHeader?
    /// The arena region of the task being run, where its result goes if it fits.
    private var currentRegion: Range<Int>?
    /// Where tasks from the arena are copied: the same memory for each, once the handler let go of the last one.
    private var sharedTask = FastCopyBuffers.allocator.buffer(capacity: 0)
    /// The header of the reply being sent.
    private var header = ByteBuffer()
    /// The stream index of the next task read.
    private var nextIndex: UInt32 = 0
    /// Smallest read attempted, so that many small tasks arrive in one `read`.
    private static let minimumRead = 64 * 1024

    /// - Parameter sharedPayloads: whether the link uses ``SharedPayloadFraming`` (the daemon offered an
    ///   arena), and the arena, unless it could not be mapped.
    /// - Parameter hasTaskContext: whether each task comes after a ``TaskContextHeader``.
    package init(
        input: CInt,
        output: CInt,
        maximumLength: Int,
        claims: TaskClaims? = nil,
        sharedPayloads: (isOffered: Bool, arena: SharedPayloadArena?) = (false, nil),
        hasTaskContext: Bool = false
    ) {
        self.input = input
        self.output = output
        // Large tasks land where the kernel copies fast (see FastCopyBuffers).
        self.buffer = FastCopyBuffers.allocator.buffer(capacity: Self.minimumRead)
        self.decoder = ContextualPoolRequestDecoder(
            PoolRequestDecoder(maximumLength: maximumLength, hasKinds: sharedPayloads.isOffered),
            hasContext: hasTaskContext
        )
        self.claims = claims
        self.arena = sharedPayloads.arena
    }

    /// The next task to run, claimed, or nil when the daemon closed the link between tasks.
    ///
    /// - Throws: ``Failure`` when reading fails, or ``HandlerFramingError`` when the stream breaks the framing.
    package mutating func nextTask() throws -> ByteBuffer? {
        while let (context, request) = try nextFrame() {
            let index = nextIndex
            nextIndex &+= 1
            // A withdrawn task's region may already hold another task: it is never read.
            if let claims, !claims.claim(index) { continue }
            currentContext = context
            switch request {
            case .inline(let task):
                currentRegion = nil
                return task
            case .shared(let offset, let length):
                guard let arena, arena.contains(offset: offset, length: length) else {
                    throw Failure(
                        description:
                            "the daemon placed a task of \(length) bytes at offset \(offset) of shared memory this process does not have"
                    )
                }
                currentRegion = offset..<(offset + length)
                arena.read(offset: offset, length: length, into: &sharedTask)
                return sharedTask
            }
        }
        return nil
    }

    /// The next task in the stream, withdrawn or not.
    private mutating func nextFrame() throws -> ContextualPoolRequestDecoder.Decoded? {
        while true {
            if let task = try decoder.decode(buffer: &buffer) { return task }
            // Room for the rest of the frame being read (a large task arrives in few reads), at least 64 KiB.
            var wanted = Self.minimumRead
            if let length = decoder.frameLength(at: buffer) {
                wanted = max(wanted, length - buffer.readableBytes)
            }
            if buffer.readableBytes == 0 {
                buffer.clear()
            } else if buffer.writableBytes < wanted {
                buffer.discardReadBytes()
            }
            buffer.reserveCapacity(minimumWritableBytes: wanted)
            let count = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 0) { bytes in
                while true {
                    let count = read(input, bytes.baseAddress, bytes.count)
                    if count < 0, errno == EINTR { continue }
                    return count
                }
            }
            if count < 0 {
                throw Failure(description: "cannot read a task: \(String(cString: strerror(errno)))")
            }
            if count == 0 {
                if let task = try decoder.decodeLast(buffer: &buffer, seenEOF: true) { return task }
                return nil
            }
        }
    }

    /// Sends `reply` in one `writev` (more only if the pipe takes it in parts): its header, then its bytes as they
    /// are; a result that fits its task's region in the arena goes there, and only its place on the link.
    ///
    /// - Throws: ``Failure`` when writing fails (the daemon closed the link), or the reply is longer than the
    ///   framing can say.
    package mutating func send(_ reply: HandlerReply) throws {
        // The header is encoded by the framing itself, into a buffer kept from reply to reply.
        header.clear()
        if case .result(let bytes) = reply, let arena, let region = currentRegion, bytes.readableBytes <= region.count {
            arena.write(bytes, at: region.lowerBound)
            header.writeSharedResult(offset: region.lowerBound, length: bytes.readableBytes)
            return try header.withUnsafeReadableBytes {
                try writeAll($0, UnsafeRawBufferPointer(start: nil, count: 0))
            }
        }
        switch reply {
        case .result(let bytes):
            try Self.checkLength(bytes.readableBytes)
            header.writeHandlerReplyHeader(reply)
            try header.withUnsafeReadableBytes { head in
                try bytes.withUnsafeReadableBytes { body in try writeAll(head, body) }
            }
        case .error(var message):
            try Self.checkLength(message.utf8.count)
            header.writeHandlerReplyHeader(reply)
            try header.withUnsafeReadableBytes { head in
                try message.withUTF8 { body in try writeAll(head, UnsafeRawBufferPointer(body)) }
            }
        }
    }

    private static func checkLength(_ length: Int) throws {
        guard UInt32(exactly: length) != nil else {
            throw Failure(description: "a reply of \(length) bytes does not fit the handler framing")
        }
    }

    /// Writes `head` then `body`, resuming after partial writes.
    private func writeAll(_ head: UnsafeRawBufferPointer, _ body: UnsafeRawBufferPointer) throws {
        var headDone = 0
        var bodyDone = 0
        while headDone < head.count || bodyDone < body.count {
            var vectors = (
                iovec(
                    iov_base: UnsafeMutableRawPointer(mutating: head.baseAddress.map { $0 + headDone }),
                    iov_len: head.count - headDone
                ),
                iovec(
                    iov_base: UnsafeMutableRawPointer(mutating: body.baseAddress.map { $0 + bodyDone }),
                    iov_len: body.count - bodyDone
                )
            )
            let written = withUnsafeMutablePointer(to: &vectors) { pointer in
                pointer.withMemoryRebound(to: iovec.self, capacity: 2) { writev(output, $0, 2) }
            }
            if written < 0 {
                if errno == EINTR { continue }
                throw Failure(description: "cannot write a reply: \(String(cString: strerror(errno)))")
            }
            let fromHead = min(written, head.count - headDone)
            headDone += fromHead
            bodyDone += written - fromHead
        }
    }
}
