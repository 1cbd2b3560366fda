/// The server's live statistics, carried as JSON in an `INFO` frame (snake_case keys).
public struct ServerInfo: Codable, Hashable, Sendable {
    /// The aiotask version of the server.
    public var version: String
    /// The server's process id.
    public var pid: Int
    /// Seconds since the server started.
    public var uptimeSeconds: Double
    /// The handler the pool runs, as configured (`echo`, `exec:/path …`, …).
    public var handler: String
    /// Pool processes.
    public var workers: Workers
    /// The queue of tasks waiting for a pool process.
    public var queue: Queue
    /// Task counters since start.
    public var tasks: Tasks
    /// Open client connections.
    public var connections: Int
    /// Tasks finished per second, averaged over the last few seconds.
    public var tasksPerSecond: Double
    /// What the server would answer HAProxy's agent check now, without its newline (`up ready 50%`, `up drain`,
    /// `down #…`); nil from a server older than the agent check.
    public var agentCheck: String?

    public struct Workers: Codable, Hashable, Sendable {
        /// How many processes the pool keeps.
        public var configured: Int
        /// Processes currently alive.
        public var alive: Int
        /// Processes running a task.
        public var busy: Int
        /// Processes that died or were killed and replaced since start.
        public var restarts: Int

        public init(configured: Int, alive: Int, busy: Int, restarts: Int) {
            self.configured = configured
            self.alive = alive
            self.busy = busy
            self.restarts = restarts
        }
    }

    public struct Queue: Codable, Hashable, Sendable {
        /// Tasks waiting now.
        public var length: Int
        /// The most tasks that may wait; more are rejected.
        public var capacity: Int

        public init(length: Int, capacity: Int) {
            self.length = length
            self.capacity = capacity
        }
    }

    public struct Tasks: Codable, Hashable, Sendable {
        /// Tasks accepted.
        public var submitted: Int
        /// Tasks that returned a result.
        public var succeeded: Int
        /// Tasks that ended with a failure, of any reason (rejections included).
        public var failed: Int
        /// Tasks running now.
        public var running: Int
        /// Tasks that ran longer than the server's slow-task threshold (`slow-task-threshold`), each counted once
        /// while it still ran; nil from a server that does not count them.
        public var slow: Int?

        public init(submitted: Int, succeeded: Int, failed: Int, running: Int, slow: Int? = nil) {
            self.submitted = submitted
            self.succeeded = succeeded
            self.failed = failed
            self.running = running
            self.slow = slow
        }
    }

    public init(
        version: String,
        pid: Int,
        uptimeSeconds: Double,
        handler: String,
        workers: Workers,
        queue: Queue,
        tasks: Tasks,
        connections: Int,
        tasksPerSecond: Double,
        agentCheck: String? = nil
    ) {
        self.version = version
        self.pid = pid
        self.uptimeSeconds = uptimeSeconds
        self.handler = handler
        self.workers = workers
        self.queue = queue
        self.tasks = tasks
        self.connections = connections
        self.tasksPerSecond = tasksPerSecond
        self.agentCheck = agentCheck
    }

    enum CodingKeys: String, CodingKey {
        case version, pid, handler, workers, queue, tasks, connections
        case uptimeSeconds = "uptime_seconds"
        case tasksPerSecond = "tasks_per_second"
        case agentCheck = "agent_check"
    }
}
