import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOCore
import Testing

@testable import AiotaskServer

#if canImport(Glibc)
    import Glibc
#endif

/// An HTTP reply as a test reads it.
struct HTTPReply: Sendable {
    var status: Int
    /// Header names in lower case.
    var headers: [String: String]
    var body: String
}

/// A blocking HTTP/1.1 client of one request per connection, on plain sockets: the metrics listener answers and
/// closes, so the reply is what arrives before the end of the stream. Every read and write is bounded by
/// `SO_RCVTIMEO`/`SO_SNDTIMEO`.
enum HTTPProbe {
    /// Connects to `address` (IPv4).
    static func connect(_ address: SocketAddress, timeout: Duration = .seconds(10)) throws -> Int32 {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        let seconds = timeout * testSlowdown
        var limit = timeval(tv_sec: Int(seconds.components.seconds), tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        guard case .v4(let v4) = address else { throw POSIXError(.EAFNOSUPPORT) }
        var socketAddress = v4.address
        let result = withUnsafePointer(to: &socketAddress) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else {
            let error = errno
            close(descriptor)
            throw POSIXError(.init(rawValue: error) ?? .EIO)
        }
        return descriptor
    }

    static func send(_ descriptor: Int32, _ text: String) throws {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            // MSG_NOSIGNAL: a peer that closed (the listener refusing an endless header) is an error, not SIGPIPE.
            let count = bytes.withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard count > 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
            bytes = bytes.dropFirst(count)
        }
    }

    /// Reads to the end of the stream (or a reset, after which what came is the reply) and parses the reply.
    static func readReply(_ descriptor: Int32) throws -> HTTPReply {
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count > 0 {
                received.append(contentsOf: buffer[..<count])
                continue
            }
            if count < 0 && errno != ECONNRESET { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
            break
        }
        return try parse(String(decoding: received, as: UTF8.self))
    }

    static func parse(_ text: String) throws -> HTTPReply {
        let parts = text.components(separatedBy: "\r\n\r\n")
        let lines = parts[0].components(separatedBy: "\r\n")
        let statusLine = lines[0].split(separator: " ")
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else {
            throw POSIXError(.EBADMSG)
        }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(
                in: .whitespaces
            )
        }
        return HTTPReply(status: status, headers: headers, body: parts.dropFirst().joined(separator: "\r\n\r\n"))
    }

    /// One request, its reply.
    static func exchange(_ address: SocketAddress, _ request: String) throws -> HTTPReply {
        let descriptor = try connect(address)
        defer { close(descriptor) }
        try send(descriptor, request)
        return try readReply(descriptor)
    }

    /// `GET /metrics`, with an `Accept` header if given.
    static func scrape(_ address: SocketAddress, accept: String? = nil) throws -> HTTPReply {
        let acceptLine = accept.map { "Accept: \($0)\r\n" } ?? ""
        return try exchange(address, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\(acceptLine)\r\n")
    }
}

/// The samples of a Prometheus text exposition, by `name{labels}` as written.
func metricSamples(_ text: String) -> [String: Double] {
    var samples: [String: Double] = [:]
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        guard let space = line.lastIndex(of: " ") else { continue }
        samples[String(line[..<space])] = Double(line[line.index(after: space)...])
    }
    return samples
}

extension TestServer {
    /// A worker whose metrics listener is on `127.0.0.11`, on a free port.
    static func startWithMetrics(
        handler: ProcessCommand = .builtin("chaos"),
        workers: Int = 2,
        configure: (inout ServerConfiguration) -> Void = { _ in }
    ) async throws -> (TestServer, SocketAddress) {
        let server = try await start(handler: handler, workers: workers) {
            $0.metricsListenAddresses = [.tcp(host: "127.0.0.11", port: 0)]
            configure(&$0)
        }
        let address = try #require(server.server.metricsLocalAddresses.first)
        return (server, address)
    }

    /// A scrape's samples, read off the cooperative pool's threads.
    static func samples(at address: SocketAddress) async throws -> [String: Double] {
        let reply = try await Task.detached { try HTTPProbe.scrape(address) }.value
        #expect(reply.status == 200)
        return metricSamples(reply.body)
    }
}

/// Debian's `prometheus` package: `promtool` and the server (scripts/install-deps installs it).
enum PrometheusTools {
    static let promtool = "/usr/bin/promtool"
    static let server = "/usr/bin/prometheus"
    static var promtoolIsInstalled: Bool { access(promtool, X_OK) == 0 }
    static var serverIsInstalled: Bool { access(server, X_OK) == 0 }
}
