import Logging
import NIOCore

/// Logs what a pool process writes to stderr, a line at a time, with its pid in the metadata.
///
/// Lines longer than ``maximumLineLength`` bytes are cut into pieces of at most that length (at a UTF-8
/// character boundary where one is near), each logged as a line: nothing is lost, and a process that never
/// writes a newline cannot make the supervisor buffer more than one piece.
final class StderrLineReader: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    static let maximumLineLength = 4096

    private let logger: Logger
    private var pending = ByteBuffer()

    init(logger: Logger) {
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        while bytes.readableBytes > 0 {
            let room = Self.maximumLineLength - pending.readableBytes
            // A newline just past a full piece ends that piece rather than logging an empty line after it.
            let window = bytes.readableBytesView.prefix(room + 1)
            if let newline = window.firstIndex(of: UInt8(ascii: "\n")) {
                var line = bytes.readSlice(length: newline - bytes.readerIndex)!
                bytes.moveReaderIndex(forwardBy: 1)
                pending.writeBuffer(&line)
                emit()
            } else if bytes.readableBytes <= room {
                pending.writeBuffer(&bytes)
            } else {
                var piece = bytes.readSlice(length: Self.pieceLength(of: bytes.readableBytesView, room: room))!
                pending.writeBuffer(&piece)
                emit()
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if pending.readableBytes > 0 { emit() }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    /// How many of `bytes` (more than `room`) to put in a piece with `room` bytes left: `room`, or fewer when the
    /// byte after the cut continues a UTF-8 character, so that the character starts the next piece whole.
    private static func pieceLength(of bytes: ByteBufferView, room: Int) -> Int {
        var length = room
        while length > 0, length > room - 3, UTF8.isContinuation(bytes[bytes.startIndex + length]) {
            length -= 1
        }
        return length > 0 ? length : room
    }

    private func emit() {
        let line = String(decoding: pending.readableBytesView, as: UTF8.self)
        pending.clear()
        logger.notice("\(line)")
    }
}
