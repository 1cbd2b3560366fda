import AiotaskProtocol
import NIOCore

/// Writes the frames of one channel so that those produced in the same event-loop tick leave together, in one
/// gathering write, flushed once at the end of the tick; large payloads leave as they are, never copied.
///
/// The server's client connections, the client library and the links to pool processes all write this way: each
/// answer, request or task is encoded into one output buffer, and the buffer is written and flushed once, when the
/// tick ends (or earlier, at ``flush()``, when a read completes). A payload over ``copyLimit`` is not copied into
/// the buffer: its header joins the frames before it, and its bytes follow as they are, in the same gathering write.
///
/// Confined to the channel's event loop; it keeps no frame of its own, so appending a frame allocates nothing but
/// the buffer's growth.
///
/// Its stored properties are `@exclusivity(unchecked)`: it lives on one event loop and the state machines it feeds
/// never call back into it, so no two accesses overlap, and the run-time checks Swift would otherwise make on each
/// access of a class's property cost about a tenth of the daemon's CPU per task (docs/performance.md).
package final class CoalescingFrameWriter {
    /// Largest payload copied into the output buffer; a larger one is written as it is, after its header.
    package static let copyLimit = 16 * 1024
    /// Largest output buffer kept for the next tick once flushed: a larger one, grown by a burst, is let go so that
    /// an idle connection holds little memory.
    static let retainedCapacity = 64 * 1024

    private let channel: any Channel
    /// Frames encoded since the last write.
    @exclusivity(unchecked) private var buffered: ByteBuffer
    @exclusivity(unchecked) private var isFlushScheduled = false
    /// Set once writing stopped: appended frames are dropped.
    @exclusivity(unchecked) private var isDiscarding = false

    /// - Parameter channel: Where the frames go; its allocator makes the output buffers.
    package init(channel: any Channel) {
        self.channel = channel
        self.buffered = channel.allocator.buffer(capacity: 0)
    }

    /// Bytes encoded and not handed to the channel yet.
    package var bufferedBytes: Int { buffered.readableBytes }

    /// Appends what `encode` writes, to leave at the end of this tick.
    package func append(_ encode: (inout ByteBuffer) -> Void) {
        guard !isDiscarding else { return }
        encode(&buffered)
        scheduleFlush()
    }

    /// Appends the bytes `header` writes followed by `payload`: copied into the buffer up to ``copyLimit`` bytes,
    /// written as it is, behind the frames before it, when larger.
    package func append(header: (inout ByteBuffer) -> Void, payload: ByteBuffer) {
        guard !isDiscarding else { return }
        header(&buffered)
        if payload.readableBytes <= Self.copyLimit {
            buffered.writeImmutableBuffer(payload)
        } else {
            writeBuffered()
            channel.write(payload, promise: nil)
        }
        scheduleFlush()
    }

    /// Appends `frame`; the task bytes of a large extension frame are written as they are, after its header.
    ///
    /// - Throws: what `ByteBuffer.writeFrame(_:)` throws for a frame too large to encode; nothing is
    ///   appended then.
    package func append(_ frame: Frame) throws {
        guard !isDiscarding else { return }
        if frame.type.isExtension, let taskData = frame.taskData, taskData.readableBytes > Self.copyLimit,
            frame.payloadLength <= UInt32.max
        {
            return append(header: { $0.writeFrameHeader(frame) }, payload: taskData)
        }
        try buffered.writeFrame(frame)
        scheduleFlush()
    }

    /// Hands the frames appended so far to the channel, unflushed: for a write of one's own that must follow them.
    package func writeBuffered() {
        guard buffered.readableBytes > 0 else { return }
        channel.write(buffered, promise: nil)
        // The write is still pending: the next frames go into a buffer of their own.
        buffered = channel.allocator.buffer(capacity: 0)
    }

    /// Writes and flushes what was appended now, instead of at the end of the tick (when a read completes, so
    /// that answers to what was read leave before the next read).
    package func flush() {
        isFlushScheduled = false
        let written = buffered.readableBytes
        if written > 0 { channel.write(buffered, promise: nil) }
        // Also flushes a large payload written past the buffer.
        channel.flush()
        guard written > 0, !isDiscarding else { return }
        // Frames appended while the flush ran (a handler it called back may append) stay; the ones written go.
        if buffered.readableBytes > written {
            buffered.moveReaderIndex(forwardBy: written)
        } else if buffered.capacity <= Self.retainedCapacity {
            // Cleared after the flush, not before: the kernel has normally taken the bytes by now, so the channel
            // holds the buffer no more and its memory is reused. Cleared while the write was pending, it was a
            // fresh, empty buffer each tick, grown — copying — frame by frame.
            buffered.clear()
        } else {
            buffered = channel.allocator.buffer(capacity: 0)
        }
    }

    /// Drops what is buffered and everything appended from now on: the connection is over.
    package func discard() {
        isDiscarding = true
        buffered.clear()
    }

    /// Flushes once at the end of the current tick, so frames produced together leave together.
    private func scheduleFlush() {
        guard !isFlushScheduled else { return }
        isFlushScheduled = true
        channel.eventLoop.assumeIsolated().execute { [self] in
            guard isFlushScheduled, !isDiscarding else { return }
            flush()
        }
    }
}

extension Frame {
    /// The task bytes this frame carries after its fixed fields (`ENQUEUE`, `SUBMIT`, `DONE`, `RESULT`); nil for
    /// the others.
    package var taskData: ByteBuffer? {
        switch self {
        case .enqueue(_, let payload), .done(_, let payload), .result(_, let payload), .submit(_, _, let payload):
            payload
        default:
            nil
        }
    }
}

extension ByteBuffer {
    /// Appends all of `frame` but its ``Frame/taskData``, which must follow: the header, whose length covers the
    /// task bytes, and the fields in front of them. `frame` is an extension frame of at most 2³² − 1 payload bytes.
    mutating func writeFrameHeader(_ frame: Frame) {
        writeMultipleIntegers(frame.type.rawValue, UInt32(frame.payloadLength))
        switch frame {
        case .submit(let id, let timeout, _):
            writeTaskID(id)
            writeInteger(TimeoutEncoding.milliseconds(timeout))
        case .enqueue(let id, _), .done(let id, _), .result(let id, _):
            writeTaskID(id)
        default:
            preconditionFailure("a \(frame.type) frame carries no task data")
        }
    }
}
