import Logging
import NIOCore
import NIOSSL
import NIOTLS

/// Stands behind the `NIOSSLServerHandler` of a `tls://` connection until its handshake is over, and decides
/// whether the connection reaches the scheduler at all.
///
/// The ``ConnectionHandler`` is added only once the handshake has completed and the client's certificate identity is
/// on `tls-allowed-clients` (when that is set): a client that fails the handshake (no certificate, one from another
/// authority, an expired one, plaintext bytes), is not on the list, or does not finish the handshake within the
/// handshake timeout is closed here, with one journal entry naming its address and the reason, and counted in
/// `aiotask_connections_refused_total{reason="tls"}`. It never counts against `max-connections`, and nothing it
/// sent is read as a frame.
///
/// Lives on the server's event loop, as the connection's other handlers do.
final class TLSAdmissionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let supervisor: Supervisor
    private var logger: Logger
    private let allowedClients: [String]
    private let handshakeTimeout: Duration?
    /// Closes the connection if its handshake is still going then.
    private var timeout: Scheduled<Void>?
    /// Whether the connection was let in or refused: each connection is decided once, and logged once.
    private var decided = false
    private var peer = "unknown"

    init(supervisor: Supervisor, logger: Logger, allowedClients: [String], handshakeTimeout: Duration?) {
        self.supervisor = supervisor
        self.logger = logger
        self.allowedClients = allowedClients
        self.handshakeTimeout = handshakeTimeout
    }

    func channelActive(context: ChannelHandlerContext) {
        peer = context.channel.remoteAddress.map(ConnectionHandler.describe) ?? "unknown"
        logger[metadataKey: "client"] = "\(peer)"
        if let handshakeTimeout {
            timeout = context.eventLoop.assumeIsolated().scheduleTask(in: TimeAmount(handshakeTimeout)) { [self] in
                timeout = nil
                refuse(
                    context: context,
                    "the TLS handshake did not finish within \(handshakeTimeout) (tls-handshake-timeout)"
                )
            }
        }
        // Not passed on: the connection's handler sees it become active once it is let in.
    }

    func channelInactive(context: ChannelHandlerContext) {
        timeout?.cancel()
        timeout = nil
        if !decided {
            decided = true
            logger.debug("the client closed the connection before the TLS handshake finished")
        }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Nothing is read before the connection is let in: NIOSSL passes on no data before its handshake is over.
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case .handshakeCompleted? = event as? TLSUserEvent, !decided else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        timeout?.cancel()
        timeout = nil
        let certificate = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self).peerCertificate
        let identities = certificate.map(Self.identities) ?? []
        if !allowedClients.isEmpty, !identities.contains(where: allowedClients.contains) {
            let shown = identities.isEmpty ? "none" : identities.joined(separator: ", ")
            refuse(context: context, "the client certificate's identities (\(shown)) are not in tls-allowed-clients")
            return
        }
        decided = true
        do {
            let connection = ConnectionHandler(
                supervisor: supervisor,
                logger: logger,
                clientCertificate: identities.first,
                readsFromTLS: true
            )
            try context.pipeline.syncOperations.addHandler(connection, position: .after(self))
            context.fireChannelActive()
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        } catch {
            logger.error("cannot serve the TLS connection: \(error)")
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard !decided else {
            context.fireErrorCaught(error)
            return
        }
        refuse(context: context, Self.describe(handshakeError: error))
    }

    /// Closes a connection that is not let in, with its one journal entry, and counts it.
    private func refuse(context: ChannelHandlerContext, _ reason: String) {
        guard !decided else { return }
        decided = true
        timeout?.cancel()
        timeout = nil
        logger.warning(
            "refusing TLS connection: \(reason)",
            metadata: ["message_id": "\(LogMessageID.tlsRefused)"]
        )
        supervisor.tlsRefused()
        context.close(promise: nil)
    }

    /// The identities of a client certificate, the first one the journal's `CLIENT_CERT`: its subject's common
    /// name, then its subject alternative names (DNS names, email addresses, URIs).
    static func identities(of certificate: NIOSSLCertificate) -> [String] {
        var identities: [String] = certificate.subjectName.filter { $0.type == .commonName }.map(\.value).reversed()
        for name in certificate._subjectAlternativeNames() {
            switch name.nameType {
            case .dnsName, .email, .uri:
                identities.append(String(decoding: name.contents, as: UTF8.self))
            default:
                break
            }
        }
        return identities
    }

    /// A handshake failure in words an operator can act on; BoringSSL's own text follows in brackets.
    static func describe(handshakeError error: any Error) -> String {
        let text = "\(error)"
        let cause: String =
            if text.contains("PEER_DID_NOT_RETURN_A_CERTIFICATE") {
                "the client sent no certificate, and tls-client-ca requires one"
            } else if text.contains("CERTIFICATE_VERIFY_FAILED") {
                "the client certificate was rejected: not issued by tls-client-ca, expired or not yet valid"
            } else if text.contains("WRONG_VERSION_NUMBER") || text.contains("HTTP_REQUEST")
                || text.contains("UNKNOWN_PROTOCOL") || text.contains("NOT_A_TLS") || text.contains("RECORD")
            {
                "the client does not speak TLS (plaintext to a tls:// listener?)"
            } else if text.contains("UNSUPPORTED_PROTOCOL") || text.contains("VERSION_TOO_LOW") {
                "the client's TLS version is older than tls-minimum-version"
            } else if text.contains("ALERT") {
                "the client ended the handshake with an alert (it does not trust the server's certificate?)"
            } else if error as? NIOSSLError == .uncleanShutdown || text.contains("EOF") {
                "the client closed the connection during the TLS handshake"
            } else {
                "the TLS handshake failed"
            }
        return "\(cause) [\(text)]"
    }
}
