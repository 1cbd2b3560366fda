import AiotaskProtocol
import Logging

/// The daemon's settings as given by a config file or the command line; unset values keep their defaults.
///
/// The config file uses the long option names as keys, one `key = value` per line, `#` for comments;
/// `listen` may be repeated. The command line overrides the file (its `--listen`s replace the file's).
///
/// Each setting is declared once, in `declarations`: its name, its value's kind and range, its default, its
/// help and whether a reload applies it. That declaration drives the config file (``ConfigFile``), the
/// command line (``DaemonOptions``), merging (``overridden(by:)``), checking and converting
/// (``configuration(handler:)``) and `--help`; tests hold the README table, `packaging/aiotaskd.conf` and
/// `aiotaskd(8)` to it.
public struct DaemonSettings: Sendable, Equatable {
    public var listen: [String] = []
    public var handler: String?
    public var workers: Int?
    public var queueCapacity: Int?
    public var maxQueuedBytes: Int?
    public var maxTasksPerConnection: Int?
    public var maxConnections: Int?
    public var idleTimeout: Double?
    public var writeTimeout: Double?
    public var prefetch: Int?
    public var maxPayload: Int?
    public var taskTimeout: Double?
    public var killGrace: Double?
    public var maxTasksPerWorker: Int?
    public var maxTasksJitter: Int?
    /// The resident-set limit of a pool process, in MiB; 0 for none.
    public var maxWorkerRSS: Int?
    /// The memory each Swift-handler pool process shares with aiotaskd for large payloads, in MiB; 0 for none.
    public var workerSharedMemory: Int?
    public var drainTimeout: Double?
    public var logLevel: Logger.Level?

    public init() {}

