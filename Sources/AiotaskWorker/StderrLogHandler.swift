import Logging
import NIOCore

/// Logs what a pool process writes to stderr, a line at a time, with its pid in the metadata.
///
/// Lines are cut at ``maximumLineLength`` bytes so that a process that never writes a newline cannot make the
/// supervisor buffer without bound.
final class StderrLogHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    static let maximumLineLength = 4096

    private let logger: Logger
    private var pending = ByteBuffer()

    init(logger: Logger) {
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        while let newline = bytes.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let length = newline - bytes.readerIndex
            var line = bytes.readSlice(length: length)!
            bytes.moveReaderIndex(forwardBy: 1)
            appendBounded(&line)
            emit()
        }
        appendBounded(&bytes)
        if pending.readableBytes >= Self.maximumLineLength { emit() }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if pending.readableBytes > 0 { emit() }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    private func appendBounded(_ bytes: inout ByteBuffer) {
        let room = Self.maximumLineLength - pending.readableBytes
        if room > 0, var slice = bytes.readSlice(length: min(room, bytes.readableBytes)) {
            pending.writeBuffer(&slice)
        }
        bytes.moveReaderIndex(to: bytes.writerIndex)
    }

    private func emit() {
        let line = String(decoding: pending.readableBytesView, as: UTF8.self)
        pending.clear()
        logger.notice("\(line)")
    }
}
