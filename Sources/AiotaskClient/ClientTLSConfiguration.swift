import AiotaskProtocol
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import NIOTLS

/// How a client speaks TLS to a `tls://` server: whom it trusts, which name the server's certificate must carry,
/// and the client's own certificate for a server that asks for one (mutual TLS). Used only for `tls://` addresses.
///
/// ```swift
/// let tls = ClientTLSConfiguration(trustRoots: .file("/etc/aiotask/ca.crt"), certificateFile: "client.crt",
///                                  keyFile: "client.key")
/// let client = try await AiotaskClient.connect(to: "tls://tasks.example.com:4243", tls: tls)
/// ```
public struct ClientTLSConfiguration: Sendable, Hashable {
    /// The certificate authorities a server's certificate must chain to.
    public enum TrustRoots: Sendable, Hashable {
        /// The system's store (`/etc/ssl/certs` on Debian).
        case system
        /// The certificates of a PEM file, and no others.
        case file(String)
    }

    /// Whom the client trusts; the system's store by default.
    public var trustRoots: TrustRoots
    /// The name the server's certificate must carry; nil for the host of the address (a DNS name, or an IP address
    /// then matched against the certificate's IP addresses).
    public var serverName: String?
    /// A PEM file of the client's certificate (and its intermediates), for a server that requires one.
    public var certificateFile: String?
    /// The PEM file of the private key of ``certificateFile``.
    public var keyFile: String?

    public init(
        trustRoots: TrustRoots = .system,
        serverName: String? = nil,
        certificateFile: String? = nil,
        keyFile: String? = nil
    ) {
        self.trustRoots = trustRoots
        self.serverName = serverName
        self.certificateFile = certificateFile
        self.keyFile = keyFile
    }

    /// The context of a connection; files are read again for each, so a renewed client certificate is used as soon
    /// as it is on disk.
    ///
    /// - Throws: ``AiotaskClientError`` with code ``AiotaskClientError/Code/invalidTLSConfiguration``.
    func makeContext() throws(AiotaskClientError) -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        do {
            if case .file(let path) = trustRoots {
                configuration.trustRoots = .certificates(try Self.certificates(path, "the CA file"))
            }
            switch (certificateFile, keyFile) {
            case (let certificate?, let key?):
                configuration.certificateChain = try Self.certificates(certificate, "the client certificate")
                    .map { .certificate($0) }
                do {
                    configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
                } catch {
                    throw AiotaskClientError(
                        .invalidTLSConfiguration,
                        reason: "cannot read the client key \(key) as an unencrypted PEM private key: \(error)"
                    )
                }
            case (nil, nil):
                break
            case (.some, nil), (nil, .some):
                throw AiotaskClientError(
                    .invalidTLSConfiguration,
                    reason: "a client certificate needs its key, and a key its certificate"
                )
            }
            return try NIOSSLContext(configuration: configuration)
        } catch let error as AiotaskClientError {
            throw error
        } catch NIOSSLError.failedToLoadPrivateKey {
            throw AiotaskClientError(
                .invalidTLSConfiguration,
                reason: "the client key \(keyFile ?? "") is not the key of the certificate \(certificateFile ?? "")"
            )
        } catch {
            throw AiotaskClientError(.invalidTLSConfiguration, reason: "\(error)")
        }
    }

    private static func certificates(_ path: String, _ what: String) throws(AiotaskClientError) -> [NIOSSLCertificate] {
        let certificates: [NIOSSLCertificate]
        do {
            certificates = try NIOSSLCertificate.fromPEMFile(path)
        } catch {
            throw AiotaskClientError(
                .invalidTLSConfiguration,
                reason: "cannot read \(what) \(path) as PEM certificates: \(error)"
            )
        }
        guard !certificates.isEmpty else {
            throw AiotaskClientError(.invalidTLSConfiguration, reason: "\(what) \(path) holds no PEM certificate")
        }
        return certificates
    }

    /// The handlers that put TLS under the connection's frames: NIOSSL's client handler, told the name to check
    /// (the SNI too, unless it is an IP address, which SNI cannot carry), and a ``TLSOutcome`` after it.
    func makeHandlers(
        context: NIOSSLContext,
        host: String,
        outcome: TLSOutcome
    ) throws(AiotaskClientError) -> [any ChannelHandler] {
        let name = serverName ?? host
        let isAddress = (try? SocketAddress(ipAddress: name, port: 0)) != nil
        do {
            let tls = try NIOSSLClientHandler(context: context, serverHostname: isAddress ? nil : name)
            return [tls, TLSOutcomeHandler(outcome: outcome, serverName: name)]
        } catch let error as AiotaskClientError {
            throw error
        } catch {
            throw AiotaskClientError(.invalidTLSConfiguration, reason: "server name \(name): \(error)")
        }
    }
}

