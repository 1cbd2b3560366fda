import NIOConcurrencyHelpers
import NIOSSL

/// What the `tls://` listeners serve new connections with: the context made of the latest good TLS material, and
/// the admission settings. A reload swaps it whole (``replace(with:)``); a connection takes it once, as it is
/// accepted, so connections already open keep the context they began with.
final class TLSListenerState: Sendable {
    struct Current: Sendable {
        let context: NIOSSLContext
        let allowedClients: [String]
        let handshakeTimeout: Duration?
    }

    private let current: NIOLockedValueBox<Current>

    /// - Throws: ``ServerTLSError`` when `configuration` cannot serve.
    init(_ configuration: ServerTLSConfiguration) throws(ServerTLSError) {
        current = NIOLockedValueBox(try Self.make(configuration))
    }

    /// What a connection accepted now is served with.
    var forNewConnection: Current { current.withLockedValue { $0 } }

    /// Makes a context of `configuration` and serves new connections with it; on an error the current one stays.
    func replace(with configuration: ServerTLSConfiguration) throws(ServerTLSError) {
        let next = try Self.make(configuration)
        current.withLockedValue { $0 = next }
    }

    private static func make(_ configuration: ServerTLSConfiguration) throws(ServerTLSError) -> Current {
        Current(
            context: try configuration.makeContext(),
            allowedClients: configuration.allowedClients,
            handshakeTimeout: configuration.handshakeTimeout
        )
    }
}
