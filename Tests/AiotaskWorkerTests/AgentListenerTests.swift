import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOCore
import Testing

@testable import AiotaskServer

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// HAProxy's view of a host: the agent check (`agent-listen`) and the protocol health check of the reference
/// configuration (packaging/haproxy/aiotask.cfg), against real servers and `aiotaskd` processes.
@Suite("HAProxy agent check and health check", .timeLimit(.minutes(2)))
struct AgentListenerTests {
    /// What HAProxy's `tcp-check send-binary` sends: `STATUS` of the task id "haproxy-check-v1", which no client
    /// uses (docs/deployment.md).
    static let healthCheckSend: [UInt8] = hex("040010686170726f78792d636865636b2d7631")
    /// What its `tcp-check expect binary` waits for: `UPDATE` of that id, `NOT_FOUND`.
    static let healthCheckExpect: [UInt8] = hex("020011686170726f78792d636865636b2d7631ff")

    @Test("the health check's exact bytes are answered by a running aiotaskd, as the reference config expects")
    func healthCheckBytes() async throws {
        // The bytes are copied from packaging/haproxy/aiotask.cfg, so that the config and this test cannot drift.
        let config = try ConfigTests.repositoryFile("packaging/haproxy/aiotask.cfg")
        #expect(config.contains("tcp-check send-binary \(Self.hexText(Self.healthCheckSend))"))
        #expect(config.contains("tcp-check expect binary \(Self.hexText(Self.healthCheckExpect))"))
        let daemon = try await RunningDaemon.start(arguments: ["--handler", "sleep", "--workers", "1"])
        try await daemon.stopAfter {
            try await withTimeout {
                try await RawConnection.with(.unix(path: daemon.socket)) { connection in
                    try await connection.send(Self.healthCheckSend)
                    #expect(
                        try await connection.readBytes(count: Self.healthCheckExpect.count) == Self.healthCheckExpect
                    )
                    // Asked again on the same connection: the check leaves it usable.
                    try await connection.send(Self.healthCheckSend)
                    #expect(
                        try await connection.readBytes(count: Self.healthCheckExpect.count) == Self.healthCheckExpect
                    )
                }
            }
        }
    }

    @Test(
        "aiotaskd's agent check says up ready, drain while an operator drains it (tasks still run), ready after undrain"
    )
    func operatorDrain() async throws {
        let daemon = try await RunningDaemon.start(arguments: Self.agentArguments(["--handler", "sleep"]))
        try await daemon.stopAfter {
            let agent = try Self.agentAddress(of: daemon)
            #expect(try await Self.ask(agent) == "up ready 100%\n")

            let drain = try await runCLI(["drain", "--server", daemon.server])
            #expect(drain.exit == .exited(0), "stderr: \(drain.standardError)")
            #expect(drain.standardOutput == "agent check: up drain\n")
            #expect(try await Self.ask(agent) == "up drain\n")
            #expect(daemon.process.standardError.contains("drained by the operator"))
            // Drained for the balancer's new connections only: a client already connected is served.
            let client = try await AiotaskClient.connect(to: .unix(path: daemon.socket))
            #expect(try await client.submit("1") == Array("1".utf8))
            let status = try await runCLI(["status", "--server", daemon.server])
            #expect(status.standardOutput.contains("agent check  up drain"), "\(status.standardOutput)")

            let undrain = try await runCLI(["undrain", "--server", daemon.server])
            #expect(undrain.standardOutput == "agent check: up ready 100%\n", "stderr: \(undrain.standardError)")
            #expect(try await Self.ask(agent) == "up ready 100%\n")
            try await client.close()
        }
    }

    @Test("while a reload rolls a busy pool over, aiotaskd's agent check says drain, and ready once it is done")
    func reloadDrains() async throws {
        let daemon = try await RunningDaemon.start(arguments: Self.agentArguments(["--handler", "sleep"]))
        try await daemon.stopAfter {
            let agent = try Self.agentAddress(of: daemon)
            let client = try await AiotaskClient.connect(to: .unix(path: daemon.socket))
            let long = try await client.enqueue(ByteBuffer(string: "1500"))
            try await withTimeout {
                while try await client.serverInfo().workers.busy < 1 { try await Task.sleep(for: .milliseconds(5)) }
            }
            #expect(try await Self.ask(agent) == "up ready 50%\n")
            try await daemon.reload(count: 1)
            #expect(try await Self.ask(agent) == "up drain\n")
            #expect(try await long.result() == ByteBuffer(string: "1500"))
            // The renewed process comes up right after the task is answered.
            try await withTimeout {
                while try await Self.ask(agent) != "up ready 100%\n" { try await Task.sleep(for: .milliseconds(10)) }
            }
            try await client.close()
        }
    }

    @Test("aiotaskd's agent check says down with its reason while no pool process stays alive")
    func poolFailing() async throws {
        let daemon = try await RunningDaemon.start(arguments: Self.agentArguments(["--handler", "exec:/bin/false"]))
        try await daemon.stopAfter {
            let agent = try Self.agentAddress(of: daemon)
            // The third crash in a row (restarts after 0, 0.1 and 0.2 s) makes the slot crash-looping.
            try await withTimeout {
                while try await Self.ask(agent) != "down #no pool process stays alive\n" {
                    try await Task.sleep(for: .milliseconds(20))
                }
            }
            #expect(daemon.process.standardError.contains("agent check: down (no pool process stays alive)"))
        }
    }

    @Test("the agent listener bounds its peers: too many bytes, too many connections, a peer that stays; all logged")
    func badPeers() async throws {
        let server = try await TestServer.start {
            $0.agentListenAddresses = [.tcp(host: "127.0.0.1", port: 0)]
        }
        let port = try #require(server.server.agentAddresses.first?.port)
        let agent = ServerAddress.tcp(host: "127.0.0.1", port: port)
        try await withTimeout {
            // Garbage past the byte limit: the connection is closed, and the next peer answered.
            // A plain socket: it keeps sending after the answer and the server's half-close, as a hostile peer would.
            let garbage = try Self.connect(port: port)
            let bytes = [UInt8](repeating: 0xff, count: 4096)
            #expect(write(garbage, bytes, bytes.count) == bytes.count)
            _ = await server.logs.first { $0.message.contains("sent over 1024 bytes") }
            close(garbage)
            #expect(try await Self.ask(agent) == "up ready 100%\n")

            // Peers that read the answer and keep the connection open fill the listener; one more is closed unanswered.
            var held: [Int32] = []
            defer { for descriptor in held { close(descriptor) } }
            for _ in 0..<AgentListenerState.maximumConnections {
                let descriptor = try Self.connect(port: port)
                held.append(descriptor)
                #expect(Self.readLine(descriptor) == "up ready 100%\n")
            }
            let extra = try Self.connect(port: port)
            held.append(extra)
            #expect(Self.readLine(extra) == "")
            _ = await server.logs.first { $0.message.contains("connections open; closing new ones") }
            // Each held peer is closed after the linger limit, and the listener answers again.
            _ = await server.logs.first { $0.message.contains("kept its connection open after the answer") }
            while try await Self.ask(agent) != "up ready 100%\n" { try await Task.sleep(for: .milliseconds(20)) }
        }
        try await server.stop()
    }

    // MARK: Helpers

    /// `arguments` with two pool processes and the agent check on a port of the system's choice.
    static func agentArguments(_ arguments: [String]) -> [String] {
        arguments + ["--workers", "2", "--agent-listen", "tcp://127.0.0.1:0"]
    }

    /// The agent check's address, from the daemon's log line that names the bound port.
    static func agentAddress(of daemon: RunningDaemon) throws -> ServerAddress {
        let match = try #require(
            daemon.process.standardError.firstMatch(of: #/agent check on tcp://127\.0\.0\.1:(\d+)/#),
            "no agent listener in: \(daemon.process.standardError)"
        )
        return .tcp(host: "127.0.0.1", port: try #require(Int(match.1)))
    }

    /// Asks the agent check as HAProxy does: connect, read to the end, and return the text.
    static func ask(_ agent: ServerAddress) async throws -> String {
        try await RawConnection.with(agent) { connection in
            String(decoding: try await connection.readBytesUntilClosed(), as: UTF8.self)
        }
    }

    /// A blocking TCP socket to the agent port on 127.0.0.1, reads time out after 5 s.
    static func connect(port: Int) throws -> Int32 {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        var timeout = timeval(tv_sec: 5 * testSlowdown, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else {
            close(descriptor)
            throw POSIXError(.init(rawValue: errno) ?? .EIO)
        }
        return descriptor
    }

    /// What arrives on `descriptor` up to its end or a newline: "" when the peer closed at once.
    static func readLine(_ descriptor: Int32) -> String {
        var bytes: [UInt8] = []
        var byte: UInt8 = 0
        while read(descriptor, &byte, 1) == 1 {
            bytes.append(byte)
            if byte == UInt8(ascii: "\n") { break }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func hex(_ text: String) -> [UInt8] {
        var bytes: [UInt8] = []
        var index = text.startIndex
        while index < text.endIndex {
            let next = text.index(index, offsetBy: 2)
            bytes.append(UInt8(text[index..<next], radix: 16)!)
            index = next
        }
        return bytes
    }

    static func hexText(_ bytes: [UInt8]) -> String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }
}
