import AiotaskProtocol
import NIOCore

/// Everything that shapes a running worker: where it listens, what its pool runs, and its limits.
public struct ServerConfiguration: Sendable {
    /// Addresses to listen on.
    public var listenAddresses: [ServerAddress]
    /// Already-listening sockets to serve instead of, or besides, `listenAddresses` (e.g. passed by systemd).
    public var adoptedSockets: [AdoptedSocket]
    /// Addresses of the metrics listener (`GET /metrics`, Prometheus text or OpenMetrics); empty, the default,
    /// for none. See docs/observability.md.
    public var metricsListenAddresses: [ServerAddress] = []
    /// Already-listening sockets for the metrics listener (systemd's socket named `metrics`).
    public var metricsAdoptedSockets: [AdoptedSocket] = []
    /// The bounds of the metrics listener: request timeout, header and body sizes, connections.
    var metricsLimits = MetricsHTTPHandler.Limits()
    /// The program each pool process runs.
    public var handler: ProcessCommand
    /// Number of pool processes.
    public var workers: Int
    /// Most tasks waiting for a process; a task beyond that is rejected at once.
    public var queueCapacity: Int
    /// Most bytes of task data waiting in the queue; a task beyond that is rejected at once.
    public var maximumQueuedBytes: Int
    /// Most tasks one connection may have queued or running; more are rejected at once.
    public var maximumTasksPerConnection: Int
    /// Most client connections open at once; more are closed as they arrive, with a log entry.
    public var maximumConnections: Int
    /// A connection with no task in flight that sends no complete frame for this long is closed, with a log
    /// entry (an extended client is first sent an `ERROR` saying why); nil never. This also ends a client that
    /// trickles a frame slower than that, or never finishes it.
    public var idleTimeout: Duration?
    /// A client whose answers fill the server's send buffer (it has stopped reading them) is disconnected if
    /// it takes none of them for this long, with a log entry, and its tasks are cancelled; nil never.
    public var writeTimeout: Duration?
    /// Tasks sent ahead to a busy process, behind the one it runs, so it never waits a round trip for its next
    /// task; their timeouts start when they start. nil (the default) is automatic: up to
    /// 32 (`PoolSlot.automaticPrefetch`) for a Swift handler of this library, whose processes claim each task as
    /// they start it, so tasks not started yet are withdrawn to run elsewhere as soon as another process is
    /// idle (see `TaskClaims`); none for an external handler program. To an external program, a task sent
    /// ahead is committed: if the process dies first, the task runs elsewhere; if the task is cancelled, the
    /// process is stopped as it starts it. 0 sends a task only to an idle process. No task is sent ahead to a
    /// process whose task has run for over a millisecond.
    public var prefetch: Int?
    /// No task is sent ahead to a process whose current task has run longer than this: it may run for long.
    var prefetchStallLimit: Duration = .milliseconds(1)
    /// Largest task or result accepted, in bytes.
    public var maximumPayloadLength: Int
    /// Timeout of a task whose client gave none; nil for no timeout.
    public var defaultTaskTimeout: Duration?
    /// A task that runs longer than this gets one journal entry while it still runs (`slow-task-threshold`,
    /// ``LogMessageID/slowTask``) and counts in the statistics; nil for no such entries, and no timer.
    public var slowTaskThreshold: Duration?
    /// Time between SIGTERM and SIGKILL when a process is stopped (timeout, cancel, shutdown).
    public var killGracePeriod: Duration
    /// A process is replaced after this many tasks; nil never.
    public var maximumTasksPerProcess: Int?
    /// Up to this many tasks are added at random to `maximumTasksPerProcess`, so processes don't all recycle at once.
    public var maximumTasksJitter: Int
    /// Largest resident set a pool process may have, in bytes; nil for no limit. Checked after each task (a process
    /// over it is replaced once its tasks sent ahead are done) and every ``memoryCheckInterval`` while a task runs
    /// (its process group is killed at once and the task fails with `workerCrashed`).
    public var maximumProcessRSS: Int?
    /// How often the resident set of a busy process is read, while ``maximumProcessRSS`` is set.
    public var memoryCheckInterval: Duration
    /// Bytes of memory each Swift-handler pool process shares with the supervisor for large tasks and results (see
    /// `SharedPayloadArena`); 0 sends every payload through the process's pipes.
    public var sharedPayloadBytes: Int
    /// Whether a handler program (`exec:`) gets each task's context header (id, timeout, trace context) before the
    /// task, announced by `AIOTASK_TASK_CONTEXT=1` in its environment (docs/handler-protocol.md); Swift handlers
    /// always get it. Off, a program sees exactly the framing it always saw. A change applies to processes started
    /// after it.
    public var handlerProgramTaskContext: Bool
    /// How many finished tasks per connection `STATUS` remembers.
    public var finishedTasksRemembered: Int
    /// On shutdown, how long in-flight tasks may still finish before they fail with `shuttingDown` (never
    /// started) or `interrupted` (running).
    public var drainTimeout: Duration
    /// Longest wait between restarts of a process that keeps crashing.
    public var maximumRestartBackoff: Duration
    /// TCP addresses where HAProxy's `agent-check` is answered (see docs/deployment.md); empty for none. Like the
    /// listening addresses, kept as they are by a reload.
    public var agentListenAddresses: [ServerAddress]
    /// The agent check says `drain` while more tasks than this wait; nil never.
    public var agentHighWaterMark: Int?
    /// Which local users may connect over a Unix socket (`allow-users`, `allow-groups`); by default everyone the
    /// socket's file mode lets in. Checked once as each connection opens, so a reload applies to new connections
    /// and leaves those open alone. TCP connections are not checked. See docs/security.md.
    public var peerPolicy = PeerPolicy()
    /// What the pool's processes must not read (`hide-credentials`): `$CREDENTIALS_DIRECTORY` and the secrets
    /// named in ``HiddenPaths/secretPaths``. Worked out again at each reload. See docs/security.md.
    public var hiddenPaths = HiddenPaths()
    /// The certificate, key and client checks of the `tls://` listeners (docs/security.md); unused without one. A
    /// reload applies new material to the connections accepted from then on.
    public var tls = ServerTLSConfiguration()

