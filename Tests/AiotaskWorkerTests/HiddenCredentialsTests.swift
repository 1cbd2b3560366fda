import AiotaskChildProcess
import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import CAiotaskShims
import Foundation
import Logging
import Testing

@testable import AiotaskServer

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Whether this kernel lets an unprivileged process use Landlock (the daemon tests below need it).
let landlockIsAvailable = aiotask_landlock_abi() > 0

/// `hide-credentials`: pool processes — handler programs and whatever they start, and Swift handlers — cannot
/// read `$CREDENTIALS_DIRECTORY`, and read everything else as before (docs/security.md).
@Suite("Hidden credentials")
struct HiddenCredentialsTests {
    /// A credentials directory holding `key` (`secret`), a sibling directory holding `note` (`public`) and an empty
    /// one, all in a fresh temporary directory (made before the daemon starts: an entry made later directly in it,
    /// an ancestor of a hidden path, would be unreadable to the pool).
    struct Files {
        let base: String
        var credentials: String { base + "/credentials" }
        var key: String { credentials + "/key" }
        var note: String { base + "/public/note" }
        /// An empty directory beside them.
        var other: String { base + "/other" }
        /// The handler program of ``HiddenCredentialsTests/commandHandler()``.
        let script: HandlerScript
        /// The `handler` setting that runs ``script``.
        var program: String { "exec:\(HandlerScript.python) \(script.path)" }

        init() throws {
            base = try makeTemporaryDirectory()
            try FileManager.default.createDirectory(atPath: base + "/credentials", withIntermediateDirectories: false)
            try FileManager.default.createDirectory(atPath: base + "/public", withIntermediateDirectories: false)
            try FileManager.default.createDirectory(atPath: base + "/other", withIntermediateDirectories: false)
            try "secret".write(toFile: base + "/credentials/key", atomically: false, encoding: .utf8)
            try "public".write(toFile: base + "/public/note", atomically: false, encoding: .utf8)
            script = try HiddenCredentialsTests.commandHandler()
        }

        func remove() {
            script.remove()
            try? FileManager.default.removeItem(atPath: base)
        }

        /// Starts aiotaskd with `arguments` or `config` (see ``RunningDaemon/start(arguments:config:environment:in:)``)
        /// and the credentials directory as `CREDENTIALS_DIRECTORY`, runs `body` with a client of it within 30
        /// seconds, then stops it.
        func withDaemon(
            arguments: [String] = [],
            config: String? = nil,
            _ body: @escaping @Sendable (AiotaskClient, RunningDaemon) async throws -> Void
        ) async throws {
            let daemon = try await RunningDaemon.start(
                arguments: arguments,
                config: config,
                environment: ["CREDENTIALS_DIRECTORY": credentials]
            )
            try await daemon.stopAfter {
                try await withTimeout(.seconds(30)) {
                    let client = try await AiotaskClient.connect(to: .unix(path: daemon.socket))
                    try await body(client, daemon)
                    try await client.close()
                }
            }
        }
    }

    /// A handler program that runs each task as a command (`cat PATH`, `ln FROM TO`: words separated by spaces) and
    /// answers with what it prints, or with its complaint as the error: files are read by a process the handler
    /// starts, as a shell-out would.
    static func commandHandler() throws -> HandlerScript {
        try HandlerScript(
            """
            import subprocess

            for task in tasks():
                run = subprocess.run(task.decode().split(" "), capture_output=True)
                if run.returncode == 0:
                    reply(0, run.stdout)
                else:
                    reply(1, run.stderr.strip() or b"cat failed")
            """
        )
    }

