import Logging
import NIOCore

/// Logs what goes wrong on a listener of clients: a connection the kernel handed over but that could not be set up
/// (its pipeline's initializer threw, so NIO closed it), or an `accept` that failed (no descriptor left).
///
/// Without it NIO would close such a connection in silence, and the client would see a reset it cannot explain:
/// the one error an operator must find in the journal. A listener's errors are few (NIO backs off a second after a
/// failed `accept`), so each gets its entry.
final class AcceptErrorLogger: ChannelInboundHandler, Sendable {
    typealias InboundIn = any Channel

    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.error(
            "cannot accept a connection: \(error)",
            metadata: ["listener": "\(context.channel.localAddress.map { "\($0)" } ?? "?")"]
        )
        context.fireErrorCaught(error)
    }
}
