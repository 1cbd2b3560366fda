import NIOCore
import NIOHTTP1

/// Serves one connection of the metrics listener: `GET /metrics` (and `HEAD`), nothing else, one request per
/// connection (`Connection: close`; a scraper reconnects, which on a scrape interval costs nothing worth keeping a
/// connection for, and leaves no keep-alive state to bound).
///
/// Hostile or broken clients get a status and the connection closed, within bounded time and memory: a request not
/// complete within ``Limits/requestTimeout`` gets 408 (a slow client, an endless header); headers over
/// ``Limits/maximumHeaderBytes`` get 431 (counted by NIO's decoder, which keeps no more than that); a malformed
/// request gets 400; another path 404; another method 405 with `Allow`; a request body over
/// ``Limits/maximumBodyBytes`` 413; past ``Limits/maximumConnections`` open connections, 503.
final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    /// The bounds of the listener.
    struct Limits: Sendable {
        /// From the connection's start to its request's end.
        var requestTimeout: TimeAmount = .seconds(10)
        /// Bytes of the request line's headers, all fields together (NIO's decoder enforces it).
        var maximumHeaderBytes = 8192
        /// Bytes of request body read before refusing it (a scrape has none).
        var maximumBodyBytes = 4096
        /// Connections open at once; more are answered 503.
        var maximumConnections = 1024
    }

    /// Renders the exposition in a format, off the server's event loop.
    typealias Render = @Sendable (MetricsExposition.Format) -> EventLoopFuture<[UInt8]>

    private let render: Render
    private let limits: Limits
    private let isOverConnectionLimit: Bool
    private var head: HTTPRequestHead?
    private var bodyBytes = 0
    private var responded = false
    private var timeout: Scheduled<Void>?

    init(render: @escaping Render, limits: Limits, isOverConnectionLimit: Bool) {
        self.render = render
        self.limits = limits
        self.isOverConnectionLimit = isOverConnectionLimit
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context: context)
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        guard timeout == nil, !responded else { return }
        if isOverConnectionLimit {
            respond(context: context, .serviceUnavailable, "too many connections to the metrics listener\n")
            return
        }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timeout = context.eventLoop.scheduleTask(in: limits.requestTimeout) {
            let (handler, context) = loopBound.value
            handler.respond(context: context, .requestTimeout, "request not complete in time\n")
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        timeout?.cancel()
        timeout = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !responded else { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body(let body):
            bodyBytes += body.readableBytes
            if bodyBytes > limits.maximumBodyBytes {
                respond(context: context, .payloadTooLarge, "a scrape has no body\n")
            }
        case .end:
            guard let head else { return }
            route(context: context, head)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard !responded else { return }
        if let error = error as? HTTPParserError {
            if error == .headerOverflow {
                respond(context: context, .requestHeaderFieldsTooLarge, "request headers too large\n")
            } else {
                respond(context: context, .badRequest, "malformed request: \(error)\n")
            }
        } else {
            context.close(promise: nil)
        }
    }

    private func route(context: ChannelHandlerContext, _ head: HTTPRequestHead) {
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        guard path == "/metrics" else {
            respond(context: context, .notFound, "not found: the metrics are at /metrics\n")
            return
        }
        guard head.method == .GET || head.method == .HEAD else {
            respond(
                context: context,
                .methodNotAllowed,
                "method not allowed: use GET\n",
                extra: [("Allow", "GET, HEAD")]
            )
            return
        }
        timeout?.cancel()
        timeout = nil
        responded = true
        let format = MetricsExposition.Format(accept: head.headers.first(name: "Accept"))
        let isHead = head.method == .HEAD
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        render(format).hop(to: context.eventLoop).whenComplete { result in
            let (handler, context) = loopBound.value
            switch result {
            case .success(let text):
                handler.write(
                    context: context,
                    .ok,
                    contentType: format.contentType,
                    body: text,
                    isHead: isHead,
                    extra: []
                )
            case .failure:
                handler.write(
                    context: context,
                    .serviceUnavailable,
                    contentType: "text/plain; charset=utf-8",
                    body: Array("the server is not running\n".utf8),
                    isHead: isHead,
                    extra: []
                )
            }
        }
    }

    private func respond(
        context: ChannelHandlerContext,
        _ status: HTTPResponseStatus,
        _ message: String,
        extra: [(String, String)] = []
    ) {
        guard !responded else { return }
        responded = true
        timeout?.cancel()
        timeout = nil
        write(
            context: context,
            status,
            contentType: "text/plain; charset=utf-8",
            body: Array(message.utf8),
            isHead: head?.method == .HEAD,
            extra: extra
        )
    }

    private func write(
        context: ChannelHandlerContext,
        _ status: HTTPResponseStatus,
        contentType: String,
        body: [UInt8],
        isHead: Bool,
        extra: [(String, String)]
    ) {
        var headers = HTTPHeaders([
            ("Content-Type", contentType), ("Content-Length", "\(body.count)"), ("Connection", "close"),
        ])
        headers.add(contentsOf: extra)
        let version = head?.version ?? .http1_1
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: version, status: status, headers: headers))),
            promise: nil
        )
        if !isHead {
            context.write(
                wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))),
                promise: nil
            )
        }
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            loopBound.value.close(promise: nil)
        }
    }
}
