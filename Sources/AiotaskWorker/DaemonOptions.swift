import ArgumentParser
import Logging

/// The daemon's command-line options, shared by `aiotaskd` and every executable built on ``Daemon``.
public struct DaemonOptions: ParsableArguments {
    @Option(
        name: .customLong("listen"),
        help: ArgumentHelp(
            "Address to listen on: tcp://HOST:PORT, tcp://[IPv6]:PORT or unix:/PATH. Repeatable.",
            valueName: "address"
        )
    )
    public var listen: [String] = []

    @Option(
        help: ArgumentHelp(
            "The task handler: a built-in name, or exec:/path/to/program [args…] for an external program.",
            valueName: "spec"
        )
    )
    public var handler: String?

    @Option(help: "Number of pool processes (default: the number of CPUs).")
    public var workers: Int?

    @Option(
        help: ArgumentHelp(
            "Read settings from this file (key = value lines, keys named like these options).",
            valueName: "file"
        )
    )
    public var config: String?

    @Option(help: "Most tasks waiting for a process; more are rejected at once (default: 65536).")
    public var queueCapacity: Int?

    @Option(
        help: ArgumentHelp(
            "Most bytes of task data waiting; more are rejected at once (default: 1073741824, i.e. 1 GiB).",
            valueName: "bytes"
        )
    )
    public var maxQueuedBytes: Int?

    @Option(help: "Most tasks one connection may have queued or running; more are rejected (default: 16384).")
    public var maxTasksPerConnection: Int?

    @Option(help: "Most client connections open at once; more are closed as they arrive (default: 16384).")
    public var maxConnections: Int?

    @Option(
        help: ArgumentHelp(
            "Close a connection with no task in flight after this many seconds without a complete frame; 0 for never (default: 300).",
            valueName: "seconds"
        )
    )
    public var idleTimeout: Double?

    @Option(
        help: ArgumentHelp(
            "Disconnect a client that neither reads its answers nor sends a request this many seconds, cancelling its tasks; 0 for never (default: 60).",
            valueName: "seconds"
        )
    )
    public var writeTimeout: Double?

    @Option(
        help: """
            Tasks sent ahead to a busy process, behind the one it runs, for throughput (default: automatic — \
            up to 32 for Swift handlers, whose tasks sent ahead move to an idle process; 0 for handler programs).
            """
    )
    public var prefetch: Int?

    @Option(
        help: ArgumentHelp("Largest task or result, in bytes (default: 67108864, i.e. 64 MiB).", valueName: "bytes")
    )
    public var maxPayload: Int?

    @Option(
        help: ArgumentHelp(
            "Default task timeout in seconds; 0 for none (default: 0). Clients may set their own.",
            valueName: "seconds"
        )
    )
    public var taskTimeout: Double?

    @Option(
        help: ArgumentHelp(
            "Seconds between SIGTERM and SIGKILL when a process is stopped (default: 2).",
            valueName: "seconds"
        )
    )
    public var killGrace: Double?

    @Option(help: "Replace a process after this many tasks; 0 for never (default: 0).")
    public var maxTasksPerWorker: Int?

    @Option(help: "Add up to this many tasks at random to --max-tasks-per-worker (default: 0).")
    public var maxTasksJitter: Int?

    @Option(
        help: ArgumentHelp(
            "Largest resident memory of a pool process, in MiB; 0 for no limit (default: 0). Checked after each "
                + "task (the process is replaced) and while a task runs, counting the processes the handler started "
                + "(the process group is killed, the task fails).",
            valueName: "MiB"
        )
    )
    public var maxWorkerRss: Int?

    @Option(
        help: ArgumentHelp(
            "Memory each Swift-handler pool process shares with aiotaskd, in MiB, through which tasks and results of "
                + "64 KiB or more travel instead of its pipes; 0 for none (default: 4).",
            valueName: "MiB"
        )
    )
    public var workerSharedMemory: Int?

    @Option(
        help: ArgumentHelp(
            "On shutdown, seconds that tasks in flight may still run (default: 30).",
            valueName: "seconds"
        )
    )
    public var drainTimeout: Double?

    @Option(help: "trace, debug, info, notice, warning, error or critical (default: info).")
    public var logLevel: Logger.Level?

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

extension Logger.Level: @retroactive ExpressibleByArgument {}
