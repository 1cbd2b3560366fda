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
        merged.idleTimeout = other.idleTimeout ?? idleTimeout
        merged.writeTimeout = other.writeTimeout ?? writeTimeout
        merged.prefetch = other.prefetch ?? prefetch
        merged.maxPayload = other.maxPayload ?? maxPayload
        merged.taskTimeout = other.taskTimeout ?? taskTimeout
        merged.killGrace = other.killGrace ?? killGrace
        merged.maxTasksPerWorker = other.maxTasksPerWorker ?? maxTasksPerWorker
        merged.maxTasksJitter = other.maxTasksJitter ?? maxTasksJitter
        merged.maxWorkerRSS = other.maxWorkerRSS ?? maxWorkerRSS
        merged.workerSharedMemory = other.workerSharedMemory ?? workerSharedMemory
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
        configuration.workers = try Self.checked(workers, "workers", 1...4096) ?? configuration.workers
        configuration.queueCapacity =
            try Self.checked(queueCapacity, "queue-capacity", 0...Int.max) ?? configuration.queueCapacity
        configuration.maximumQueuedBytes =
            try Self.checked(maxQueuedBytes, "max-queued-bytes", 0...Int.max) ?? configuration.maximumQueuedBytes
        configuration.maximumTasksPerConnection =
            try Self.checked(maxTasksPerConnection, "max-tasks-per-connection", 1...Int.max)
            ?? configuration.maximumTasksPerConnection
        configuration.maximumConnections =
            try Self.checked(maxConnections, "max-connections", 1...Int.max) ?? configuration.maximumConnections
        if let idleTimeout {
            configuration.idleTimeout = idleTimeout == 0 ? nil : try Self.duration(idleTimeout, "idle-timeout")
        }
        if let writeTimeout {
            configuration.writeTimeout = writeTimeout == 0 ? nil : try Self.duration(writeTimeout, "write-timeout")
        }
        configuration.prefetch = try Self.checked(prefetch, "prefetch", 0...64) ?? configuration.prefetch
        configuration.maximumPayloadLength =
            try Self.checked(maxPayload, "max-payload", 1...Int(UInt32.max) - 32, unit: " bytes")
            ?? configuration.maximumPayloadLength
        if let taskTimeout {
            configuration.defaultTaskTimeout = taskTimeout == 0 ? nil : try Self.duration(taskTimeout, "task-timeout")
        }
        if let killGrace { configuration.killGracePeriod = try Self.duration(killGrace, "kill-grace") }
        if let quota = try Self.checked(maxTasksPerWorker, "max-tasks-per-worker", 0...Int.max) {
            configuration.maximumTasksPerProcess = quota == 0 ? nil : quota
        }
        configuration.maximumTasksJitter =
            try Self.checked(maxTasksJitter, "max-tasks-jitter", 0...Int.max) ?? configuration.maximumTasksJitter
        if let limit = try Self.checked(maxWorkerRSS, "max-worker-rss", 0...Self.largestWorkerRSS, unit: " MiB") {
            configuration.maximumProcessRSS = limit == 0 ? nil : limit * ProcessMemory.mebibyte
        }
        if let size = try Self.checked(workerSharedMemory, "worker-shared-memory", 0...1024, unit: " MiB") {
            configuration.sharedPayloadBytes = size * ProcessMemory.mebibyte
        }
        if let drainTimeout { configuration.drainTimeout = try Self.duration(drainTimeout, "drain-timeout") }
        return configuration
    }

    /// The largest memory limit of a pool process, in MiB (1 PiB).
    static let largestWorkerRSS = 1 << 30

    /// `value` if it lies in `range`; an error naming `setting` and the range otherwise.
    private static func checked(
        _ value: Int?,
        _ setting: String,
        _ range: ClosedRange<Int>,
        unit: String = ""
    ) throws(ConfigurationError) -> Int? {
        guard let value, !range.contains(value) else { return value }
        let reason: String =
            switch (range.lowerBound, range.upperBound) {
            case (0, .max): "must not be negative"
            case (let lower, .max): "must be at least \(lower)"
            case (let lower, let upper): "must be from \(lower) to \(upper)\(unit), not \(value)"
            }
        throw ConfigurationError(setting: setting, reason: reason)
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
