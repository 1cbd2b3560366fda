/// Where a server listens or a client connects: `tcp://host:port` (IPv6 hosts in brackets) or `unix:/path`.
public enum ServerAddress: Hashable, Sendable {
    /// A TCP endpoint. `host` is a name or an address literal, without brackets.
    case tcp(host: String, port: Int)
    /// A Unix stream socket path.
    case unix(path: String)

    /// The address packaged installations listen on.
    public static let defaultUnixPath = "/run/aiotask/aiotask.sock"

    /// Parses `tcp://127.0.0.1:4242`, `tcp://[::1]:4242`, `tcp://localhost:4242` or `unix:/run/x.sock`.
    public init(parsing text: String) throws(AddressError) {
        if text.hasPrefix("unix:") {
            var path = String(text.dropFirst("unix:".count))
            if path.hasPrefix("//") { path.removeFirst(2) }
            guard path.hasPrefix("/") || !path.isEmpty else { throw AddressError(text, "empty socket path") }
            guard path.utf8.count < 108 else { throw AddressError(text, "socket path longer than 107 bytes") }
            self = .unix(path: path)
            return
        }
        guard text.hasPrefix("tcp://") else {
            throw AddressError(text, "expected tcp://HOST:PORT or unix:/PATH")
        }
        let rest = text.dropFirst("tcp://".count)
        let host: Substring
        let portText: Substring
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw AddressError(text, "missing ] after IPv6 host") }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let afterHost = rest[rest.index(after: close)...]
            guard afterHost.hasPrefix(":") else { throw AddressError(text, "missing :PORT") }
            portText = afterHost.dropFirst()
        } else {
            guard let colon = rest.lastIndex(of: ":") else { throw AddressError(text, "missing :PORT") }
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
            guard !host.contains(":") else { throw AddressError(text, "put an IPv6 host in brackets: [::1]") }
        }
        guard !host.isEmpty else { throw AddressError(text, "missing host") }
        guard portText.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }),
            let port = Int(portText), (0...65535).contains(port)
        else {
            throw AddressError(text, "port must be a number from 0 to 65535")
        }
        self = .tcp(host: String(host), port: port)
    }
}

extension ServerAddress: CustomStringConvertible {
    public var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "tcp://[\(host)]:\(port)" : "tcp://\(host):\(port)"
        case .unix(let path): "unix:\(path)"
        }
    }
}

/// A server address that could not be parsed.
public struct AddressError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The text that was given.
    public var text: String
    /// What is wrong with it.
    public var reason: String

    init(_ text: String, _ reason: String) {
        self.text = text
        self.reason = reason
    }

    public var description: String { "invalid address '\(text)': \(reason)" }
}
