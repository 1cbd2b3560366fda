import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import Glibc
import NIOCore
import NIOPosix
import Testing

@Suite("Connecting and the HELLO handshake")
struct ConnectTests {
    @Test("connects over TCP and a Unix socket, says HELLO, and runs tasks", arguments: [false, true])
    func connectsAndEchoes(overUnixSocket: Bool) async throws {
        let server = try await StubServer.start(overUnixSocket ? .unix : .tcp(host: "127.0.0.1"))
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            #expect(client.serverMaximumPayloadLength == 1 << 20)
            #expect(client.serverProtocolVersion == Hello.currentVersion)
            #expect(client.maximumResultLength == AiotaskClient.defaultMaximumResultLength)

            #expect(try await client.submit(ByteBuffer(string: "buffer")) == ByteBuffer(string: "buffer"))
            #expect(try await client.submit([1, 2, 3]) == [1, 2, 3])
            #expect(try await client.submit("text") == Array("text".utf8))
            #expect(try await client.submit(ByteBuffer()) == ByteBuffer())
            try await client.close()

            let hello = Hello(maximumPayloadLength: UInt32(AiotaskClient.defaultMaximumResultLength))
            #expect(server.log.frames.first == .hello(hello))
        }
        await server.stop()
    }

    @Test("connects to an IPv6 address given as text", .enabled(if: hasIPv6Loopback, "no IPv6 loopback here"))
    func connectsOverIPv6() async throws {
        let server = try await StubServer.start(.tcp(host: "::1"))
        try await withTimeout {
            guard case .tcp(_, let port) = server.address else {
                Issue.record("not a TCP address: \(server.address)")
                return
            }
            let client = try await AiotaskClient.connect(to: "tcp://[::1]:\(port)")
            #expect(try await client.submit("six") == Array("six".utf8))
            try await client.close()
        }
        await server.stop()
    }

    @Test("announces the configured result limit")
    func announcesResultLimit() async throws {
        let server = try await StubServer.start()
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address, maximumResultLength: 4096)
            #expect(server.log.frames.first == .hello(Hello(maximumPayloadLength: 4096)))
            try await client.close()
        }
        await server.stop()
    }

    @Test("fails with handshakeFailed when the server never answers HELLO")
    func handshakeTimeout() async throws {
        let server = try await StubServer.start { _, _ in }
        // The given timeout, not the 10 s default, ends the wait: the limit against a hang is below the default.
        try await withTimeout(.seconds(5)) {
            let error = await #expect(throws: AiotaskClientError.self) {
                _ = try await AiotaskClient.connect(to: server.address, connectTimeout: .seconds(1))
            }
            #expect(error?.code == .handshakeFailed)
            #expect(
                error?.reason.contains("did not answer HELLO within 1.0 seconds") == true,
                "\(String(describing: error))"
            )
            await server.log.wait { $0.contains(.hello(Hello(maximumPayloadLength: 64 << 20))) }
            // Giving up, the client closed its connection: the server sees it end.
            await server.waitUntilConnectionsClose()
        }
        await server.stop()
    }

    @Test("fails with closedBeforeHandshake when the server closes instead of answering HELLO")
    func handshakeClosed() async throws {
        let server = try await StubServer.start { connection, _ in connection.close() }
        try await withTimeout {
            let error = await #expect(throws: AiotaskClientError.self) {
                _ = try await AiotaskClient.connect(to: server.address)
            }
            #expect(error?.code == .closedBeforeHandshake)
        }
        await server.stop()
    }

    @Test("a server that closes every connection as it accepts it always gives closedBeforeHandshake")
    func closedAtAccept() async throws {
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in channel.close() }
            .bind(host: "127.0.0.1", port: 0).get()
        try await withTimeout {
            for _ in 0..<50 {
                let error = await #expect(throws: AiotaskClientError.self) {
                    _ = try await AiotaskClient.connect(to: .tcp(host: "127.0.0.1", port: listener.localAddress!.port!))
                }
                #expect(error?.code == .closedBeforeHandshake, "\(String(describing: error))")
            }
        }
        try await listener.close()
    }

    @Test("reports the server's ERROR answer to HELLO")
    func handshakeRefused() async throws {
        let server = try await StubServer.start { connection, _ in
            connection.send(.error("unsupported protocol version"))
            connection.close()
        }
        try await withTimeout {
            let error = await #expect(throws: AiotaskClientError.self) {
                _ = try await AiotaskClient.connect(to: server.address)
            }
            #expect(error == AiotaskClientError(.serverError, reason: "unsupported protocol version"))
        }
        await server.stop()
    }

    @Test("fails with connectFailed when nothing listens")
    func nothingListens() async throws {
        try await withTimeout {
            let error = await #expect(throws: AiotaskClientError.self) {
                _ = try await AiotaskClient.connect(to: .unix(path: "/nonexistent/aiotask-test.sock"))
            }
            #expect(error?.code == .connectFailed)
            #expect(error?.reason.contains("No such file or directory") == true)
        }
    }

    @Test("rejects a malformed address")
    func malformedAddress() async throws {
        await #expect(throws: AddressError.self) {
            _ = try await AiotaskClient.connect(to: "http://example")
        }
    }
}

/// A Unix socket whose listen backlog is full: the server behind it accepts nothing.
@Suite("Connecting to a busy Unix socket")
struct BusyUnixSocketTests {
    @Test("a full listen backlog is waited out until the connect timeout, then named; it is not a refusal at once")
    func fullBacklogIsWaitedOut() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aiotask-busy-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/busy.sock"
        let listener = try Self.socket(bindingTo: path)
        defer { close(listener) }
        #expect(listen(listener, 0) == 0)
        // Connections the listener never accepts, until the kernel refuses the next one: the backlog is full.
        var queued: [Int32] = []
        defer { queued.forEach { close($0) } }
        for _ in 0..<64 {
            let descriptor = try Self.socket(connectingTo: path)
            guard descriptor >= 0 else { break }
            queued.append(descriptor)
        }
        #expect(try Self.socket(connectingTo: path) < 0, "the backlog never filled")

        try await withTimeout {
            let error = await #expect(throws: AiotaskClientError.self) {
                try await AiotaskClient.connect(to: .unix(path: path), connectTimeout: .milliseconds(300))
            }
            #expect(error?.code == .connectFailed)
            #expect(error?.description.contains("listen backlog stayed full until the connect timeout") == true)
        }
    }

    private static func socket(bindingTo path: String) throws -> Int32 {
        let descriptor = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        let bound = UnixSocketAddress.bind(descriptor, to: path)
        guard bound == 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        return descriptor
    }

    /// A non-blocking connect: the descriptor, or -1 when the kernel refused it with `EAGAIN`.
    private static func socket(connectingTo path: String) throws -> Int32 {
        let descriptor = Glibc.socket(
            AF_UNIX,
            Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue),
            0
        )
        guard descriptor >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        let connected = UnixSocketAddress.connect(descriptor, to: path)
        guard connected == 0 else {
            let error = errno
            close(descriptor)
            guard error == EAGAIN else { throw POSIXError(.init(rawValue: error) ?? .EIO) }
            return -1
        }
        return descriptor
    }
}
