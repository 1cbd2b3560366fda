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
#endif

/// `tls://` listeners of the real `aiotaskd`, with certificates `openssl` makes for each test: TLS and mutual TLS,
/// the client's errors, hostile clients, certificate rotation on SIGHUP, and the errors of bad TLS files.
@Suite("TLS listeners")
struct TLSTests {
    /// A daemon listening on its Unix socket, a `tls://` and a `tcp://` port of 127.0.0.1, with the certificates of
    /// its test.
    struct TLSDaemon {
        let daemon: RunningDaemon
        let pki: TestCertificates
        let tlsPort: Int
        let tcpPort: Int

        var tlsAddress: ServerAddress { .tls(host: "127.0.0.1", port: tlsPort) }
        var tcpAddress: ServerAddress { .tcp(host: "127.0.0.1", port: tcpPort) }
        /// Trusts the test's authority `ca` only.
        var trusting: ClientTLSConfiguration { ClientTLSConfiguration(trustRoots: .file(pki.authority())) }

        /// Connects to the `tls://` port with `tls`.
        func connect(_ tls: ClientTLSConfiguration) async throws -> AiotaskClient {
            try await AiotaskClient.connect(to: tlsAddress, connectTimeout: .seconds(10), tls: tls)
        }

        /// The daemon's log lines that contain every one of `parts`.
        func logLines(containing parts: String...) -> [String] {
            daemon.process.standardError.split(separator: "\n").map(String.init).filter { line in
                parts.allSatisfy(line.contains)
            }
        }

        /// Waits until the daemon has logged a line with every one of `parts`, and returns it.
        func waitForLog(containing parts: String...) async throws -> String {
            try await withTimeout(.seconds(20)) {
                while true {
                    let line = daemon.process.standardError.split(separator: "\n").map(String.init).first { line in
                        parts.allSatisfy(line.contains)
                    }
                    if let line { return line }
                    try await Task.sleep(for: .milliseconds(10))
                }
            }
        }
    }

    /// Makes the authority `ca`, a server certificate for localhost and 127.0.0.1 in the credentials directory
    /// `credentials/` (named there relatively, as `LoadCredential=` would), and starts aiotaskd with `arguments`.
    ///
    /// NIOSSL takes a certificate's IP address that is the peer's as a match whatever name it checks, so a test of the
    /// name check serves a certificate for `localhost` only (`forAddress: false`).
    static func start(
        _ arguments: [String] = [],
        forAddress: Bool = true,
        launcher: [String] = [],
        prepare: (TestCertificates) async throws -> Void = { _ in }
    ) async throws -> TLSDaemon {
        let directory = try makeTemporaryDirectory()
        let pki = try await TestCertificates.make(in: directory)
        _ = try await pki.issue("server", dnsNames: ["localhost"], ipAddresses: forAddress ? ["127.0.0.1"] : [])
        let credentials = directory + "/credentials"
        try FileManager.default.createDirectory(atPath: credentials, withIntermediateDirectories: true)
        for file in ["server.crt", "server.key"] {
            try FileManager.default.copyItem(atPath: "\(directory)/\(file)", toPath: "\(credentials)/\(file)")
        }
        try await prepare(pki)
        let (tlsPort, tcpPort) = (try SystemdTestKit.freePort(), try SystemdTestKit.freePort())
        let daemon = try await RunningDaemon.start(
            arguments: [
                "--listen", "tls://127.0.0.1:\(tlsPort)", "--listen", "tcp://127.0.0.1:\(tcpPort)",
                "--tls-certificate", "server.crt", "--tls-key", "server.key", "--workers", "1",
                "--log-level", "debug",
            ] + arguments,
            environment: ["CREDENTIALS_DIRECTORY": credentials],
            in: directory,
            launcher: launcher
        )
        return TLSDaemon(daemon: daemon, pki: pki, tlsPort: tlsPort, tcpPort: tcpPort)
    }

    @Test("a task makes a round trip over TLS to aiotaskd, with the library and with the CLI")
    func roundTrip() async throws {
        let tls = try await Self.start()
        try await tls.daemon.stopAfter {
            let client = try await tls.connect(tls.trusting)
            #expect(String(buffer: try await client.submit(ByteBuffer(string: "over TLS"))) == "over TLS")
            try await client.close()
            let cli = try await runCLI(
                ["submit", "--server", "\(tls.tlsAddress)", "--tls-ca", tls.pki.authority(), "by the CLI"]
            )
            #expect(cli.exit == .exited(0), "stderr: \(cli.standardError)")
            #expect(cli.standardOutput == "by the CLI")
            // The name the certificate carries, checked instead of the address's host.
            var named = tls.trusting
            named.serverName = "localhost"
            let byName = try await tls.connect(named)
            #expect(String(buffer: try await byName.submit(ByteBuffer(string: "named"))) == "named")
            try await byName.close()
        }
    }