    @Test(
        "a handler program cannot read a file in CREDENTIALS_DIRECTORY, and reads and links one in the directories beside it",
        .enabled(if: landlockIsAvailable, "the kernel offers no Landlock")
    )
    func programCannotReadCredentials() async throws {
        let files = try Files()
        defer { files.remove() }
        try await files.withDaemon(
            arguments: ["--handler", files.program, "--workers", "1"]
        ) { client, daemon in
            let failure = try await #require(throws: TaskFailure.self) {
                try await client.submit("cat \(files.key)")
            }
            #expect(failure.reason == .handlerError)
            #expect(failure.message.contains("Permission denied"), "\(failure.message)")
            #expect(try await client.submit("cat \(files.note)") == Array("public".utf8))
            // Linking a file into another directory still works: Landlock refuses it unless REFER is granted. (`ln`,
            // not `mv`, which would fall back to copying.)
            _ = try await client.submit("ln \(files.note) \(files.other)/note")
            #expect(try await client.submit("cat \(files.other)/note") == Array("public".utf8))
            #expect(daemon.process.standardError.contains("pool processes cannot read \(files.credentials)"))
        }
    }

    @Test(
        "a tls-key outside CREDENTIALS_DIRECTORY is hidden from the handler too, and the certificate beside it is not",
        .enabled(if: landlockIsAvailable, "the kernel offers no Landlock")
    )
    func tlsKeyIsHidden() async throws {
        let files = try Files()
        defer { files.remove() }
        let pki = try await TestCertificates.make(in: files.base + "/public")
        let server = try await pki.issue("server", ipAddresses: ["127.0.0.1"])
        let arguments = [
            "--handler", "chaos", "--workers", "1", "--listen", "tls://127.0.0.1:\(try SystemdTestKit.freePort())",
            "--tls-certificate", server.certificate, "--tls-key", server.key,
        ]
        try await files.withDaemon(arguments: arguments) { client, _ in
            let failure = try await #require(throws: TaskFailure.self) {
                try await client.submit("read \(server.key)")
            }
            #expect(failure.message == "cannot read \(server.key): Permission denied")
            #expect(try await client.submit("read \(server.certificate)").starts(with: Array("-----BEGIN".utf8)))
        }
    }

    @Test(
        "a Swift handler cannot read a file in CREDENTIALS_DIRECTORY, and reads one in the directory beside it",
        .enabled(if: landlockIsAvailable, "the kernel offers no Landlock")
    )
    func swiftHandlerCannotReadCredentials() async throws {
        let files = try Files()
        defer { files.remove() }
        try await files.withDaemon(arguments: ["--handler", "chaos", "--workers", "1"]) { client, _ in
            let failure = try await #require(throws: TaskFailure.self) {
                try await client.submit("read \(files.key)")
            }
            #expect(failure.reason == .handlerError)
            #expect(failure.message == "cannot read \(files.key): Permission denied")
            // Nor can it open the directory itself to list it.
            let listing = try await #require(throws: TaskFailure.self) {
                try await client.submit("read \(files.credentials)")
            }
            #expect(listing.message == "cannot read \(files.credentials): Permission denied")
            #expect(try await client.submit("read \(files.note)") == Array("public".utf8))
        }
    }

    @Test(
        "with hide-credentials = 0 the handler reads CREDENTIALS_DIRECTORY; a reload to 1 hides it from the new processes",
        .enabled(if: landlockIsAvailable, "the kernel offers no Landlock")
    )
    func settingTurnsHidingOff() async throws {
        let files = try Files()
        defer { files.remove() }
        @Sendable func config(hide: Int) -> String {
            """
            handler = \(files.program)
            workers = 1
            listen = unix:{SOCKET}
            hide-credentials = \(hide)
            """
        }
        try await files.withDaemon(config: config(hide: 0)) { client, daemon in
            #expect(try await client.submit("cat \(files.key)") == Array("secret".utf8))
            try daemon.writeConfig(config(hide: 1))
            try await daemon.reload(count: 1)
            let failure = try await #require(throws: TaskFailure.self) {
                try await client.submit("cat \(files.key)")
            }
            #expect(failure.message.contains("Permission denied"), "\(failure.message)")
        }
    }

    @Test(
        "without Landlock the pool runs unconfined, and one warning names what stays readable and why",
        arguments: [
            (EPERM, "a system-call filter refuses landlock_create_ruleset"),
            (ENOSYS, "the kernel has no Landlock"),
            (EOPNOTSUPP, "Landlock is not enabled"),
        ]
    )
    func unavailable(code: Int32, reason: String) {
        let capture = LogCapture()
        let ruleset = HandlerConfinement.make(
            HiddenPaths(),
            environment: ["CREDENTIALS_DIRECTORY": "/run/credentials/aiotask.service"],
            logger: capture.logger,
            makeRuleset: { _ in .failure(LandlockUnavailable(errno: code)) }
        )
        #expect(ruleset == nil)
        let warnings = capture.entries.filter { $0.level == .warning }
        #expect(warnings.count == 1, "\(capture.entries.map(\.message))")
        let message = warnings.first?.message ?? ""
        #expect(
            message.hasPrefix(
                "pool processes can read /run/credentials/aiotask.service: Landlock unavailable: \(reason)"
            ),
            "\(message)"
        )
        // Nothing to hide: no ruleset, and nothing to warn about.
        let quiet = LogCapture()
        #expect(HandlerConfinement.make(HiddenPaths(), environment: [:], logger: quiet.logger) == nil)
        #expect(quiet.entries.isEmpty)
    }

    // MARK: Which paths a ruleset allows (no system call)

    /// A file tree for ``HiddenPathsPlan``: each directory's entries; any other path is no directory.
    static let tree: [String: [String]] = [
        "/": ["bin", "etc", "run", "usr"],
        "/etc": ["aiotask", "passwd"],
        "/etc/aiotask": ["aiotaskd.conf", "key.pem", "tls"],
        "/etc/aiotask/tls": ["ca.pem"],
        "/run": ["credentials", "lock", "user"],
        "/run/credentials": ["aiotask.service", "other.service"],
        "/run/credentials/aiotask.service": ["tls-key"],
    ]

    static func allowed(hiding hidden: [String]) -> [String] {
        HiddenPathsPlan.allowedPaths(hiding: hidden, entries: { tree[$0] })
    }

    @Test("hiding a path allows every entry of each directory on the way to it, except the way itself")
    func onePath() {
        #expect(
            Self.allowed(hiding: ["/run/credentials/aiotask.service"]) == [
                "/bin", "/etc", "/run/credentials/other.service", "/run/lock", "/run/user", "/usr",
            ]
        )
    }

    @Test("several hidden paths share their ancestors, and a file can be hidden beside readable ones")
    func severalPaths() {
        #expect(
            Self.allowed(hiding: ["/run/credentials/aiotask.service", "/etc/aiotask/key.pem"]) == [
                "/bin", "/etc/aiotask/aiotaskd.conf", "/etc/aiotask/tls", "/etc/passwd",
                "/run/credentials/other.service", "/run/lock", "/run/user", "/usr",
            ]
        )
    }

    @Test("a hidden path beneath another adds nothing, and . and .. are taken as written")
    func nestedAndDotted() {
        let plain = Self.allowed(hiding: ["/run/credentials"])
        #expect(plain == ["/bin", "/etc", "/run/lock", "/run/user", "/usr"])
        #expect(Self.allowed(hiding: ["/run/credentials/aiotask.service/tls-key", "/run/credentials"]) == plain)
        #expect(Self.allowed(hiding: ["/run/./lock/../credentials/"]) == plain)
    }

    @Test(
        "a missing hidden path leaves its directory without a rule, so what is made there later is hidden; a relative path or / hides nothing"
    )
    func missingAndRefused() {
        // Every entry of /run/credentials keeps its rule; /run/credentials itself gets none.
        #expect(
            Self.allowed(hiding: ["/run/credentials/gone.service/key"]) == [
                "/bin", "/etc", "/run/credentials/aiotask.service", "/run/credentials/other.service", "/run/lock",
                "/run/user", "/usr",
            ]
        )
        #expect(Self.allowed(hiding: ["relative/key", "/"]).isEmpty)
        #expect(Self.allowed(hiding: []).isEmpty)
    }

    @Test("the hidden set is CREDENTIALS_DIRECTORY and the secrets, relative ones within it; none when turned off")
    func hiddenSet() {
        let environment = ["CREDENTIALS_DIRECTORY": "/run/credentials/aiotask.service"]
        var hidden = HiddenPaths(secretPaths: ["tls-key", "/etc/aiotask/key.pem"])
        #expect(
            hidden.paths(environment: environment) == [
                "/run/credentials/aiotask.service", "/run/credentials/aiotask.service/tls-key",
                "/etc/aiotask/key.pem",
            ]
        )
        #expect(hidden.paths(environment: [:]) == ["/etc/aiotask/key.pem"])
        hidden.isEnabled = false
        #expect(hidden.paths(environment: environment).isEmpty)
    }
}