    public init(
        listenAddresses: [ServerAddress] = [],
        adoptedSockets: [AdoptedSocket] = [],
        handler: ProcessCommand,
        workers: Int = System.coreCount,
        queueCapacity: Int = 65_536,
        maximumQueuedBytes: Int = 1 << 30,
        maximumTasksPerConnection: Int = 16_384,
        maximumConnections: Int = 16_384,
        idleTimeout: Duration? = .seconds(300),
        writeTimeout: Duration? = .seconds(60),
        prefetch: Int? = nil,
        maximumPayloadLength: Int = 64 * 1024 * 1024,
        defaultTaskTimeout: Duration? = nil,
        slowTaskThreshold: Duration? = nil,
        killGracePeriod: Duration = .seconds(2),
        maximumTasksPerProcess: Int? = nil,
        maximumTasksJitter: Int = 0,
        maximumProcessRSS: Int? = nil,
        memoryCheckInterval: Duration = .milliseconds(100),
        sharedPayloadBytes: Int = 4 << 20,
        handlerProgramTaskContext: Bool = false,
        finishedTasksRemembered: Int = 1024,
        drainTimeout: Duration = .seconds(30),
        maximumRestartBackoff: Duration = .seconds(10),
        agentListenAddresses: [ServerAddress] = [],
        agentHighWaterMark: Int? = nil
    ) {
        self.listenAddresses = listenAddresses
        self.adoptedSockets = adoptedSockets
        self.handler = handler
        self.workers = workers
        self.queueCapacity = queueCapacity
        self.maximumQueuedBytes = maximumQueuedBytes
        self.maximumTasksPerConnection = maximumTasksPerConnection
        self.maximumConnections = maximumConnections
        self.idleTimeout = idleTimeout
        self.writeTimeout = writeTimeout
        self.prefetch = prefetch
        self.maximumPayloadLength = maximumPayloadLength
        self.defaultTaskTimeout = defaultTaskTimeout
        self.slowTaskThreshold = slowTaskThreshold
        self.killGracePeriod = killGracePeriod
        self.maximumTasksPerProcess = maximumTasksPerProcess
        self.maximumTasksJitter = maximumTasksJitter
        self.maximumProcessRSS = maximumProcessRSS
        self.memoryCheckInterval = memoryCheckInterval
        self.sharedPayloadBytes = sharedPayloadBytes
        self.handlerProgramTaskContext = handlerProgramTaskContext
        self.finishedTasksRemembered = finishedTasksRemembered
        self.drainTimeout = drainTimeout
        self.maximumRestartBackoff = maximumRestartBackoff
        self.agentListenAddresses = agentListenAddresses
        self.agentHighWaterMark = agentHighWaterMark
    }
}

/// A listening socket the worker did not open itself, such as one passed by systemd.
public struct AdoptedSocket: Hashable, Sendable {
    /// The descriptor, already bound and listening.
    public var descriptor: Int32
    /// A name for logs (systemd's `FileDescriptorName=`).
    public var name: String
    /// Whether its clients speak TLS, served with ``ServerConfiguration/tls`` as a `tls://` listener is.
    public var usesTLS: Bool

    public init(descriptor: Int32, name: String, usesTLS: Bool = false) {
        self.descriptor = descriptor
        self.name = name
        self.usesTLS = usesTLS
    }
}

/// The former name of ``ServerConfiguration``, from before "worker" came to mean only what a handler author
/// builds; kept so that code written against it still compiles.
@available(*, deprecated, renamed: "ServerConfiguration")
public typealias WorkerConfiguration = ServerConfiguration