    @Test("mutual TLS lets in a client certificate of tls-client-ca on the allow-list and names it in the journal")
    func mutualTLSAccepted() async throws {
        let tls = try await Self.start(["--tls-client-ca", "ca.crt", "--tls-allowed-clients", "worker-1, other"]) {
            pki in
            _ = try await pki.issue("client", commonName: "worker-1", emails: ["ops@example.com"])
            try FileManager.default.copyItem(atPath: pki.authority(), toPath: pki.directory + "/credentials/ca.crt")
        }
        try await tls.daemon.stopAfter {
            var withCertificate = tls.trusting
            withCertificate.certificateFile = tls.pki.directory + "/client.crt"
            withCertificate.keyFile = tls.pki.directory + "/client.key"
            let client = try await tls.connect(withCertificate)
            #expect(String(buffer: try await client.submit(ByteBuffer(string: "mutual"))) == "mutual")
            try await client.close()
            let entry = try await tls.waitForLog(containing: "task done", "client_cert=worker-1")
            #expect(entry.contains("client=127.0.0.1:"), "\(entry)")
            #expect(tls.logLines(containing: "refusing TLS connection").isEmpty, "\(tls.daemon.process.standardError)")
        }
    }

    /// The clients mutual TLS refuses, each with what its connect throws and the reason the daemon logs.
    static let refusedClients: [(name: String, expected: String)] = [
        ("no certificate", "the client sent no certificate"),
        ("another authority", "the client certificate was rejected"),
        ("expired", "the client certificate was rejected"),
        ("not on the allow-list", "are not in tls-allowed-clients"),
    ]