    /// Every setting of the daemon, in the order of `--help`, the README table and `aiotaskd(8)`.
    ///
    /// To add a setting: a stored property above, one declaration here, its `@Option` in ``DaemonOptions``,
    /// its example in `ConfigTests.examples`, and its line in the README table, `packaging/aiotaskd.conf` and
    /// `packaging/man/aiotaskd.8` (`ConfigTests` fail until all of them agree). The default is the one of
    /// ``WorkerConfiguration`` (a test sets each declared default explicitly and finds nothing changed).
    static var declarations: [SettingDeclaration] {
        [
            .addresses(
                "listen",
                \.listen,
                default: "unix:\(ServerAddress.defaultUnixPath)",
                help: "Address to listen on: tcp://HOST:PORT, tcp://[IPv6]:PORT or unix:/PATH. Repeatable."
            ),
            .text(
                "handler",
                \.handler,
                valueName: "spec",
                default: "echo",
                help: "The task handler: a built-in name, or exec:/path/to/program [args…] for an external program."
            ),
            .count(
                "workers",
                \.workers,
                1...4096,
                default: "the number of CPUs",
                help: "Number of pool processes."
            ) { $1.workers = $0 },
            .count(
                "queue-capacity",
                \.queueCapacity,
                0...Int.max,
                default: "65536",
                help: "Most tasks waiting for a process; more are rejected at once."
            ) { $1.queueCapacity = $0 },
            .count(
                "max-queued-bytes",
                \.maxQueuedBytes,
                0...Int.max,
                valueName: "bytes",
                default: "1073741824",
                help: "Most bytes of task data waiting; more are rejected at once (1073741824 is 1 GiB)."
            ) { $1.maximumQueuedBytes = $0 },
            .count(
                "max-tasks-per-connection",
                \.maxTasksPerConnection,
                1...Int.max,
                default: "16384",
                help: "Most tasks one connection may have queued or running; more are rejected."
            ) { $1.maximumTasksPerConnection = $0 },
            .count(
                "max-connections",
                \.maxConnections,
                1...Int.max,
                default: "16384",
                help: "Most client connections open at once; more are closed as they arrive."
            ) { $1.maximumConnections = $0 },
            .seconds(
                "idle-timeout",
                \.idleTimeout,
                default: "300",
                help: "Close a connection with no task in flight after this many seconds without a complete frame; "
                    + "0 for never."
            ) { $1.idleTimeout = $0 == .zero ? nil : $0 },
            .seconds(
                "write-timeout",
                \.writeTimeout,
                default: "60",
                help: "Disconnect a client that neither reads its answers nor sends a request this many seconds, "
                    + "cancelling its tasks; 0 for never."
            ) { $1.writeTimeout = $0 == .zero ? nil : $0 },
            .count(
                "prefetch",
                \.prefetch,
                0...64,
                default: "automatic",
                help: "Tasks sent ahead to a busy process, behind the one it runs, for throughput (automatic: up to "
                    + "32 for Swift handlers, whose tasks sent ahead move to an idle process; 0 for handler programs)."
            ) { $1.prefetch = $0 },
            .count(
                "max-payload",
                \.maxPayload,
                1...Int(UInt32.max) - 32,
                unit: " bytes",
                valueName: "bytes",
                default: "67108864",
                help: "Largest task or result, in bytes (67108864 is 64 MiB)."
            ) { $1.maximumPayloadLength = $0 },
            .seconds(
                "task-timeout",
                \.taskTimeout,
                default: "0",
                help: "Default task timeout in seconds; 0 for none. Clients may set their own."
            ) { $1.defaultTaskTimeout = $0 == .zero ? nil : $0 },
            .seconds(
                "kill-grace",
                \.killGrace,
                default: "2",
                help: "Seconds between SIGTERM and SIGKILL when a process is stopped."
            ) { $1.killGracePeriod = $0 },
            .count(
                "max-tasks-per-worker",
                \.maxTasksPerWorker,
                0...Int.max,
                default: "0",
                help: "Replace a process after this many tasks; 0 for never."
            ) { $1.maximumTasksPerProcess = $0 == 0 ? nil : $0 },
            .count(
                "max-tasks-jitter",
                \.maxTasksJitter,
                0...Int.max,
                default: "0",
                help: "Add up to this many tasks at random to --max-tasks-per-worker."
            ) { $1.maximumTasksJitter = $0 },
            .count(
                "max-worker-rss",
                \.maxWorkerRSS,
                0...largestWorkerRSS,
                unit: " MiB",
                valueName: "MiB",
                default: "0",
                help: "Largest resident memory of a pool process, in MiB; 0 for no limit. Checked after each task "
                    + "(the process is replaced) and while a task runs, counting the processes the handler started "
                    + "(the process group is killed, the task fails)."
            ) { $1.maximumProcessRSS = $0 == 0 ? nil : $0 * ProcessMemory.mebibyte },
            .count(
                "worker-shared-memory",
                \.workerSharedMemory,
                0...1024,
                unit: " MiB",
                valueName: "MiB",
                default: "4",
                help: "Memory each Swift-handler pool process shares with aiotaskd, in MiB, through which tasks and "
                    + "results of 64 KiB or more travel instead of its pipes; 0 for none."
            ) { $1.sharedPayloadBytes = $0 * ProcessMemory.mebibyte },
            .seconds(
                "drain-timeout",
                \.drainTimeout,
                default: "30",
                help: "On shutdown, seconds that tasks in flight may still run."
            ) { $1.drainTimeout = $0 },
            .logLevel(
                "log-level",
                \.logLevel,
                default: "info",
                help: "trace, debug, info, notice, warning, error or critical."
            ),
        ]
    }

    /// The declaration of the setting named `name` (as in the config file), if there is one.
    static func declaration(named name: String) -> SettingDeclaration? {
        declarations.first { $0.name == name }
    }

    /// These settings with every value set in `other` taking precedence.
    public func overridden(by other: DaemonSettings) -> DaemonSettings {
        var merged = self
        for declaration in Self.declarations { declaration.override(&merged, other) }
        return merged
    }

    /// A worker configuration running `handler`, with every value checked.
    public func configuration(handler: ProcessCommand) throws(ConfigurationError) -> WorkerConfiguration {
        var configuration = WorkerConfiguration(handler: handler)
        for declaration in Self.declarations { try declaration.apply(self, &configuration) }
        return configuration
    }

