import AiotaskProtocol
import Logging
import NIOSSL

extension DaemonSettings {
    /// Every setting of the daemon, in the order of `--help`, the README table and `aiotaskd(8)`.
    ///
    /// To add a setting: its field in `ServerConfiguration` (the library's API), one declaration here, and the
    /// one-line `@Option(setting:)` that ArgumentParser needs in ``DaemonOptions``; then its line in the README
    /// table, `packaging/aiotaskd.conf` and `packaging/man/aiotaskd.8`. `ConfigDeclarationTests` fail until all of
    /// them agree with the declaration. The default is the one of `ServerConfiguration` (a test sets each
    /// declared default explicitly and finds nothing changed).
    static let declarations: [SettingDeclaration] = [
        .addresses(
            "listen",
            default: "unix:\(ServerAddress.defaultUnixPath)",
            example: "tcp://127.0.0.1:4242",
            help:
                "Address to listen on: tcp://HOST:PORT, tcp://[IPv6]:PORT, tls://HOST:PORT (TLS, see tls-certificate) "
                + "or unix:/PATH. Repeatable."
        ) { addresses, configuration in configuration.listenAddresses = addresses },
        .text(
            "handler",
            valueName: "spec",
            default: "echo",
            example: "sha256",
            help: "The task handler: a built-in name, or exec:/path/to/program [args…] for an external program."
        ),
        .count(
            "workers",
            1...4096,
            default: "the number of CPUs",
            example: "3",
            help: "Number of pool processes."
        ) { $1.workers = $0 },
        .count(
            "queue-capacity",
            0...Int.max,
            default: "65536",
            example: "7",
            help: "Most tasks waiting for a process; more are rejected at once."
        ) { $1.queueCapacity = $0 },
        .count(
            "max-queued-bytes",
            0...Int.max,
            valueName: "bytes",
            default: "1073741824",
            example: "4096",
            help: "Most bytes of task data waiting; more are rejected at once (1073741824 is 1 GiB)."
        ) { $1.maximumQueuedBytes = $0 },
        .count(
            "max-tasks-per-connection",
            1...Int.max,
            default: "16384",
            example: "9",
            help: "Most tasks one connection may have queued or running; more are rejected."
        ) { $1.maximumTasksPerConnection = $0 },
        .count(
            "max-connections",
            1...Int.max,
            default: "16384",
            example: "11",
            help: "Most client connections open at once; more are closed as they arrive."
        ) { $1.maximumConnections = $0 },
        .accounts(
            "allow-users",
            .users,
            default: "none",
            example: "root",
            help: "Users, by name or uid, who may connect over a Unix socket; repeatable, or several separated by "
                + "commas. While neither allow-users nor allow-groups is set, everyone the socket's mode lets in may; "
                + "root only if listed. TCP is not checked."
        ) { $1.peerPolicy.users = $0 },
        .accounts(
            "allow-groups",
            .groups,
            default: "none",
            example: "root",
            help: "Groups, by name or gid, whose members (primary or supplementary group) may connect over a Unix "
                + "socket; repeatable, or several separated by commas. See allow-users."
        ) { $1.peerPolicy.groups = $0 },
        .file(
            "tls-certificate",
            default: "none",
            example: "server.crt",
            help: "PEM file of the certificate of the tls:// listeners, then its intermediates. A relative path is "
                + "taken in $CREDENTIALS_DIRECTORY (systemd's LoadCredential=). Read again on reload."
        ) { path, configuration throws(ConfigurationError) in
            configuration.tls.certificateChain = try CredentialFile.certificates(at: path, setting: "tls-certificate")
        },
        .file(
            "tls-key",
            default: "none",
            example: "server.key",
            help: "PEM file of the private key of tls-certificate (unencrypted; keep it readable by aiotaskd only). "
                + "A relative path is taken in $CREDENTIALS_DIRECTORY. Read again on reload. Pool processes cannot "
                + "read it (hide-credentials)."
        ) { path, configuration throws(ConfigurationError) in
            configuration.tls.privateKey = try CredentialFile.privateKey(at: path, setting: "tls-key")
            // Hidden from the handlers wherever it is, not only in $CREDENTIALS_DIRECTORY.
            configuration.hiddenPaths.secretPaths.append(try CredentialFile.resolve(path, setting: "tls-key"))
        },
        .text(
            "tls-minimum-version",
            valueName: "version",
            default: "1.2",
            example: "1.3",
            help: "The oldest TLS version a client may speak: 1.2 or 1.3."
        ) { text, configuration throws(ConfigurationError) in
            switch text {
            case "1.2": configuration.tls.minimumVersion = .tlsv12
            case "1.3": configuration.tls.minimumVersion = .tlsv13
            default: throw ConfigurationError(setting: "tls-minimum-version", reason: "'\(text)' is not 1.2 or 1.3")
            }
        },
        .file(
            "tls-client-ca",
            default: "none",
            example: "clients-ca.crt",
            help: "PEM file of the certificate authorities of client certificates: when set, every tls:// client "
                + "must show a certificate one of them issued (mutual TLS), or is refused in the handshake. A "
                + "relative path is taken in $CREDENTIALS_DIRECTORY. Read again on reload."
        ) { path, configuration throws(ConfigurationError) in
            configuration.tls.clientCertificateAuthorities = try CredentialFile.certificates(
                at: path,
                setting: "tls-client-ca"
            )
        },
        .text(
            "tls-allowed-clients",
            valueName: "identities",
            default: "any",
            example: "client.example.com",
            help: "With tls-client-ca: the client identities let in, separated by commas, each matched against the "
                + "certificate's DNS, email and URI subject alternative names and its subject's common name; any "
                + "lets in every certificate tls-client-ca accepts."
        ) { text, configuration throws(ConfigurationError) in
            let identities = text.split(separator: ",").map { part in
                String(part.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
            }.filter { !$0.isEmpty }
            guard !identities.isEmpty else {
                throw ConfigurationError(setting: "tls-allowed-clients", reason: "no identity in '\(text)'")
            }
            configuration.tls.allowedClients = identities == ["any"] ? [] : identities
        },
        .seconds(
            "tls-handshake-timeout",
            default: "10",
            example: "3",
            help: "Close a tls:// connection whose TLS handshake has not finished after this many seconds; 0 for "
                + "never."
        ) { $1.tls.handshakeTimeout = $0 == .zero ? nil : $0 },
        .seconds(
            "idle-timeout",
            default: "300",
            example: "1.5",
            help: "Close a connection with no task in flight after this many seconds without a complete frame; "
                + "0 for never."
        ) { $1.idleTimeout = $0 == .zero ? nil : $0 },
        .seconds(
            "write-timeout",
            default: "60",
            example: "2",
            help: "Disconnect a client that neither reads its answers nor sends a request this many seconds, "
                + "cancelling its tasks; 0 for never."
        ) { $1.writeTimeout = $0 == .zero ? nil : $0 },
        .count(
            "prefetch",
            0...64,
            default: "automatic",
            example: "4",
            help: "Tasks sent ahead to a busy process, behind the one it runs, for throughput (automatic: up to "
                + "32 for Swift handlers, whose tasks sent ahead move to an idle process; 0 for handler programs)."
        ) { $1.prefetch = $0 },
        .count(
            "max-payload",
            1...Int(UInt32.max) - 32,
            unit: " bytes",
            valueName: "bytes",
            default: "67108864",
            example: "1024",
            help: "Largest task or result, in bytes (67108864 is 64 MiB)."
        ) { $1.maximumPayloadLength = $0 },
        .seconds(
            "task-timeout",
            default: "0",
            example: "3",
            help: "Default task timeout in seconds; 0 for none. Clients may set their own."
        ) { $1.defaultTaskTimeout = $0 == .zero ? nil : $0 },
        .seconds(
            "slow-task-threshold",
            default: "0",
            example: "2.5",
            help: "Log one entry for each task still running after this many seconds, while it runs; 0 for none."
        ) { $1.slowTaskThreshold = $0 == .zero ? nil : $0 },
        .seconds(
            "kill-grace",
            default: "2",
            example: "0.5",
            help: "Seconds between SIGTERM and SIGKILL when a process is stopped."
        ) { $1.killGracePeriod = $0 },
        .count(
            "max-tasks-per-worker",
            0...Int.max,
            default: "0",
            example: "100",
            help: "Replace a process after this many tasks; 0 for never."
        ) { $1.maximumTasksPerProcess = $0 == 0 ? nil : $0 },
        .count(
            "max-tasks-jitter",
            0...Int.max,
            default: "0",
            example: "10",
            help: "Add up to this many tasks at random to --max-tasks-per-worker."
        ) { $1.maximumTasksJitter = $0 },
        .count(
            "max-worker-rss",
            0...largestWorkerRSS,
            unit: " MiB",
            valueName: "MiB",
            default: "0",
            example: "256",
            help: "Largest resident memory of a pool process, in MiB; 0 for no limit. Checked after each task "
                + "(the process is replaced) and while a task runs, counting the processes the handler started "
                + "(the process group is killed, the task fails)."
        ) { $1.maximumProcessRSS = $0 == 0 ? nil : $0 * ProcessMemory.mebibyte },
        .count(
            "worker-shared-memory",
            0...1024,
            unit: " MiB",
            valueName: "MiB",
            default: "4",
            example: "8",
            help: "Memory each Swift-handler pool process shares with aiotaskd, in MiB, through which tasks and "
                + "results of 64 KiB or more travel instead of its pipes; 0 for none."
        ) { $1.sharedPayloadBytes = $0 * ProcessMemory.mebibyte },
        .count(
            "handler-task-context",
            0...1,
            valueName: "0|1",
            default: "0",
            example: "1",
            help: "1: a handler program (exec:) gets each task's context (id, timeout, W3C trace context) before the "
                + "task, as docs/handler-protocol.md says; 0: only the task."
        ) { $1.handlerProgramTaskContext = $0 == 1 },
        .count(
            "hide-credentials",
            0...1,
            valueName: "0|1",
            default: "1",
            example: "0",
            help: "1: pool processes (handlers of any language) cannot read $CREDENTIALS_DIRECTORY nor the daemon's "
                + "other secrets, by Landlock (a warning says so where Landlock is unavailable); 0: they read what "
                + "aiotaskd reads."
        ) { $1.hiddenPaths.isEnabled = $0 == 1 },
        .seconds(
            "drain-timeout",
            default: "30",
            example: "5",
            help: "On shutdown, seconds that tasks in flight may still run."
        ) { $1.drainTimeout = $0 },
        .addresses(
            "agent-listen",
            default: "none",
            example: "tcp://127.0.0.1:4243",
            help: "TCP address where HAProxy's agent-check is answered (up ready N%, up drain, down #reason); "
                + "tcp://HOST:PORT or tcp://[IPv6]:PORT. Repeatable."
        ) { addresses, configuration throws(ConfigurationError) in
            for address in addresses {
                guard case .tcp = address else {
                    throw ConfigurationError(
                        setting: "agent-listen",
                        reason: "\(address) is not a TCP address: HAProxy's agent check speaks TCP"
                    )
                }
            }
            configuration.agentListenAddresses = addresses
        },
        .count(
            "agent-high-water",
            0...Int.max,
            default: "0",
            example: "1000",
            help: "The agent check says drain while more than this many tasks wait; 0 for never."
        ) { $1.agentHighWaterMark = $0 == 0 ? nil : $0 },
        .logLevel(
            "log-level",
            default: "info",
            example: "debug",
            help: "trace, debug, info, notice, warning, error or critical."
        ),
        .addresses(
            "metrics-listen",
            default: "none",
            example: "tcp://127.0.0.1:9464",
            help: "Address of the metrics listener, serving GET /metrics to Prometheus: tcp://HOST:PORT or "
                + "unix:/PATH. Repeatable; none by default. A socket systemd passes named metrics is served too."
        ) { addresses, configuration throws(ConfigurationError) in
            if let address = addresses.first(where: { if case .tls = $0 { true } else { false } }) {
                throw ConfigurationError(
                    setting: "metrics-listen",
                    reason: "\(address): the metrics listener serves plain HTTP (tcp:// or unix:)"
                )
            }
            configuration.metricsListenAddresses = addresses
        },
    ]

    /// The largest memory limit of a pool process, in MiB (1 PiB).
    static let largestWorkerRSS = 1 << 30
}
