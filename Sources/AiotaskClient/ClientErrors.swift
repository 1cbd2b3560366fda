import AiotaskProtocol
import NIOCore
import NIOPosix

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A task that ended without a result: the server answered it with a `FAILED` frame, or the client refused or
/// abandoned it locally (a payload over the server's limit, a result over the client's limit, a cancellation).
public struct TaskFailure: Error, Hashable, Sendable {
    /// The task that failed.
    public var taskID: TaskID
    /// Why it failed.
    public var reason: FailureReason
    /// Details: the handler's error description, the worker's exit status, or the client's own explanation.
    public var message: String

    /// Creates a failure of `taskID` for `reason`.
    public init(taskID: TaskID, reason: FailureReason, message: String) {
        self.taskID = taskID
        self.reason = reason
        self.message = message
    }

    /// The failure of a task whose awaiting Swift task was cancelled, or that was cancelled before it was sent.
    static func cancelledByClient(_ id: TaskID) -> TaskFailure {
        TaskFailure(taskID: id, reason: .cancelled, message: "cancelled by the client")
    }
}

extension TaskFailure: CustomStringConvertible {
    /// `task 1b4e…-… failed (timed out): killed after 30 s`.
    public var description: String {
        message.isEmpty ? "task \(taskID) failed (\(reason))" : "task \(taskID) failed (\(reason)): \(message)"
    }
}

/// A problem with the connection rather than with one task. Every request pending on the connection ends with
/// it, and every later request on the same client fails with it at once.
public struct AiotaskClientError: Error, Hashable, Sendable {
    /// What kind of problem this is.
    public struct Code: Hashable, Sendable {
        private enum Base: Hashable, Sendable {
            case connectFailed, closedBeforeHandshake, handshakeFailed, connectionLost, serverError, protocolViolation
            case legacyProtocol, unsupportedByServer, permissionDenied
            case untrustedCertificate, certificateNameMismatch, tlsHandshakeRefused, plaintextServer
            case invalidTLSConfiguration
        }

        private let base: Base

        private init(_ base: Base) {
            self.base = base
        }

        /// No connection could be made (refused, no such socket, unknown host, connect timeout).
        public static let connectFailed = Code(.connectFailed)
        /// The server closed the connection before answering `HELLO` (it was stopping, or at its connection
        /// limit). Nothing was sent yet, so connecting again is safe.
        public static let closedBeforeHandshake = Code(.closedBeforeHandshake)
        /// The connection was made but the server did not answer `HELLO` in time, or refused it.
        public static let handshakeFailed = Code(.handshakeFailed)
        /// The connection ended: the server closed it, an I/O error broke it, or the client was closed.
        public static let connectionLost = Code(.connectionLost)
        /// The server sent an `ERROR` frame (its message is the ``AiotaskClientError/reason``) and closed the
        /// connection.
        public static let serverError = Code(.serverError)
        /// The server sent something the protocol does not allow; the client closed the connection.
        public static let protocolViolation = Code(.protocolViolation)
        /// The request needs the extended protocol, and the client speaks the legacy protocol of aiotask 0.0.2
        /// with this server (``WireProtocol/legacy``): a per-task timeout, ``TaskHandle/cancel()``, server
        /// statistics. The connection stays usable.
        public static let legacyProtocol = Code(.legacyProtocol)
        /// The request needs a later protocol version than the server speaks (it is an older `aiotaskd`), such as
        /// ``AiotaskClient/poolStatus()``. The connection stays usable.
        public static let unsupportedByServer = Code(.unsupportedByServer)
        /// The server does not let this client's user in (its `allow-users` and `allow-groups` on a Unix socket),
        /// and closed the connection before reading anything; the ``AiotaskClientError/reason`` says which user
        /// and socket. Trying again does not help: the server's settings or the client's user must change.
        public static let permissionDenied = Code(.permissionDenied)
        /// A `tls://` server's certificate does not chain to the client's trust roots, or is expired or not yet
        /// valid.
        public static let untrustedCertificate = Code(.untrustedCertificate)
        /// A `tls://` server's certificate is trusted but not for the name the client checks (the address's host,
        /// or ``ClientTLSConfiguration/serverName``).
        public static let certificateNameMismatch = Code(.certificateNameMismatch)
        /// A `tls://` server refused the TLS handshake: it requires a client certificate and got none, or one it
        /// does not accept, or no TLS version both speak.
        public static let tlsHandshakeRefused = Code(.tlsHandshakeRefused)
        /// A `tls://` address answered without TLS: a plaintext (`tcp://`) listener.
        public static let plaintextServer = Code(.plaintextServer)
        /// The client's own TLS files cannot be used: a CA file, certificate or key that cannot be read, or a key
        /// that is not the certificate's. Nothing was sent.
        public static let invalidTLSConfiguration = Code(.invalidTLSConfiguration)
    }

    /// What kind of problem this is.
    public var code: Code
    /// A human-readable explanation; for ``Code/serverError`` the server's own message, for
    /// ``Code/permissionDenied`` the server's message after its `permission denied: `.
    public var reason: String

    /// Creates an error of the given kind.
    public init(_ code: Code, reason: String) {
        self.code = code
        self.reason = reason
    }
}

extension AiotaskClientError.Code: CustomStringConvertible {
    public var description: String {
        switch base {
        case .connectFailed: "cannot connect"
        case .closedBeforeHandshake: "connection closed before the handshake"
        case .handshakeFailed: "handshake failed"
        case .connectionLost: "connection lost"
        case .serverError: "server error"
        case .protocolViolation: "protocol violation by the server"
        case .legacyProtocol: "not available with the legacy protocol"
        case .unsupportedByServer: "not supported by the server"
        case .permissionDenied: "the server refused this user"
        case .untrustedCertificate: "untrusted server certificate"
        case .certificateNameMismatch: "server certificate name mismatch"
        case .tlsHandshakeRefused: "TLS handshake refused"
        case .plaintextServer: "not a TLS server"
        case .invalidTLSConfiguration: "invalid TLS configuration"
        }
    }
}

extension AiotaskClientError: CustomStringConvertible {
    /// `connection lost: the server closed the connection`.
    public var description: String { "\(code): \(reason)" }
}

extension AiotaskClientError {
    /// The error of a connection the server closed with an `ERROR` frame saying `message`: a refusal of the
    /// client's user (a message that starts with `ErrorMessage.permissionDeniedPrefix`) is
    /// ``Code/permissionDenied``, anything else ``Code/serverError``.
    static func serverClosed(saying message: String) -> AiotaskClientError {
        if message.hasPrefix(ErrorMessage.permissionDeniedPrefix) {
            return AiotaskClientError(
                .permissionDenied,
                reason: String(message.dropFirst(ErrorMessage.permissionDeniedPrefix.count))
            )
        }
        return AiotaskClientError(.serverError, reason: message.isEmpty ? "(no message)" : message)
    }

    /// A short description of an error from the transport: the system's text for an `errno`, the first failed
    /// address of a connect attempt, or the error's own description.
    static func describe(_ error: any Error) -> String {
        switch error {
        case let error as IOError:
            return String(cString: strerror(error.errnoCode))
        case let error as NIOConnectionError:
            if let dnsError = error.dnsAError ?? error.dnsAAAAError {
                return "cannot resolve \(error.host): \(dnsError)"
            }
            if let first = error.connectionErrors.first {
                return describe(first.error)
            }
            return "\(error)"
        case ChannelError.connectTimeout(let amount):
            return "connect timed out after \(Duration(amount))"
        default:
            return "\(error)"
        }
    }
}
