import AiotaskProtocol
import Logging

/// The daemon's settings as given by a config file or the command line; unset values keep their defaults.
///
/// The config file uses the long option names as keys, one `key = value` per line, `#` for comments;
/// `listen` may be repeated. The command line overrides the file (its `--listen`s replace the file's).
public struct DaemonSettings: Sendable, Equatable {
    public var listen: [String] = []
    public var handler: String?
    public var workers: Int?
    public var queueCapacity: Int?
    public var maxQueuedBytes: Int?
    public var maxTasksPerConnection: Int?
    public var maxConnections: Int?
    public var prefetch: Int?
    public var maxPayload: Int?
    public var taskTimeout: Double?
    public var killGrace: Double?
    public var maxTasksPerWorker: Int?
    public var maxTasksJitter: Int?
    public var drainTimeout: Double?
    public var logLevel: Logger.Level?

    public init() {}

    /// These settings with every value set in `other` taking precedence.
    public func overridden(by other: DaemonSettings) -> DaemonSettings {
        var merged = self
        if !other.listen.isEmpty { merged.listen = other.listen }
        merged.handler = other.handler ?? handler
        merged.workers = other.workers ?? workers
        merged.queueCapacity = other.queueCapacity ?? queueCapacity
        merged.maxQueuedBytes = other.maxQueuedBytes ?? maxQueuedBytes
        merged.maxTasksPerConnection = other.maxTasksPerConnection ?? maxTasksPerConnection
        merged.maxConnections = other.maxConnections ?? maxConnections
        merged.prefetch = other.prefetch ?? prefetch
        merged.maxPayload = other.maxPayload ?? maxPayload
        merged.taskTimeout = other.taskTimeout ?? taskTimeout
        merged.killGrace = other.killGrace ?? killGrace
        merged.maxTasksPerWorker = other.maxTasksPerWorker ?? maxTasksPerWorker
        merged.maxTasksJitter = other.maxTasksJitter ?? maxTasksJitter
        merged.drainTimeout = other.drainTimeout ?? drainTimeout
        merged.logLevel = other.logLevel ?? logLevel
        return merged
    }

    /// A worker configuration running `handler`, with every value checked.
    public func configuration(handler: ProcessCommand) throws(ConfigurationError) -> WorkerConfiguration {
        var configuration = WorkerConfiguration(handler: handler)
        do {
            configuration.listenAddresses = try listen.map(ServerAddress.init(parsing:))
        } catch {
            throw ConfigurationError(setting: "listen", reason: error.description)
        }
        if let workers {
            guard (1...4096).contains(workers) else {
                throw ConfigurationError(setting: "workers", reason: "must be from 1 to 4096, not \(workers)")
            }
            configuration.workers = workers
        }
        if let queueCapacity {
            guard queueCapacity >= 0 else {
                throw ConfigurationError(setting: "queue-capacity", reason: "must not be negative")
            }
            configuration.queueCapacity = queueCapacity
        }
        if let maxQueuedBytes {
            guard maxQueuedBytes >= 0 else {
                throw ConfigurationError(setting: "max-queued-bytes", reason: "must not be negative")
            }
            configuration.maximumQueuedBytes = maxQueuedBytes
        }
        if let maxTasksPerConnection {
            guard maxTasksPerConnection >= 1 else {
                throw ConfigurationError(setting: "max-tasks-per-connection", reason: "must be at least 1")
            }
            configuration.maximumTasksPerConnection = maxTasksPerConnection
        }
        if let prefetch {
            guard (0...64).contains(prefetch) else {
                throw ConfigurationError(setting: "prefetch", reason: "must be from 0 to 64, not \(prefetch)")
            }
            configuration.prefetch = prefetch
        }
        if let maxConnections {
            guard maxConnections >= 1 else {
                throw ConfigurationError(setting: "max-connections", reason: "must be at least 1")
            }
            configuration.maximumConnections = maxConnections
        }
        if let maxPayload {
            guard (1...Int(UInt32.max) - 32).contains(maxPayload) else {
                throw ConfigurationError(
                    setting: "max-payload",
                    reason: "must be from 1 to \(Int(UInt32.max) - 32) bytes"
                )
            }
            configuration.maximumPayloadLength = maxPayload
        }
        if let taskTimeout {
            configuration.defaultTaskTimeout = taskTimeout == 0 ? nil : try Self.duration(taskTimeout, "task-timeout")
        }
        if let killGrace { configuration.killGracePeriod = try Self.duration(killGrace, "kill-grace") }
        if let maxTasksPerWorker {
            guard maxTasksPerWorker >= 0 else {
                throw ConfigurationError(setting: "max-tasks-per-worker", reason: "must not be negative")
            }
            configuration.maximumTasksPerProcess = maxTasksPerWorker == 0 ? nil : maxTasksPerWorker
        }
        if let maxTasksJitter {
            guard maxTasksJitter >= 0 else {
                throw ConfigurationError(setting: "max-tasks-jitter", reason: "must not be negative")
            }
            configuration.maximumTasksJitter = maxTasksJitter
        }
        if let drainTimeout { configuration.drainTimeout = try Self.duration(drainTimeout, "drain-timeout") }
        return configuration
    }

    private static func duration(_ seconds: Double, _ setting: String) throws(ConfigurationError) -> Duration {
        guard seconds.isFinite, seconds >= 0, seconds <= 1e9 else {
            throw ConfigurationError(
                setting: setting,
                reason: "must be a number of seconds from 0 to 1e9, not \(seconds)"
            )
        }
        return .nanoseconds(Int64(seconds * 1e9))
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
