import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOCore
import Testing

@testable import AiotaskServer

#if canImport(Glibc)
    import Glibc
#endif

/// Clients of a `tls://` listener that never become clients: thousands of stalled handshakes at once, and bytes that
/// are no frames once the handshake is over. Each gets a clear outcome and a log entry; the daemon serves the others.
@Suite("TLS listeners under hostile clients", .serialized)
struct TLSHostileClientTests {
    /// A quarter under a sanitizer (``sanitizerScaled(_:)``): the same paths, in the time its slowdown leaves.
    static let connections = sanitizerScaled(10_000)

    @Test(
        "10,000 connections stalled in the TLS handshake at once are held in bounded memory (a quarter under a sanitizer), a good client is served meanwhile, and the handshake timeout closes each with a log entry",
        .enabled(
            if: (OpenFileLimit.current?.hard ?? 0) >= UInt64(connections + 1000),
            "the hard open-file limit (ulimit -Hn) is below \(connections + 1000)"
        )
    )
    func tenThousandStalledHandshakes() async throws {
        // This process holds the client side of every connection.
        try OpenFileLimit.raiseSoftLimitToHard()
        // Long enough to open them all (about 9 s for 10,000 here) and serve a client while they wait.
        let handshakeTimeout = 20
        let tls = try await TLSTests.start([
            "--tls-handshake-timeout", "\(handshakeTimeout)", "--max-connections", "\(Self.connections + 100)",
        ])
        try await tls.daemon.stopAfter {
            let pid = tls.daemon.process.pid
            let baseline = try #require(statusBytes(of: pid, "VmRSS"))
            let socketsBefore = openSockets(of: pid)
            try await withTimeout(.seconds(Int64(handshakeTimeout + 60))) {
                let stalled = try await onThread {
                    // A TLS record header announcing a ClientHello, and nothing after it: each waits in the handshake.
                    try (0..<Self.connections).map { _ in
                        let socket = try BlockingSocket(
                            connectingTo: "tcp://127.0.0.1:\(tls.tlsPort)",
                            timeout: .seconds(Int64(handshakeTimeout + 30))
                        )
                        try socket.send([0x16, 0x03, 0x01, 0x00, 0x80])
                        return socket
                    }
                }
                // Every one is accepted and held: the daemon counts them among its connections only once let in, so
                // ask the kernel, through the daemon's open descriptors.
                try await waitUntil { openSockets(of: pid) >= socketsBefore + Self.connections }

                // A good client is served while all of them wait.
                let client = try await tls.connect(tls.trusting)
                #expect(String(buffer: try await client.submit(ByteBuffer(string: "meanwhile"))) == "meanwhile")
                try await client.close()

                // Each pending handshake holds a TLS engine and its buffers (about 28 KiB measured), never more than
                // a bounded amount: 10,000 of them stay under 480 MiB.
                let held = try #require(statusBytes(of: pid, "VmRSS")) - baseline
                if residentMemoryIsMeaningful {
                    #expect(held <= Self.connections * 48 << 10, "\(held >> 20) MiB for \(Self.connections) handshakes")
                }

                // The timeout closes every one of them, and logs each.
                let closed = try await onThread { stalled.filter { $0.waitForClose() }.count }
                #expect(closed == Self.connections)
                try await waitUntil {
                    tls.logLines(containing: "refusing TLS connection", "did not finish within").count
                        == Self.connections
                }
            }
            // Still serving once they are gone.
            let client = try await tls.connect(tls.trusting)
            #expect(String(buffer: try await client.submit(ByteBuffer(string: "after"))) == "after")
            try await client.close()
        }
    }

