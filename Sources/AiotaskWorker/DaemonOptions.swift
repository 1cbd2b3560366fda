import ArgumentParser
import Logging

/// The daemon's command-line options, shared by `aiotaskd` and every executable built on ``Daemon``.
///
/// Each option is a setting declared in `DaemonSettings.declarations`, which gives its name, its value's
/// name and its help with the default; ArgumentParser needs a stored property for each, so here they are
/// listed once more, one line each, and `ConfigTests` checks that every declared setting has one that reaches
/// ``settings``.
public struct DaemonOptions: ParsableArguments {
    @Option(setting: "listen") public var listen: [String] = []
    @Option(setting: "handler") public var handler: String?
    @Option(setting: "workers") public var workers: Int?

    @Option(
        help: ArgumentHelp(
            "Read settings from this file (key = value lines, keys named like these options).",
            valueName: "file"
        )
    )
    public var config: String?

    @Option(setting: "queue-capacity") public var queueCapacity: Int?
    @Option(setting: "max-queued-bytes") public var maxQueuedBytes: Int?
    @Option(setting: "max-tasks-per-connection") public var maxTasksPerConnection: Int?
    @Option(setting: "max-connections") public var maxConnections: Int?
    @Option(setting: "idle-timeout") public var idleTimeout: Double?
    @Option(setting: "write-timeout") public var writeTimeout: Double?
    @Option(setting: "prefetch") public var prefetch: Int?
    @Option(setting: "max-payload") public var maxPayload: Int?
    @Option(setting: "task-timeout") public var taskTimeout: Double?
    @Option(setting: "kill-grace") public var killGrace: Double?
    @Option(setting: "max-tasks-per-worker") public var maxTasksPerWorker: Int?
    @Option(setting: "max-tasks-jitter") public var maxTasksJitter: Int?
    @Option(setting: "max-worker-rss") public var maxWorkerRss: Int?
    @Option(setting: "worker-shared-memory") public var workerSharedMemory: Int?
    @Option(setting: "drain-timeout") public var drainTimeout: Double?
    @Option(setting: "log-level") public var logLevel: Logger.Level?

    public init() {}

    /// The command line's settings.
    public var settings: DaemonSettings {
        var settings = DaemonSettings()
        settings.listen = listen
        settings.handler = handler
        settings.workers = workers
        settings.queueCapacity = queueCapacity
        settings.maxQueuedBytes = maxQueuedBytes
        settings.maxTasksPerConnection = maxTasksPerConnection
        settings.maxConnections = maxConnections
        settings.idleTimeout = idleTimeout
        settings.writeTimeout = writeTimeout
        settings.prefetch = prefetch
        settings.maxPayload = maxPayload
        settings.taskTimeout = taskTimeout
        settings.killGrace = killGrace
        settings.maxTasksPerWorker = maxTasksPerWorker
        settings.maxTasksJitter = maxTasksJitter
        settings.maxWorkerRSS = maxWorkerRss
        settings.workerSharedMemory = workerSharedMemory
        settings.drainTimeout = drainTimeout
        settings.logLevel = logLevel
        return settings
    }
}

extension ArgumentHelp {
    /// The help of the declared setting `name`: its text with the default, and its value's name.
    fileprivate static func setting(_ name: String) -> ArgumentHelp {
        guard let declaration = DaemonSettings.declaration(named: name) else {
            preconditionFailure("--\(name) is not declared in DaemonSettings.declarations")
        }
        return ArgumentHelp(declaration.helpText, valueName: declaration.valueName)
    }
}

extension Option {
    /// The option of the setting `name` declared in ``DaemonSettings/declarations``, which gives its help.
    fileprivate init<T: ExpressibleByArgument>(setting name: String) where Value == T? {
        self.init(name: .customLong(name), help: .setting(name))
    }

    /// The repeatable option of the setting `name` declared in ``DaemonSettings/declarations``.
    fileprivate init<T: ExpressibleByArgument>(wrappedValue: [T], setting name: String) where Value == [T] {
        self.init(wrappedValue: wrappedValue, name: .customLong(name), help: .setting(name))
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
