/// Where a server listens or a client connects: `tcp://host:port`, `tls://host:port` (IPv6 hosts in brackets) or
/// `unix:/path`.
public enum ServerAddress: Hashable, Sendable {
    /// A TCP endpoint. `host` is a name or an address literal, without brackets.
    case tcp(host: String, port: Int)
    /// A TCP endpoint whose connections are TLS from their first byte; the frames inside are those of `tcp`.
    /// `host` is a name or an address literal, without brackets; a client checks the server's certificate against
    /// it unless told another name.
    case tls(host: String, port: Int)
    /// A Unix stream socket path.
    case unix(path: String)

    /// The address packaged installations listen on.
    public static let defaultUnixPath = "/run/aiotask/aiotask.sock"

    /// Parses `tcp://127.0.0.1:4242`, `tcp://[::1]:4242`, `tcp://localhost:4242`, `tls://host:4242` (as `tcp://`) or
    /// `unix:/run/x.sock`.
    public init(parsing text: String) throws(AddressError) {
        if text.hasPrefix("unix:") {
            var path = String(text.dropFirst("unix:".count))
            if path.hasPrefix("//") { path.removeFirst(2) }
            guard path.hasPrefix("/") || !path.isEmpty else {
                throw AddressError(text, .invalidSocketPath, "empty socket path")
            }
            guard path.utf8.count < 108 else {
                throw AddressError(text, .invalidSocketPath, "socket path longer than 107 bytes")
            }
            self = .unix(path: path)
            return
        }
        let isTLS = text.hasPrefix("tls://")
        guard text.hasPrefix("tcp://") || isTLS else {
            throw AddressError(text, .unknownScheme, "expected tcp://HOST:PORT, tls://HOST:PORT or unix:/PATH")
        }
        let rest = text.dropFirst("tcp://".count)
        let host: Substring
        let portText: Substring
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else {
                throw AddressError(text, .invalidHost, "missing ] after IPv6 host")
            }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let afterHost = rest[rest.index(after: close)...]
            guard afterHost.hasPrefix(":") else { throw AddressError(text, .invalidPort, "missing :PORT") }
            portText = afterHost.dropFirst()
        } else {
            guard let colon = rest.lastIndex(of: ":") else { throw AddressError(text, .invalidPort, "missing :PORT") }
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
            guard !host.contains(":") else {
                throw AddressError(text, .invalidHost, "put an IPv6 host in brackets: [::1]")
            }
        }
        guard !host.isEmpty else { throw AddressError(text, .invalidHost, "missing host") }
        guard portText.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }),
            let port = Int(portText), (0...65535).contains(port)
        else {
            throw AddressError(text, .invalidPort, "port must be a number from 0 to 65535")
        }
        self = isTLS ? .tls(host: String(host), port: port) : .tcp(host: String(host), port: port)
    }

    /// The host and port of a `tcp://` or `tls://` address; nil for a Unix socket.
    public var hostAndPort: (host: String, port: Int)? {
        switch self {
        case .tcp(let host, let port), .tls(let host, let port): (host, port)
        case .unix: nil
        }
    }
}

extension ServerAddress: CustomStringConvertible {
    /// `scheme://host:port`, an IPv6 host in brackets.
    private static func describe(_ scheme: String, _ host: String, _ port: Int) -> String {
        host.contains(":") ? "\(scheme)://[\(host)]:\(port)" : "\(scheme)://\(host):\(port)"
    }

    public var description: String {
        switch self {
        case .tcp(let host, let port): Self.describe("tcp", host, port)
        case .tls(let host, let port): Self.describe("tls", host, port)
        case .unix(let path): "unix:\(path)"
        }
    }
}

/// A server address that could not be parsed: switch on its ``code``; its ``reason`` says what is wrong in words.
public struct AddressError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Which part of the address is wrong.
    public struct Code: Hashable, Sendable {
        private enum Base: Hashable, Sendable {
            case unknownScheme, invalidSocketPath, invalidHost, invalidPort
        }

        private let base: Base

        private init(_ base: Base) {
            self.base = base
        }

        /// Neither `tcp://`, `tls://` nor `unix:`.
        public static let unknownScheme = Code(.unknownScheme)
        /// A Unix socket path that is empty or longer than a socket address holds (107 bytes).
        public static let invalidSocketPath = Code(.invalidSocketPath)
        /// A TCP or TLS host that is missing, or an IPv6 host without its brackets.
        public static let invalidHost = Code(.invalidHost)
        /// A TCP or TLS port that is missing or not a number from 0 to 65535.
        public static let invalidPort = Code(.invalidPort)
    }

    /// The text that was given.
    public var text: String
    /// Which part of the address is wrong.
    public var code: Code
    /// What is wrong with it.
    public var reason: String

    init(_ text: String, _ code: Code, _ reason: String) {
        self.text = text
        self.code = code
        self.reason = reason
    }

    public var description: String { "invalid address '\(text)': \(reason)" }
}