    /// The names of the settings that `next` gives another value than these, but that a reload cannot apply
    /// (``SettingDeclaration/reloadable``): the listening sockets stay open, and logging is set up once.
    func changesNeedingRestart(to next: DaemonSettings) -> [String] {
        Self.declarations.filter { declaration in
            guard !declaration.reloadable else { return false }
            // Each side with this one setting alone, so that they compare on it only.
            var before = DaemonSettings()
            var after = DaemonSettings()
            declaration.override(&before, self)
            declaration.override(&after, next)
            return before != after
        }
        .map(\.name)
    }

    /// The largest memory limit of a pool process, in MiB (1 PiB).
    static let largestWorkerRSS = 1 << 30
}

/// One setting of the daemon, declared once: what the config file, the command line, merging, checking and
/// `--help` need to know about it.
struct SettingDeclaration {
    /// The config file's key and the long option without its dashes, such as `max-payload`.
    let name: String
    /// The value's name in `--help`, such as `seconds`.
    let valueName: String
    /// What the setting does, for `--help`; ``helpText`` adds the default.
    let help: String
    /// The default as the docs show it: a value (`65536`, `info`) or a phrase (`the number of CPUs`).
    let defaultValue: String
    /// Whether SIGHUP applies a change; otherwise only a restart does.
    let reloadable: Bool
    /// Reads the value of one config file line into the settings (`listen` adds to them).
    let read: (_ value: String, _ settings: inout DaemonSettings) throws(ConfigurationError) -> Void
    /// Sets the value of `other` in `settings`, if `other` has one.
    let override: (_ settings: inout DaemonSettings, _ other: DaemonSettings) -> Void
    /// Checks the value, if set, and puts it into the configuration.
    let apply: (DaemonSettings, inout WorkerConfiguration) throws(ConfigurationError) -> Void

    /// The help of the command line's option: ``help`` and the default.
    var helpText: String { "\(help) (default: \(defaultValue))" }

    /// A whole number within `range`, put into the configuration by `configure`.
    static func count(
        _ name: String,
        _ field: WritableKeyPath<DaemonSettings, Int?>,
        _ range: ClosedRange<Int>,
        unit: String = "",
        valueName: String = "n",
        default defaultValue: String,
        reloadable: Bool = true,
        help: String,
        configure: @escaping (Int, inout WorkerConfiguration) -> Void
    ) -> Self {
        SettingDeclaration(
            name: name,
            valueName: valueName,
            help: help,
            defaultValue: defaultValue,
            reloadable: reloadable,
            read: { value, settings throws(ConfigurationError) in
                guard let number = Int(value) else {
                    throw ConfigurationError(setting: name, reason: "'\(value)' is not a whole number")
                }
                settings[keyPath: field] = number
            },
            override: overrideOptional(field),
            apply: { settings, configuration throws(ConfigurationError) in
                guard let value = settings[keyPath: field] else { return }
                guard range.contains(value) else {
                    let reason: String =
                        switch (range.lowerBound, range.upperBound) {
                        case (0, .max): "must not be negative"
                        case (let lower, .max): "must be at least \(lower)"
                        case (let lower, let upper): "must be from \(lower) to \(upper)\(unit), not \(value)"
                        }
                    throw ConfigurationError(setting: name, reason: reason)
                }
                configure(value, &configuration)
            }
        )
    }

    /// A number of seconds from 0 to 1e9, fractions allowed, put into the configuration by `configure`.
    static func seconds(
        _ name: String,
        _ field: WritableKeyPath<DaemonSettings, Double?>,
        default defaultValue: String,
        reloadable: Bool = true,
        help: String,
        configure: @escaping (Duration, inout WorkerConfiguration) -> Void
    ) -> Self {
        SettingDeclaration(
            name: name,
            valueName: "seconds",
            help: help,
            defaultValue: defaultValue,
            reloadable: reloadable,
            read: { value, settings throws(ConfigurationError) in
                guard let number = Double(value), number.isFinite else {
                    throw ConfigurationError(setting: name, reason: "'\(value)' is not a number of seconds")
                }
                settings[keyPath: field] = number
            },
            override: overrideOptional(field),
            apply: { settings, configuration throws(ConfigurationError) in
                guard let seconds = settings[keyPath: field] else { return }
                guard seconds.isFinite, seconds >= 0, seconds <= 1e9 else {
                    throw ConfigurationError(
                        setting: name,
                        reason: "must be a number of seconds from 0 to 1e9, not \(seconds)"
                    )
                }
                configure(.nanoseconds(Int64(seconds * 1e9)), &configuration)
            }
        )
    }