    @Test(
        "bytes that are no frames after a good TLS handshake close that connection with a log entry naming the error, and the daemon serves others"
    )
    func garbageAfterTheHandshake() async throws {
        let tls = try await TLSTests.start()
        try await tls.daemon.stopAfter {
            // openssl's client completes the handshake, sends its standard input inside TLS, and waits for the close.
            let garbage: [UInt8] = [0xEE] + (0..<63).map { UInt8(truncatingIfNeeded: $0 &* 37) }
            let openssl = try SpawnedProcess.spawn(
                "openssl",
                [
                    "s_client", "-connect", "127.0.0.1:\(tls.tlsPort)", "-CAfile", tls.pki.authority(), "-quiet",
                    "-verify_return_error",
                ],
                standardInput: garbage
            )
            let exit = try await openssl.wait(limit: .seconds(20 * Int64(testSlowdown)))
            #expect(exit == .exited(0), "openssl: \(openssl.standardError)")
            // The handshake succeeded (openssl verified the daemon's certificate), then the daemon closed on the bytes.
            _ = try await tls.waitForLog(containing: "closing connection: protocol violation: unknown frame type 238")
            let client = try await tls.connect(tls.trusting)
            #expect(String(buffer: try await client.submit(ByteBuffer(string: "fine"))) == "fine")
            try await client.close()
        }
    }

}

/// How many sockets the process `pid` has open, from `/proc/PID/fd`.
private func openSockets(of pid: pid_t) -> Int {
    let directory = "/proc/\(pid)/fd"
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
    return entries.count { entry in
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(directory)/\(entry)"))?.hasPrefix("socket:")
            ?? false
    }
}

/// Polls `condition` every 20 ms until it holds (the caller's `withTimeout` bounds it).
private func waitUntil(_ condition: () throws -> Bool) async throws {
    while try !condition() { try await Task.sleep(for: .milliseconds(20)) }
}

// Its one stored property is the descriptor, set once; each socket is used by one thread at a time.
extension BlockingSocket: @unchecked Sendable {}

extension BlockingSocket {
    /// Reads until the peer closes the connection; false if the receive timeout passed first.
    func waitForClose() -> Bool {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let received = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress!, $0.count, 0) }
            if received > 0 { continue }
            if received < 0 && errno == EINTR { continue }
            return received == 0 || errno == ECONNRESET
        }
    }
}

@Suite(
    "TLS socket passed by systemd",
    .enabled(if: systemdSocketActivateIsInstalled, "no \(systemdSocketActivate) (package systemd)"),
    .timeLimit(.minutes(1))
)
struct TLSSocketActivationTests {
    @Test(
        "a socket passed under the name tls speaks TLS with the certificate from the credentials folder, and refuses plaintext"
    )
    func adoptsTheTLSSocket() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let pki = try await TestCertificates.make(in: directory)
        _ = try await pki.issue("server", ipAddresses: ["127.0.0.11"])
        // As LoadCredential= does: the files in a folder of their own, named relative to it.
        let credentials = directory + "/credentials"
        try FileManager.default.createDirectory(atPath: credentials, withIntermediateDirectories: true)
        for file in ["server.crt", "server.key"] {
            try FileManager.default.copyItem(atPath: "\(directory)/\(file)", toPath: "\(credentials)/\(file)")
        }
        let port = try SystemdTestKit.freePort(host: "127.0.0.11")
        let daemon = try SocketActivatedDaemon.start(
            listen: "127.0.0.11:\(port)",
            fdname: "tls",
            environment: ["CREDENTIALS_DIRECTORY": credentials],
            [
                "--listen", "unix:\(directory)/aiotask.sock", "--handler", "echo", "--workers", "1",
                "--tls-certificate", "server.crt", "--tls-key", "server.key",
            ]
        )
        defer { daemon.cleanUp() }
        try await daemon.waitUntilListening()
        // The first connection starts the daemon, which adopts the socket as a TLS listener.
        let submit = try SpawnedProcess.spawn(
            Products.aiotask,
            ["submit", "--server", "tls://127.0.0.11:\(port)", "--tls-ca", pki.authority(), "over TLS"]
        )
        #expect(
            try await submit.wait(limit: .seconds(20 * Int64(testSlowdown))) == .exited(0),
            "\(submit.standardError)"
        )
        #expect(submit.standardOutput == "over TLS")
        try await daemon.process.waitForStandardError(containing: "serving adopted socket tls (fd 3) over TLS")
        // A plaintext client on the same socket is refused in the handshake.
        let plain = try SpawnedProcess.spawn(
            Products.aiotask,
            ["submit", "--server", "tcp://127.0.0.11:\(port)", "in the clear"]
        )
        #expect(try await plain.wait(limit: .seconds(20 * Int64(testSlowdown))) != .exited(0))
        try await daemon.process.waitForStandardError(containing: "refusing TLS connection")
        #expect(try await daemon.stop() == .exited(0))
    }
}
