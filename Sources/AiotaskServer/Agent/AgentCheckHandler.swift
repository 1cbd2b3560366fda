import Logging
import NIOCore

/// Serves one connection to the agent listener (`agent-listen`): writes the ``AgentCheck`` answer as soon as the
/// connection is up, closes its side, and reads and drops what the peer sends (HAProxy's `agent-send` text) until
/// the peer closes.
///
/// The listener faces the network, so every peer is bounded (``AgentListenerState``): at most
/// ``AgentListenerState/maximumConnections`` open at once (more are closed at once), ``AgentListenerState/byteLimit``
/// bytes read (more close the connection), and ``AgentListenerState/lingerLimit`` to close after the answer (a peer
/// that keeps the connection open is closed then). Each is logged.
final class AgentCheckHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let supervisor: Supervisor
    private var listener: AgentListenerState { supervisor.agentListener }
    private let logger: Logger
    private var bytesRead = 0
    private var lingerTimer: Scheduled<Void>?
    private var counted = false

    init(supervisor: Supervisor, logger: Logger) {
        self.supervisor = supervisor
        self.logger = logger
    }

    func channelActive(context: ChannelHandlerContext) {
        let peer = context.channel.remoteAddress.map { "\($0)" } ?? "unknown"
        guard listener.open() else {
            listener.noteRefused(peer: peer, logger: logger)
            context.close(promise: nil)
            return
        }
        counted = true
        let answer = AgentCheck.answer(supervisor.agentFigures)
        listener.noteAnswer(answer, logger: logger)
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: answer.line)), promise: nil)
        // The answer is whole: HAProxy reads to the newline or the end of the stream.
        context.close(mode: .output, promise: nil)
        let channel = context.channel
        lingerTimer = context.eventLoop.assumeIsolated().scheduleTask(in: .init(AgentListenerState.lingerLimit)) {
            [logger] in
            logger.info(
                "agent check: closing a peer that kept its connection open after the answer",
                metadata: ["peer": "\(peer)"]
            )
            channel.close(promise: nil)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        bytesRead += unwrapInboundIn(data).readableBytes
        // What HAProxy's `agent-send` says is not needed: the answer depends on the server alone.
        guard bytesRead > AgentListenerState.byteLimit else { return }
        logger.warning(
            "agent check: a peer sent over \(AgentListenerState.byteLimit) bytes; closing its connection",
            metadata: ["peer": "\(context.channel.remoteAddress.map { "\($0)" } ?? "unknown")"]
        )
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        lingerTimer?.cancel()
        lingerTimer = nil
        if counted {
            counted = false
            listener.close()
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("agent check: connection error: \(error)")
        context.close(promise: nil)
    }
}

/// What the agent listener's connections share, on the server's event loop: how many are open, and the last
/// answer, so that a change of answer is logged once.
final class AgentListenerState {
    /// Most agent connections open at once; HAProxy opens one per check and server line.
    static let maximumConnections = 64
    /// Most bytes read from one peer; `agent-send` strings are short.
    static let byteLimit = 1024
    /// How long a peer may keep its connection open after the answer.
    static let lingerLimit = Duration.seconds(2)

    private var openConnections = 0
    private var lastAnswer: AgentCheck.Answer?
    private var refusedSinceLog = 0

    /// Counts a new connection; false (counting nothing) past ``maximumConnections``.
    func open() -> Bool {
        guard openConnections < Self.maximumConnections else { return false }
        openConnections += 1
        return true
    }

    func close() {
        openConnections -= 1
    }

    /// Logs a connection closed at once for the limit: the first of a burst, then one line per 100.
    func noteRefused(peer: String, logger: Logger) {
        refusedSinceLog += 1
        guard refusedSinceLog == 1 || refusedSinceLog % 100 == 0 else { return }
        let message =
            "agent check: \(Self.maximumConnections) connections open; closing new ones "
            + "(\(refusedSinceLog) closed so far)"
        logger.warning("\(message)", metadata: ["peer": "\(peer)"])
    }

    /// Logs the answer when it differs from the last one.
    func noteAnswer(_ answer: AgentCheck.Answer, logger: Logger) {
        guard answer != lastAnswer else { return }
        let changedState: Bool =
            switch (lastAnswer, answer) {
            case (.ready?, .ready): false
            default: true
            }
        lastAnswer = answer
        // A weight moves with every task; only a change of state is worth the info level.
        let level: Logger.Level = changedState ? .info : .debug
        switch answer {
        case .ready(let weight):
            logger.log(level: level, "agent check: ready, weight \(weight)%")
        case .drain(let reason):
            logger.log(level: level, "agent check: drain (\(reason.text))")
        case .down(let reason):
            logger.log(level: .warning, "agent check: down (\(reason.text))")
        }
        if openConnections < Self.maximumConnections { refusedSinceLog = 0 }
    }
}
