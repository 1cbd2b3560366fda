import NIOSSL

/// The TLS of the server's `tls://` listeners: its certificate and key, the oldest TLS version it speaks, and for
/// mutual TLS the certificate authorities a client's certificate must come from and which identities may connect.
///
/// The material is loaded already (the daemon reads it from the files its settings name, docs/security.md); the
/// server makes a `NIOSSLContext` of it at start and at each reload (``makeContext()``), and new connections use
/// the newest one while those open keep theirs.
public struct ServerTLSConfiguration: Sendable {
    /// The server's certificate, then the intermediates a client needs to reach its root.
    public var certificateChain: [NIOSSLCertificate] = []
    /// The private key of the first certificate of ``certificateChain``.
    public var privateKey: NIOSSLPrivateKey?
    /// The oldest TLS version a client may speak: 1.2 (the default) or 1.3.
    public var minimumVersion: TLSVersion = .tlsv12
    /// The authorities a client's certificate must chain to; empty for no client certificate (TLS without mutual
    /// authentication). When set, a client without a certificate from one of them is refused in the handshake.
    public var clientCertificateAuthorities: [NIOSSLCertificate] = []
    /// With ``clientCertificateAuthorities``: the client identities let in, each matched against the certificate's
    /// subject alternative names (DNS, email, URI) and its subject's common name; empty lets in every client whose
    /// certificate is accepted.
    public var allowedClients: [String] = []
    /// A connection whose handshake has not finished after this long is closed (a client that opens connections
    /// and never completes them, slowloris); nil never.
    public var handshakeTimeout: Duration? = .seconds(10)

    public init() {}

    /// Whether clients must present a certificate (mutual TLS).
    public var requiresClientCertificate: Bool { !clientCertificateAuthorities.isEmpty }

    /// The context new connections are served with.
    ///
    /// - Throws: ``ServerTLSError`` when the certificate or the key is missing, or the key is not the
    ///   certificate's.
    public func makeContext() throws(ServerTLSError) -> NIOSSLContext {
        guard !certificateChain.isEmpty else {
            throw ServerTLSError(.missingCertificate, reason: "no certificate: a tls:// listener needs one")
        }
        guard let privateKey else {
            throw ServerTLSError(.missingKey, reason: "no private key: a tls:// listener needs one")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: certificateChain.map { .certificate($0) },
            privateKey: .privateKey(privateKey)
        )
        configuration.minimumTLSVersion = minimumVersion
        if requiresClientCertificate {
            configuration.certificateVerification = .noHostnameVerification
            configuration.trustRoots = .certificates(clientCertificateAuthorities)
            configuration.sendCANameList = true
        }
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch NIOSSLError.failedToLoadPrivateKey {
            // The chain is loaded first, and BoringSSL then checks that the key is the leaf's.
            throw ServerTLSError(.keyMismatch, reason: "the private key is not the key of the certificate")
        } catch {
            throw ServerTLSError(.invalid, reason: "\(error)")
        }
    }
}

/// TLS material that cannot serve: switch on its ``code``; ``reason`` says what is wrong in words.
public struct ServerTLSError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What is wrong.
    public struct Code: Hashable, Sendable {
        private enum Base: Hashable, Sendable {
            case missingCertificate, missingKey, keyMismatch, invalid
        }

        private let base: Base

        private init(_ base: Base) {
            self.base = base
        }

        /// No certificate was given.
        public static let missingCertificate = Code(.missingCertificate)
        /// No private key was given.
        public static let missingKey = Code(.missingKey)
        /// The private key is not the key of the certificate.
        public static let keyMismatch = Code(.keyMismatch)
        /// BoringSSL refused the material for another reason.
        public static let invalid = Code(.invalid)
    }

    public var code: Code
    public var reason: String

    public init(_ code: Code, reason: String) {
        self.code = code
        self.reason = reason
    }

    public var description: String { reason }
}