    @Test(
        "mutual TLS refuses in the handshake a client without a certificate, of another authority, expired or unlisted, logged with its address and reason, and none of its tasks reaches the scheduler"
    )
    func mutualTLSRefused() async throws {
        let metricsPort = try SystemdTestKit.freePort()
        let arguments = [
            "--tls-client-ca", "ca.crt", "--tls-allowed-clients", "worker-1",
            "--metrics-listen", "tcp://127.0.0.1:\(metricsPort)",
        ]
        let tls = try await Self.start(arguments) { pki in
            try FileManager.default.copyItem(atPath: pki.authority(), toPath: pki.directory + "/credentials/ca.crt")
            _ = try await pki.issue("good", commonName: "worker-1")
            _ = try await pki.issue("expired", commonName: "worker-1", expired: true)
            _ = try await pki.issue("unlisted", commonName: "worker-2", dnsNames: ["worker-2.example.com"])
            try await pki.makeAuthority("other")
            _ = try await pki.issue("foreign", commonName: "worker-1", by: "other")
        }
        try await tls.daemon.stopAfter {
            func client(_ name: String?) -> ClientTLSConfiguration {
                var configuration = tls.trusting
                if let name {
                    configuration.certificateFile = "\(tls.pki.directory)/\(name).crt"
                    configuration.keyFile = "\(tls.pki.directory)/\(name).key"
                }
                return configuration
            }
            let cases: [(String, ClientTLSConfiguration)] = [
                ("no certificate", client(nil)), ("another authority", client("foreign")),
                ("expired", client("expired")), ("not on the allow-list", client("unlisted")),
            ]
            for (index, (name, configuration)) in cases.enumerated() {
                await #expect(throws: AiotaskClientError.self, "\(name)") {
                    let refused = try await tls.connect(configuration)
                    // Should the connect succeed, no task may run.
                    _ = try await refused.submit(ByteBuffer(string: "must not run"))
                }
                let reason = Self.refusedClients[index].expected
                let entry = try await tls.waitForLog(containing: "refusing TLS connection", reason)
                #expect(entry.contains("client=127.0.0.1:"), "\(name): \(entry)")
                #expect(entry.contains("warning"), "\(name): \(entry)")
            }
            #expect(tls.logLines(containing: "refusing TLS connection").count == cases.count)
            let samples = try await TestServer.samples(at: try SocketAddress(ipAddress: "127.0.0.1", port: metricsPort))
            #expect(samples["aiotask_connections_refused_total{reason=\"tls\"}"] == Double(cases.count))
            // The daemon still serves, and received none of the refused clients' tasks.
            let good = try await tls.connect(client("good"))
            #expect(String(buffer: try await good.submit(ByteBuffer(string: "let in"))) == "let in")
            try await good.close()
            let status = try await runCLI(["status", "--server", tls.daemon.server, "--json"])
            let json = try JSONSerialization.jsonObject(with: Data(status.standardOutput.utf8)) as? [String: Any]
            let tasks = try #require(json?["tasks"] as? [String: Any], "\(status.standardOutput)")
            #expect(tasks["submitted"] as? Int == 1)
        }
    }

    @Test("a client says what failed: an untrusted server certificate, another name, a plaintext server")
    func clientErrors() async throws {
        let tls = try await Self.start(forAddress: false)
        try await tls.daemon.stopAfter {
            // The system's store does not know the test's authority.
            await #expect { _ = try await tls.connect(ClientTLSConfiguration()) } throws: {
                ($0 as? AiotaskClientError)?.code == .untrustedCertificate
            }
            var wrongName = tls.trusting
            wrongName.serverName = "elsewhere.example.com"
            await #expect { _ = try await tls.connect(wrongName) } throws: {
                ($0 as? AiotaskClientError)?.code == .certificateNameMismatch
            }
            var rightName = tls.trusting
            rightName.serverName = "localhost"
            let named = try await tls.connect(rightName)
            #expect(String(buffer: try await named.submit(ByteBuffer(string: "named"))) == "named")
            try await named.close()
            // TLS to the daemon's plaintext port.
            await #expect {
                _ = try await AiotaskClient.connect(
                    to: .tls(host: "127.0.0.1", port: tls.tcpPort),
                    connectTimeout: .seconds(5),
                    tls: tls.trusting
                )
            } throws: { error in
                (error as? AiotaskClientError)?.code == .plaintextServer
            }
            // ... and the daemon says what came in on its plain port.
            let entry = try await tls.waitForLog(containing: "unknown frame type 22 (a TLS handshake?")
            #expect(entry.contains("client=127.0.0.1:"), "\(entry)")
            let cli = try await runCLI(["submit", "--server", "\(tls.tlsAddress)", "no CA given"])
            #expect(cli.exit != .exited(0))
            #expect(cli.standardError.contains("untrusted server certificate"), "\(cli.standardError)")
        }
    }

    /// `CAP_NET_ADMIN`'s bit in `/proc/PID/status`'s capability masks.
    static let netAdmin: UInt64 = 1 << 12

    /// The effective capabilities of process `pid`.
    static func effectiveCapabilities(of pid: pid_t) throws -> UInt64 {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        let line = try #require(status.split(separator: "\n").first { $0.hasPrefix("CapEff:") })
        return try #require(UInt64(line.dropFirst("CapEff:".count).trimmingCharacters(in: .whitespaces), radix: 16))
    }

    // The packaged service runs without CAP_NET_ADMIN, as does any user but root: a socket option that needs it
    // (SO_DEBUG, which `.socketOption(.tcp_nodelay)` sets) made the daemon close every TCP connection it accepted.
    @Test("aiotaskd without CAP_NET_ADMIN serves its TCP and TLS clients")
    func withoutNetworkAdministration() async throws {
        // As root, setpriv takes the capability out of the bounding and inheritable sets before it execs aiotaskd.
        let launcher =
            geteuid() == 0 ? ["setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin", "--"] : []
        let tls = try await Self.start(launcher: launcher)
        try await tls.daemon.stopAfter {
            #expect(try Self.effectiveCapabilities(of: tls.daemon.process.pid) & Self.netAdmin == 0)
            let plain = try await AiotaskClient.connect(to: tls.tcpAddress, connectTimeout: .seconds(10))
            #expect(String(buffer: try await plain.submit(ByteBuffer(string: "over TCP"))) == "over TCP")
            try await plain.close()
            let secure = try await tls.connect(tls.trusting)
            #expect(String(buffer: try await secure.submit(ByteBuffer(string: "over TLS"))) == "over TLS")
            try await secure.close()
        }
    }

    @Test("plaintext frames to a TLS port are closed in the handshake and logged, and the daemon keeps serving")
    func plaintextToTLSPort() async throws {
        let tls = try await Self.start()
        try await tls.daemon.stopAfter {
            let answer = try await withTimeout(.seconds(10)) {
                try await RawConnection.with(tls.tlsAddress) { connection in
                    try await connection.send(Frame.hello(Hello(version: 3, maximumPayloadLength: 1024)))
                    return try await connection.readBytesUntilClosed()
                }
            }
            // At most a TLS alert: never an aiotask frame.
            #expect(answer.first != FrameType.hello.rawValue, "\(answer)")
            let entry = try await tls.waitForLog(containing: "refusing TLS connection", "does not speak TLS")
            #expect(entry.contains("client=127.0.0.1:"), "\(entry)")
            let client = try await tls.connect(tls.trusting)
            #expect(String(buffer: try await client.submit(ByteBuffer(string: "still"))) == "still")
            try await client.close()
        }
    }

    @Test("a connection whose TLS handshake never completes is closed after tls-handshake-timeout, and logged")
    func handshakeTimeout() async throws {
        let tls = try await Self.start(["--tls-handshake-timeout", "0.5"])
        try await tls.daemon.stopAfter {
            let clock = ContinuousClock()
            let start = clock.now
            let answer = try await withTimeout(.seconds(10)) {
                try await RawConnection.with(tls.tlsAddress) { connection in
                    // A TLS record header and nothing after it: the handshake waits for the rest. (On a loaded
                    // machine the timeout may close the connection before this is sent: the same outcome.)
                    try? await connection.send([0x16, 0x03, 0x01, 0x00, 0x80])
                    return try await connection.readBytesUntilClosed()
                }
            }
            #expect(clock.now - start >= .milliseconds(400))
            _ = answer
            let entry = try await tls.waitForLog(containing: "refusing TLS connection", "did not finish within")
            #expect(entry.contains("client=127.0.0.1:"), "\(entry)")
        }
    }

    @Test(
        "SIGHUP serves a new certificate to new connections while an established one keeps working, and a bad new certificate is rejected with the old one kept"
    )
    func rotation() async throws {
        let tls = try await Self.start { pki in try await pki.makeAuthority("next") }
        let credentials = tls.pki.directory + "/credentials"
        try await tls.daemon.stopAfter {
            let established = try await tls.connect(tls.trusting)
            #expect(String(buffer: try await established.submit(ByteBuffer(string: "before"))) == "before")

            // A certificate of another authority, written over the old files.
            let next = try await tls.pki.issue("server-next", ipAddresses: ["127.0.0.1"], by: "next")
            try Self.replace(credentials + "/server.crt", with: next.certificate)
            try Self.replace(credentials + "/server.key", with: next.key)
            try await tls.daemon.reload(count: 1)
            let trustingNext = ClientTLSConfiguration(trustRoots: .file(tls.pki.authority("next")))
            let renewed = try await tls.connect(trustingNext)
            #expect(String(buffer: try await renewed.submit(ByteBuffer(string: "renewed"))) == "renewed")
            try await renewed.close()
            await #expect { _ = try await tls.connect(tls.trusting) } throws: {
                ($0 as? AiotaskClientError)?.code == .untrustedCertificate
            }
            #expect(String(buffer: try await established.submit(ByteBuffer(string: "after"))) == "after")

            // Not a certificate: the reload is rejected, naming the setting and the file, and the last one stays.
            try Self.replace(credentials + "/server.crt", withText: "not a certificate\n")
            tls.daemon.process.signal(SIGHUP)
            let rejected = try await tls.waitForLog(containing: "reload rejected", "tls-certificate")
            #expect(rejected.contains(credentials + "/server.crt"), "\(rejected)")
            let stillNext = try await tls.connect(trustingNext)
            #expect(String(buffer: try await stillNext.submit(ByteBuffer(string: "kept"))) == "kept")
            try await stillNext.close()
            #expect(String(buffer: try await established.submit(ByteBuffer(string: "still"))) == "still")
            try await established.close()
        }
    }

    /// Replaces `path` by a copy of `source` in one step, as a deployment tool would.
    static func replace(_ path: String, with source: String) throws {
        try replace(path, withText: try String(contentsOfFile: source, encoding: .utf8))
    }

    static func replace(_ path: String, withText text: String) throws {
        try text.write(toFile: path + ".new", atomically: false, encoding: .utf8)
        guard rename(path + ".new", path) == 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
    }
}