    /// Free text, used by the daemon itself rather than put into the configuration (the handler's spec).
    static func text(
        _ name: String,
        _ field: WritableKeyPath<DaemonSettings, String?>,
        valueName: String,
        default defaultValue: String,
        reloadable: Bool = true,
        help: String
    ) -> Self {
        SettingDeclaration(
            name: name,
            valueName: valueName,
            help: help,
            defaultValue: defaultValue,
            reloadable: reloadable,
            read: { value, settings in settings[keyPath: field] = value },
            override: overrideOptional(field),
            apply: { _, _ in }
        )
    }

    /// Addresses to listen on, repeatable; a list given on the command line replaces the file's. Listening
    /// sockets stay open across reloads, so a change needs a restart.
    static func addresses(
        _ name: String,
        _ field: WritableKeyPath<DaemonSettings, [String]>,
        default defaultValue: String,
        help: String
    ) -> Self {
        SettingDeclaration(
            name: name,
            valueName: "address",
            help: help,
            defaultValue: defaultValue,
            reloadable: false,
            read: { value, settings throws(ConfigurationError) in
                do throws(AddressError) {
                    _ = try ServerAddress(parsing: value)
                } catch {
                    throw ConfigurationError(setting: name, reason: error.description)
                }
                settings[keyPath: field].append(value)
            },
            override: { settings, other in
                if !other[keyPath: field].isEmpty { settings[keyPath: field] = other[keyPath: field] }
            },
            apply: { settings, configuration throws(ConfigurationError) in
                do throws(AddressError) {
                    configuration.listenAddresses = try settings[keyPath: field].map(ServerAddress.init(parsing:))
                } catch {
                    throw ConfigurationError(setting: name, reason: error.description)
                }
            }
        )
    }

    /// A swift-log level, used by the daemon when it sets up logging, at start only.
    static func logLevel(
        _ name: String,
        _ field: WritableKeyPath<DaemonSettings, Logger.Level?>,
        default defaultValue: String,
        help: String
    ) -> Self {
        SettingDeclaration(
            name: name,
            valueName: "log-level",
            help: help,
            defaultValue: defaultValue,
            reloadable: false,
            read: { value, settings throws(ConfigurationError) in
                guard let level = Logger.Level(rawValue: value) else {
                    let levels = Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")
                    throw ConfigurationError(setting: name, reason: "'\(value)' is not one of \(levels)")
                }
                settings[keyPath: field] = level
            },
            override: overrideOptional(field),
            apply: { _, _ in }
        )
    }

    private static func overrideOptional<Value>(
        _ field: WritableKeyPath<DaemonSettings, Value?>
    ) -> (inout DaemonSettings, DaemonSettings) -> Void {
        { settings, other in
            if let value = other[keyPath: field] { settings[keyPath: field] = value }
        }
    }
}

/// A setting with a value that cannot be used.
public struct ConfigurationError: Error, Equatable, CustomStringConvertible {
    /// The setting's name, as in the config file.
    public var setting: String
    /// What is wrong with its value.
    public var reason: String
    /// Where it was read, such as `/etc/aiotask/aiotaskd.conf:12`, if from a file.
    public var location: String?

    public init(setting: String, reason: String, location: String? = nil) {
        self.setting = setting
        self.reason = reason
        self.location = location
    }

    public var description: String {
        let place = location.map { "\($0): " } ?? ""
        return "\(place)\(setting): \(reason)"
    }
}