/// What became of a connection's TLS: its handshake, and the first TLS error seen (during the handshake or, for a
/// server that checks the client's certificate after it, in TLS 1.3, right after), as the error the connect throws.
final class TLSOutcome: Sendable {
    let handshake: EventLoopPromise<Void>
    private let firstError = NIOLockedValueBox<AiotaskClientError?>(nil)

    init(on eventLoop: any EventLoop) {
        handshake = eventLoop.makePromise()
    }

    var error: AiotaskClientError? { firstError.withLockedValue { $0 } }

    func record(_ error: AiotaskClientError) {
        firstError.withLockedValue { $0 = $0 ?? error }
        handshake.fail(error)
    }
}

/// Sits after NIOSSL's client handler and reports, through a ``TLSOutcome``, how the handshake went, as an
/// ``AiotaskClientError`` that says what failed.
private final class TLSOutcomeHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let outcome: TLSOutcome
    private let serverName: String
    private var completed = false

    init(outcome: TLSOutcome, serverName: String) {
        self.outcome = outcome
        self.serverName = serverName
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted? = event as? TLSUserEvent {
            completed = true
            outcome.handshake.succeed()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        outcome.record(Self.describe(error, serverName: serverName, afterHandshake: completed))
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !completed {
            outcome.record(
                AiotaskClientError(
                    .plaintextServer,
                    reason: "the server closed the connection without answering the TLS handshake: is it a "
                        + "plaintext (tcp://) listener?"
                )
            )
        }
        context.fireChannelInactive()
    }

    /// The error a TLS failure makes: which check failed, with NIOSSL's own text after it.
    static func describe(_ error: any Error, serverName: String, afterHandshake: Bool) -> AiotaskClientError {
        let text = "\(error)"
        if let extra = error as? NIOSSLExtraError, extra == .failedToValidateHostname {
            return AiotaskClientError(
                .certificateNameMismatch,
                reason: "the server's certificate is not for \(serverName) (give the name it is for with the "
                    + "server name option) [\(text)]"
            )
        }
        if text.contains("CERTIFICATE_VERIFY_FAILED") {
            return AiotaskClientError(
                .untrustedCertificate,
                reason: "the server's certificate is not trusted: not issued by a trusted authority, expired or "
                    + "not yet valid [\(text)]"
            )
        }
        // A plaintext listener answers a ClientHello with bytes that are no TLS record, or closes the connection
        // without a word; a TLS server that refuses sends an alert.
        if text.contains("WRONG_VERSION_NUMBER") || text.contains("UNKNOWN_PROTOCOL") || text.contains("RECORD")
            || (!afterHandshake && (text.contains("EOF") || error as? NIOSSLError == .uncleanShutdown))
        {
            return AiotaskClientError(
                .plaintextServer,
                reason: "the server does not answer in TLS: is it a plaintext (tcp://) listener? [\(text)]"
            )
        }
        if text.contains("ALERT") || afterHandshake {
            return AiotaskClientError(
                .tlsHandshakeRefused,
                reason: "the server refused the TLS handshake (it may require a client certificate it trusts) "
                    + "[\(text)]"
            )
        }
        return AiotaskClientError(.tlsHandshakeRefused, reason: "the TLS handshake failed [\(text)]")
    }
}
