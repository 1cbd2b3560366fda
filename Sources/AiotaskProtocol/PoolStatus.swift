/// The pool's live state, process by process, carried as JSON in a `POOL` frame (protocol version 2, snake_case
/// keys): what `aiotask top` shows.
///
/// Clients must ignore keys they do not know, and take a ``PoolProcessState`` they do not know as a state to show
/// by its name.
public struct PoolStatus: Codable, Hashable, Sendable {
    /// The server's statistics, as `INFO` carries them.
    public var server: ServerInfo
    /// One entry per slot of the pool, by slot index.
    public var processes: [PoolProcessStatus]
    /// Slots left out at the end of ``processes`` so that the frame fits the 64 KiB control-frame limit (about 350
    /// slots fit); 0 otherwise.
    public var processesOmitted: Int

    public init(server: ServerInfo, processes: [PoolProcessStatus], processesOmitted: Int = 0) {
        self.server = server
        self.processes = processes
        self.processesOmitted = processesOmitted
    }

    enum CodingKeys: String, CodingKey {
        case server, processes
        case processesOmitted = "processes_omitted"
    }
}

/// One slot of the pool and its process, in a ``PoolStatus``.
public struct PoolProcessStatus: Codable, Hashable, Sendable {
    /// The slot's index, `AIOTASK_WORKER_INDEX` of its process.
    public var slot: Int
    /// The pool process's pid; nil while the slot has none (waiting to restart it).
    public var pid: Int?
    public var state: PoolProcessState
    /// The id of the task it runs, when busy.
    public var taskID: TaskID?
    /// Seconds the running task has run, when busy.
    public var taskSeconds: Double?
    /// Resident memory of the process, in bytes; nil when it cannot be read.
    public var residentBytes: Int?
    /// Tasks the current process has answered.
    public var tasksDone: Int
    /// Processes of this slot that died or were stopped and replaced since the server started.
    public var restarts: Int

    public init(
        slot: Int,
        pid: Int?,
        state: PoolProcessState,
        taskID: TaskID? = nil,
        taskSeconds: Double? = nil,
        residentBytes: Int? = nil,
        tasksDone: Int,
        restarts: Int
    ) {
        self.slot = slot
        self.pid = pid
        self.state = state
        self.taskID = taskID
        self.taskSeconds = taskSeconds
        self.residentBytes = residentBytes
        self.tasksDone = tasksDone
        self.restarts = restarts
    }

    enum CodingKeys: String, CodingKey {
        case slot, pid, state
        case taskID = "task_id"
        case taskSeconds = "task_seconds"
        case residentBytes = "rss_bytes"
        case tasksDone = "tasks_done"
        case restarts
    }
}

/// What a slot's process is doing, as a ``PoolProcessStatus`` reports it (a JSON string).
public struct PoolProcessState: RawRepresentable, Codable, Hashable, Sendable {
    public let rawValue: String

    public init(rawValue: String) {
        self.rawValue = rawValue
    }

    /// Started, not ready for a task yet.
    public static let starting = PoolProcessState(rawValue: "starting")
    /// Ready, waiting for a task.
    public static let idle = PoolProcessState(rawValue: "idle")
    /// Running a task.
    public static let busy = PoolProcessState(rawValue: "busy")
    /// No process: the last one died, the next starts after a backoff or once the last is reaped.
    public static let restarting = PoolProcessState(rawValue: "restarting")
    /// Stopped for good (the server is stopping).
    public static let stopped = PoolProcessState(rawValue: "stopped")
}

extension TaskID: Codable {
    /// A task id in JSON: its UUID text.
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let id = TaskID(text) else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "not a task id: \(text)")
            )
        }
        self = id
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}
