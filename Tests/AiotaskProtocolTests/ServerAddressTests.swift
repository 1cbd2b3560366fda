import AiotaskProtocol
import Testing

@Suite("Server addresses")
struct ServerAddressTests {
    static let good: [(String, ServerAddress)] = [
        ("tcp://127.0.0.1:4242", .tcp(host: "127.0.0.1", port: 4242)),
        ("tcp://0.0.0.0:0", .tcp(host: "0.0.0.0", port: 0)),
        ("tcp://[::1]:4242", .tcp(host: "::1", port: 4242)),
        ("tcp://[::]:65535", .tcp(host: "::", port: 65535)),
        ("tcp://[fe80::1%eth0]:80", .tcp(host: "fe80::1%eth0", port: 80)),
        ("tcp://localhost:4242", .tcp(host: "localhost", port: 4242)),
        ("tcp://worker-1.example.com:1", .tcp(host: "worker-1.example.com", port: 1)),
        ("tcp://localhost:0080", .tcp(host: "localhost", port: 80)),
        ("tls://127.0.0.1:4243", .tls(host: "127.0.0.1", port: 4243)),
        ("tls://[::1]:4243", .tls(host: "::1", port: 4243)),
        ("tls://worker-1.example.com:443", .tls(host: "worker-1.example.com", port: 443)),
        ("unix:/run/aiotask/aiotask.sock", .unix(path: "/run/aiotask/aiotask.sock")),
        ("unix:///tmp/a.sock", .unix(path: "/tmp/a.sock")),
        ("unix:relative.sock", .unix(path: "relative.sock")),
        ("unix:/" + String(repeating: "p", count: 106), .unix(path: "/" + String(repeating: "p", count: 106))),
    ]

    @Test("Parses good addresses", arguments: good)
    func parses(_ text: String, _ expected: ServerAddress) throws {
        #expect(try ServerAddress(parsing: text) == expected)
    }

    @Test("description parses back to the same address", arguments: good.map(\.1))
    func descriptionRoundTrip(_ address: ServerAddress) throws {
        #expect(try ServerAddress(parsing: address.description) == address)
    }

    @Test("Canonical descriptions")
    func descriptions() {
        #expect(ServerAddress.tcp(host: "::1", port: 1).description == "tcp://[::1]:1")
        #expect(ServerAddress.tcp(host: "h", port: 2).description == "tcp://h:2")
        #expect(ServerAddress.unix(path: "/x").description == "unix:/x")
        #expect(ServerAddress.tls(host: "::1", port: 3).description == "tls://[::1]:3")
        #expect(ServerAddress.tls(host: "h", port: 4).description == "tls://h:4")
        #expect(ServerAddress.defaultUnixPath == "/run/aiotask/aiotask.sock")
    }

    static let bad: [(String, String)] = [
        ("", "expected tcp://HOST:PORT, tls://HOST:PORT or unix:/PATH"),
        ("localhost:4242", "expected tcp://HOST:PORT, tls://HOST:PORT or unix:/PATH"),
        ("http://localhost:80", "expected tcp://HOST:PORT, tls://HOST:PORT or unix:/PATH"),
        ("TCP://localhost:80", "expected tcp://HOST:PORT, tls://HOST:PORT or unix:/PATH"),
        ("TLS://localhost:80", "expected tcp://HOST:PORT, tls://HOST:PORT or unix:/PATH"),
        ("tls://localhost", "missing :PORT"),
        ("tls://::1:4242", "put an IPv6 host in brackets: [::1]"),
        ("tls://localhost:65536", "port must be a number from 0 to 65535"),
        ("tcp://localhost", "missing :PORT"),
        ("tcp://", "missing :PORT"),
        ("tcp://[::1]", "missing :PORT"),
        ("tcp://[::1]4242", "missing :PORT"),
        ("tcp://[::1:4242", "missing ] after IPv6 host"),
        ("tcp://::1:4242", "put an IPv6 host in brackets: [::1]"),
        ("tcp://fe80::1:80", "put an IPv6 host in brackets: [::1]"),
        ("tcp://:4242", "missing host"),
        ("tcp://[]:4242", "missing host"),
        ("tcp://localhost:", "port must be a number from 0 to 65535"),
        ("tcp://localhost:65536", "port must be a number from 0 to 65535"),
        ("tcp://localhost:-1", "port must be a number from 0 to 65535"),
        ("tcp://localhost:+80", "port must be a number from 0 to 65535"),
        ("tcp://localhost:-0", "port must be a number from 0 to 65535"),
        ("tcp://localhost:http", "port must be a number from 0 to 65535"),
        ("tcp://localhost:80/", "port must be a number from 0 to 65535"),
        ("tcp://localhost: 80", "port must be a number from 0 to 65535"),
        ("tcp://localhost:99999999999999999999999", "port must be a number from 0 to 65535"),
        ("unix:", "empty socket path"),
        ("unix://", "empty socket path"),
        ("unix:/" + String(repeating: "p", count: 107), "socket path longer than 107 bytes"),
        ("unix:/" + String(repeating: "é", count: 60), "socket path longer than 107 bytes"),
    ]

    @Test("Rejects bad addresses with a reason", arguments: bad)
    func rejects(_ text: String, _ reason: String) {
        #expect(throws: AddressError.self) { try ServerAddress(parsing: text) }
        do {
            _ = try ServerAddress(parsing: text)
        } catch {
            #expect(error.text == text)
            #expect(error.reason == reason)
            #expect(error.description.hasPrefix("invalid address '"))
        }
    }
}