/// The TLS settings' files read as the daemon reads its settings: each error names the setting and the file.
@Suite("TLS settings")
struct TLSSettingsTests {
    static let handler = ProcessCommand.builtin("echo")

    /// The error of reading `text` as the config file, if any.
    static func error(of text: String, environment credentials: String? = nil) throws -> ConfigurationError? {
        if let credentials {
            setenv("CREDENTIALS_DIRECTORY", credentials, 1)
        } else {
            unsetenv("CREDENTIALS_DIRECTORY")
        }
        defer { unsetenv("CREDENTIALS_DIRECTORY") }
        do {
            _ = try ConfigFile.parse(text, path: "test.conf").configuration(handler: handler)
            return nil
        } catch {
            return error
        }
    }

    @Test("missing, unreadable, non-PEM and mismatched files, and relative paths without credentials, name the setting")
    func badFiles() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let pki = try await TestCertificates.make(in: directory)
        let server = try await pki.issue("server", ipAddresses: ["127.0.0.1"])
        let other = try await pki.issue("other", ipAddresses: ["127.0.0.1"])
        try "garbage\n".write(toFile: directory + "/garbage.pem", atomically: true, encoding: .utf8)
        let listen = "listen = tls://127.0.0.1:1\n"

        let good = "\(listen)tls-certificate = \(server.certificate)\ntls-key = \(server.key)\n"
        #expect(try Self.error(of: good) == nil)

