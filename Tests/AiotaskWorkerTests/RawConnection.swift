import AiotaskProtocol
import NIOCore
import NIOPosix

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A frame as it arrived on the wire, read by ``RawConnection`` without the aiotask decoder.
struct RawFrame: Hashable, Sendable {
    var type: UInt8
    var payload: [UInt8]

    /// The task id at the start of the payload.
    var taskID: [UInt8] { Array(payload.prefix(16)) }
    /// The payload after the task id.
    var afterTaskID: [UInt8] { Array(payload.dropFirst(16)) }
}

/// A client socket with no aiotask code in its pipeline: it writes the bytes a test gives it and splits what
/// comes back into frames by hand (type byte, then a 16-bit length below 0x80 and a 32-bit one from 0x80 up),
/// so tests can speak the original protocol byte for byte, or break it on purpose.
final class RawConnection {
    private var inbound: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    private let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    private var buffer = ByteBuffer()
    private var isClosedByPeer = false
    /// Whether the server reset the connection (closed it with bytes of ours unread) rather than ending it.
    private(set) var wasReset = false

    private init(
        inbound: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    ) {
        self.inbound = inbound
        self.outbound = outbound
    }

    /// Connects to `address`, runs `body`, and closes the connection.
    static func with<Result: Sendable>(
        _ address: ServerAddress,
        _ body: (RawConnection) async throws -> Result
    ) async throws -> Result {
        let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.allowRemoteHalfClosure, value: false)
        // Finishing the writer shuts down the sending side only, so the server's answer can still be read.
        let configuration = NIOAsyncChannel<ByteBuffer, ByteBuffer>.Configuration(isOutboundHalfClosureEnabled: true)
        let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
        switch address {
        // A tls:// address is connected to without TLS: what a plaintext client sends a TLS listener.
        case .tcp(let host, let port), .tls(let host, let port):
            channel = try await bootstrap.connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(
                        wrappingChannelSynchronously: channel,
                        configuration: configuration
                    )
                }
            }
        case .unix(let path):
            channel = try await bootstrap.connect(unixDomainSocketPath: path) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(
                        wrappingChannelSynchronously: channel,
                        configuration: configuration
                    )
                }
            }
        }
        return try await channel.executeThenClose { inbound, outbound in
            try await body(RawConnection(inbound: inbound.makeAsyncIterator(), outbound: outbound))
        }
    }

    // MARK: Sending

    /// Sends bytes as they are.
    func send(_ bytes: [UInt8]) async throws {
        try await outbound.write(ByteBuffer(bytes: bytes))
    }

    /// Sends a frame of the original protocol: type, 16-bit length, payload.
    func sendLegacy(type: UInt8, _ payload: [UInt8]) async throws {
        try await send(Self.legacyFrame(type: type, payload))
    }

    /// Sends a frame encoded by `AiotaskProtocol`.
    func send(_ frame: Frame) async throws {
        var bytes = ByteBuffer()
        try bytes.writeFrame(frame)
        try await outbound.write(bytes)
    }

    /// Shuts down the sending side; the server sees the end of the stream, and its answer can still be read.
    func finishSending() {
        outbound.finish()
    }

    /// The bytes of a frame of the original protocol.
    static func legacyFrame(type: UInt8, _ payload: [UInt8]) -> [UInt8] {
        precondition(payload.count <= Int(UInt16.max))
        return [type, UInt8(payload.count >> 8), UInt8(payload.count & 0xff)] + payload
    }

    // MARK: Receiving

    /// The next frame, or nil when the server closed the connection at a frame boundary.
    ///
    /// - Throws: ``TruncatedFrame`` when the connection closes inside a frame.
    func readFrame() async throws -> RawFrame? {
        while true {
            if let frame = takeFrame() { return frame }
            guard try await fill() else {
                guard buffer.readableBytes == 0 else { throw TruncatedFrame(bytes: buffer.readableBytes) }
                return nil
            }
        }
    }

    /// Reads exactly `count` bytes as they arrived, headers included.
    func readBytes(count: Int) async throws -> [UInt8] {
        while buffer.readableBytes < count {
            guard try await fill() else { throw TruncatedFrame(bytes: buffer.readableBytes) }
        }
        return buffer.readBytes(length: count)!
    }

    /// Reads frames until the server closes the connection, and returns them.
    func readUntilClosed() async throws -> [RawFrame] {
        var frames: [RawFrame] = []
        while let frame = try await readFrame() { frames.append(frame) }
        return frames
    }

    /// Reads the raw bytes that arrive until the server closes the connection.
    func readBytesUntilClosed() async throws -> [UInt8] {
        while try await fill() {}
        return Array(buffer.readableBytesView)
    }

    private func takeFrame() -> RawFrame? {
        guard let type = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return nil }
        let headerLength = type & 0x80 == 0 ? 3 : 5
        let length: Int
        if type & 0x80 == 0 {
            guard let value = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt16.self) else { return nil }
            length = Int(value)
        } else {
            guard let value = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt32.self) else { return nil }
            length = Int(value)
        }
        guard buffer.readableBytes >= headerLength + length else { return nil }
        buffer.moveReaderIndex(forwardBy: headerLength)
        return RawFrame(type: type, payload: buffer.readBytes(length: length)!)
    }

    /// Reads more bytes into the buffer; false once the server has closed the connection.
    private func fill() async throws -> Bool {
        guard !isClosedByPeer else { return false }
        let next: ByteBuffer?
        do {
            next = try await inbound.next()
        } catch let error as IOError where error.errnoCode == ECONNRESET {
            // A server that closes a connection with input still unread makes the kernel send a reset.
            wasReset = true
            next = nil
        }
        guard var chunk = next else {
            isClosedByPeer = true
            return false
        }
        buffer.discardReadBytes()
        buffer.writeBuffer(&chunk)
        return true
    }
}

/// The connection closed in the middle of a frame.
struct TruncatedFrame: Error, CustomStringConvertible {
    var bytes: Int
    var description: String { "the connection closed inside a frame (\(bytes) bytes left)" }
}

extension TaskID {
    /// The 16 bytes of the id, as on the wire.
    var bytes: [UInt8] {
        var buffer = ByteBuffer()
        buffer.writeTaskID(self)
        return Array(buffer.readableBytesView)
    }
}
