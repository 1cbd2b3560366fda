import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Clients reach the server over every kind of socket it listens on, and get their own results back.
@Suite("Transports")
struct TransportTests {
    @Test("a client reaches the server over TCP on 127.0.0.1")
    func tcpIPv4() async throws {
        let server = try await TestServer.start(listen: [.tcp(host: "127.0.0.1", port: 0)])
        try await withTimeout {
            let address = try #require(server.server.localAddresses.first { $0.protocol == .inet })
            let port = try #require(address.port)
            #expect(port != 0)
            let client = try await AiotaskClient.connect(to: .tcp(host: "127.0.0.1", port: port))
            #expect(try await client.submit("over ipv4") == Array("over ipv4".utf8))
            // The server saw a TCP peer on the loopback address, not the Unix socket.
            let connected = await server.logs.first { $0.message == "client connected" }
            #expect(connected.metadata["client"]?.hasPrefix("127.0.0.1:") == true)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("an accepted TCP connection sends small frames at once (TCP_NODELAY) and is not in SO_DEBUG mode")
    func acceptedTCPOptions() async throws {
        let server = try await TestServer.start(listen: [.tcp(host: "127.0.0.1", port: 0)])
        try await withTimeout {
            let port = try #require(server.server.localAddresses.first { $0.protocol == .inet }?.port)
            let client = try await AiotaskClient.connect(to: .tcp(host: "127.0.0.1", port: port))
            #expect(try await client.submit("options") == Array("options".utf8))
            // The server runs in this process: its end of the connection is the one socket here bound to its port
            // that is not listening.
            let accepted = try openDescriptors().filter { descriptor in
                var address = sockaddr_in()
                var length = socklen_t(MemoryLayout<sockaddr_in>.size)
                let bound = withUnsafeMutablePointer(to: &address) { pointer in
                    pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        getsockname(descriptor, $0, &length) == 0
                    }
                }
                return bound && address.sin_family == sa_family_t(AF_INET)
                    && UInt16(bigEndian: address.sin_port) == port
                    && socketOption(descriptor, SOL_SOCKET, SO_ACCEPTCONN) == 0
            }
            #expect(accepted.count == 1)
            for descriptor in accepted {
                #expect(socketOption(descriptor, Int32(IPPROTO_TCP), TCP_NODELAY) == 1)
                #expect(socketOption(descriptor, SOL_SOCKET, SO_DEBUG) == 0)
            }
            try await client.close()
        }
        try await server.stop()
    }

    /// The descriptors open in this process.
    func openDescriptors() throws -> [Int32] {
        try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").compactMap { Int32($0) }
    }

    /// An integer socket option of `descriptor`, or nil if it has none.
    func socketOption(_ descriptor: Int32, _ level: Int32, _ name: Int32) -> Int32? {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(descriptor, level, name, &value, &length) == 0 ? value : nil
    }

    @Test("a client reaches the server over TCP on [::1]", .enabled(if: hasIPv6Loopback, "no IPv6 loopback here"))
    func tcpIPv6() async throws {
        let server = try await TestServer.start(listen: [.tcp(host: "::1", port: 0)])
        try await withTimeout {
            let address = try #require(server.server.localAddresses.first { $0.protocol == .inet6 })
            let port = try #require(address.port)
            let client = try await AiotaskClient.connect(to: "tcp://[::1]:\(port)")
            #expect(try await client.submit("over ipv6") == Array("over ipv6".utf8))
            let connected = await server.logs.first { $0.message == "client connected" }
            #expect(connected.metadata["client"]?.hasPrefix("::1:") == true)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a client reaches the server over a Unix socket")
    func unixSocket() async throws {
        let server = try await TestServer.start()
        try await withTimeout {
            guard case .unix(let path) = server.address else { Issue.record("not a Unix address"); return }
            #expect(server.server.localAddresses.contains { $0.protocol == .unix })
            let client = try await AiotaskClient.connect(to: "unix:\(path)")
            #expect(try await client.submit("over unix") == Array("over unix".utf8))
            let connected = await server.logs.first { $0.message == "client connected" }
            #expect(connected.metadata["client"] == "unix")
            try await client.close()
        }
        try await server.stop()
    }

    @Test("5,000 concurrent tasks over 4 connections each get their own result")
    func manyConcurrentTasks() async throws {
        let server = try await TestServer.start(workers: 2)
        try await withTimeout(.seconds(40)) {
            var clients: [AiotaskClient] = []
            for _ in 0..<4 { clients.append(try await server.client()) }
            let taskCount = 5_000
            let mismatches = try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<taskCount {
                    let client = clients[index % clients.count]
                    group.addTask {
                        // Distinct and of varied length, so a result delivered to the wrong task is noticed.
                        let payload = "task \(index) " + String(repeating: "x", count: index % 97)
                        let result = try await client.submit(payload)
                        return result == Array(payload.utf8) ? 0 : 1
                    }
                }
                return try await group.reduce(0, +)
            }
            #expect(mismatches == 0)
            let info = try await server.server.info()
            #expect(info.tasks.succeeded == taskCount)
            #expect(info.connections == 4)
            for client in clients { try await client.close() }
        }
        try await server.stop()
    }

    @Test("a 5 MiB task comes back whole over the extended protocol", arguments: [false, true])
    func largePayload(overTCP: Bool) async throws {
        let server = try await TestServer.start(listen: overTCP ? [.tcp(host: "127.0.0.1", port: 0)] : [])
        try await withTimeout(.seconds(30)) {
            let client: AiotaskClient
            if overTCP {
                let port = try #require(server.server.localAddresses.first { $0.protocol == .inet }?.port)
                client = try await AiotaskClient.connect(to: .tcp(host: "127.0.0.1", port: port))
            } else {
                client = try await server.client()
            }
            let payload = pseudoRandomBytes(count: 5 * 1024 * 1024)
            async let first = client.submit(payload)
            async let second = client.submit(Array(payload.reversed()))
            let (firstResult, secondResult) = try await (first, second)
            #expect(firstResult.count == payload.count)
            #expect(firstResult == payload)
            #expect(secondResult == Array(payload.reversed()))
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a result over the limit the client announced fails with payloadTooLarge; the connection carries on")
    func resultOverClientLimit() async throws {
        let server = try await TestServer.start(workers: 1)
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address, maximumResultLength: 1000)
            let failure = try await #require(throws: TaskFailure.self) {
                try await client.submit([UInt8](repeating: 0x61, count: 1001))
            }
            #expect(failure.reason == .payloadTooLarge)
            #expect(failure.message.contains("1001 bytes exceeds the client's limit of 1000 bytes"))
            let fits = [UInt8](repeating: 0x62, count: 1000)
            #expect(try await client.submit(fits) == fits)
            // The refused result is counted as a failure, not as a success.
            let tasks = try await server.server.info().tasks
            #expect(tasks.succeeded == 1 && tasks.failed == 1)
            try await client.close()
        }
        try await server.stop()
    }
}

/// `count` varied bytes from a xorshift generator with a random seed.
func pseudoRandomBytes(count: Int) -> [UInt8] {
    var state = UInt64.random(in: 1...UInt64.max)
    var bytes: [UInt8] = []
    bytes.reserveCapacity(count + 8)
    while bytes.count < count {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        withUnsafeBytes(of: state) { bytes.append(contentsOf: $0) }
    }
    return Array(bytes.prefix(count))
}