        let missing = try #require(try Self.error(of: "\(listen)tls-certificate = \(directory)/none.crt\n"))
        #expect(missing.setting == "tls-certificate")
        #expect(missing.reason.contains("\(directory)/none.crt"), "\(missing)")
        #expect(missing.reason.contains("no such file"), "\(missing)")

        let notPEM = try #require(
            try Self.error(of: "\(listen)tls-certificate = \(directory)/garbage.pem\ntls-key = \(server.key)\n")
        )
        #expect(notPEM.setting == "tls-certificate")
        #expect(notPEM.reason.contains("garbage.pem"), "\(notPEM)")

        let badKey = try #require(
            try Self.error(of: "\(listen)tls-certificate = \(server.certificate)\ntls-key = \(directory)/garbage.pem\n")
        )
        #expect(badKey.setting == "tls-key")
        #expect(badKey.reason.contains("garbage.pem"), "\(badKey)")

        let mismatch = try #require(
            try Self.error(of: "\(listen)tls-certificate = \(server.certificate)\ntls-key = \(other.key)\n")
        )
        #expect(mismatch.setting == "tls-key")
        #expect(mismatch.reason.contains(other.key) && mismatch.reason.contains(server.certificate), "\(mismatch)")

        let noKey = try #require(try Self.error(of: "\(listen)tls-certificate = \(server.certificate)\n"))
        #expect(noKey.setting == "tls-key")
        let noCertificate = try #require(try Self.error(of: listen))
        #expect(noCertificate.setting == "tls-certificate")
        #expect(noCertificate.reason.contains("tls://127.0.0.1:1"), "\(noCertificate)")

        let relative = try #require(try Self.error(of: "\(listen)tls-certificate = server.crt\n"))
        #expect(relative.setting == "tls-certificate")
        #expect(relative.reason.contains("CREDENTIALS_DIRECTORY"), "\(relative)")
        #expect(
            try Self.error(of: "\(listen)tls-certificate = server.crt\ntls-key = server.key\n", environment: directory)
                == nil
        )

        let version = try #require(try Self.error(of: "\(good)tls-minimum-version = 1.1\n"))
        #expect(version.setting == "tls-minimum-version")
        let metrics = try #require(try Self.error(of: "metrics-listen = tls://127.0.0.1:1\n"))
        #expect(metrics.setting == "metrics-listen")
    }

    @Test("aiotaskd does not start with a missing certificate file, and says which setting and file")
    func daemonRefusesToStart() async throws {
        let process = try SpawnedProcess.spawn(
            Products.aiotaskd,
            ["--listen", "tls://127.0.0.1:1", "--tls-certificate", "/nonexistent/server.crt", "--tls-key", "/x.key"],
            removing: systemdVariables
        )
        #expect(try await process.wait() == .exited(78))
        #expect(
            process.standardError.contains("tls-certificate: cannot read /nonexistent/server.crt"),
            "\(process.standardError)"
        )
    }
}
