import AiotaskProtocol
import AiotaskTransport
import ArgumentParser
import Foundation
import Logging
import NIOCore
import Systemd

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Runs a complete worker daemon: settings, logging, sockets (its own or systemd's), the server, the
/// sd_notify lifecycle with its watchdog, and signals (SIGTERM/SIGINT drain and stop, SIGHUP reloads).
public enum Daemon {
    /// The entry point of an executable whose tasks are handled by a Swift closure.
    ///
    /// In a pool process it serves tasks with `handler`; otherwise it is the supervisor: it reads the
    /// command line (the same options as `aiotaskd`, without `--handler`) and runs until SIGTERM or SIGINT,
    /// its pool made of re-executions of this same binary.
    ///
    /// ```swift
    /// @main struct Uppercase {
    ///     static func main() async {
    ///         await Daemon.main { task in ByteBuffer(bytes: task.readableBytesView.map { … }) }
    ///     }
    /// }
    /// ```
    public static func main(handler: @escaping TaskHandler) async -> Never {
        await runPoolProcessIfRequested(handler: handler)
        let options = WorkerProgramCommand.parseOptionsOrExit()
        let name = WorkerProgramCommand.programName
        await run(options: options) { settings throws(ConfigurationError) in
            if let spec = settings.handler {
                throw ConfigurationError(setting: "handler", reason: "\(spec): this program runs its own Swift handler")
            }
            return .currentExecutable(displayName: "swift:\(name)")
        }
    }

    /// In a pool process, serves tasks (role `handler`) or becomes the external handler (role `exec`), and
    /// never returns; in the supervisor, returns at once.
    public static func runPoolProcessIfRequested(handler: @escaping TaskHandler) async {
        switch WorkerRole.current {
        case .handler: await WorkerRole.serveTasks(with: handler)
        case .exec: WorkerRole.execExternalHandler(arguments: Array(CommandLine.arguments.dropFirst()))
        case nil: return
        }
    }

    /// The config file's settings (if `--config` names one) overridden by the command line's.
    public static func readSettings(_ options: DaemonOptions) throws(ConfigurationError) -> DaemonSettings {
        guard let path = options.config else { return options.settings }
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigurationError(setting: "config", reason: "cannot read \(path): \(error.localizedDescription)")
        }
        return try ConfigFile.parse(text, path: path).overridden(by: options.settings)
    }

    /// Runs the worker until SIGTERM or SIGINT, then drains and exits 0.
    ///
    /// - Parameters:
    ///   - options: the command line, which overrides the file its `--config` names, if any (``readSettings(_:)``).
    ///   - resolveHandler: turns the settings' `handler` into the command the pool runs; called again on every
    ///     reload.
    public static func run(
        options: DaemonOptions,
        resolveHandler: @escaping @Sendable (DaemonSettings) throws(ConfigurationError) -> ProcessCommand
    ) async -> Never {
        MemoryTuning.keepLargeBuffersInHeap()
        let notifier = Notifier()
        let settings: DaemonSettings
        var configuration: WorkerConfiguration
        do {
            settings = try readSettings(options)
            configuration = try settings.configuration(handler: try resolveHandler(settings))
        } catch {
            fail(notifier, EINVAL, "invalid configuration: \(error)", exitCode: 78)
        }
        let level = settings.logLevel ?? .info
        LoggingSystem.bootstrap { _ in JournalLogHandler(identifier: "aiotaskd", level: level) }
        let logger = Logger(label: "aiotaskd")
        raiseOpenFileLimit(for: configuration, logger: logger)
        // Before any pool process starts, so that whatever a handler leaves behind comes back to the daemon.
        let reaper = OrphanReaper.start(logger: logger)

        let activated: [ActivatedSocket]
        do {
            activated = try SocketActivation.takeListeningSockets()
        } catch {
            logger.critical("\(error)")
            fail(notifier, EBADF, error.description, exitCode: 78)
        }
        configuration.adoptedSockets = activated.map { AdoptedSocket(descriptor: $0.descriptor, name: $0.name) }
        if configuration.listenAddresses.isEmpty && activated.isEmpty {
            configuration.listenAddresses = [.unix(path: ServerAddress.defaultUnixPath)]
        }

        signal(SIGPIPE, SIG_IGN)
        let signals = SignalEvents()
        let server: AiotaskServer
        do {
            server = try await AiotaskServer.start(configuration: configuration, logger: logger)
        } catch {
            // A socket that cannot be bound says which address and why; anything else is prefixed.
            let message = error is ServerError ? "\(error)" : "cannot start: \(error)"
            var code = EADDRNOTAVAIL
            if let errno = (error as? ServerError)?.listenError?.code {
                code = errno
            }
            logger.critical("\(message)")
            fail(notifier, code, message, exitCode: 1)
        }
        for socket in activated { SocketActivation.restoreBacklog(of: socket, default: SOMAXCONN) }
        logger.info(
            "ready",
            metadata: ["workers": "\(configuration.workers)", "handler": "\(configuration.handler.displayName)"]
        )
        notifier.ready(status: (try? await server.statusLine()) ?? "Ready")

        let statusUpdates = Task { await refreshStatus(of: server, notifier: notifier) }
        let watchdog = Task { await feedWatchdog(for: server, notifier: notifier, logger: logger) }

        signalLoop: for await signalNumber in signals.stream {
            switch signalNumber {
            case SIGHUP:
                await reload(
                    server,
                    current: configuration,
                    started: settings,
                    options: options,
                    resolveHandler: resolveHandler,
                    notifier: notifier,
                    logger: logger
                )
                .map { configuration = $0 }
            #if DEBUG
                case SIGUSR2:
                    logger.warning("SIGUSR2: stalling the event loop (debug builds only)")
                    server.debugStallEventLoop()
            #endif
            default:
                logger.info("received \(signalName(signalNumber)); stopping")
                break signalLoop
            }
        }

        statusUpdates.cancel()
        watchdog.cancel()
        notifier.stopping(status: "Stopping: draining \((try? await server.tasksInFlight()) ?? 0) tasks in flight")
        let drainProgress = Task { await reportDrain(of: server, notifier: notifier) }
        do {
            try await server.shutdown()
        } catch {
            logger.error("shutdown failed: \(error)")
            exit(1)
        }
        drainProgress.cancel()
        reaper?.killAll()
        exit(0)
    }

    /// Re-reads the settings and rolls the server over to them; a bad new configuration is rejected and the
    /// running one kept, and a change to a setting a reload cannot apply (`started` holds the settings read at
    /// start) is logged. Returns the configuration now in force, or nil if it did not change.
    private static func reload(
        _ server: AiotaskServer,
        current: WorkerConfiguration,
        started: DaemonSettings,
        options: DaemonOptions,
        resolveHandler: (DaemonSettings) throws(ConfigurationError) -> ProcessCommand,
        notifier: Notifier,
        logger: Logger
    ) async -> WorkerConfiguration? {
        notifier.reloading(status: "Reloading configuration")
        logger.info("SIGHUP: reloading configuration")
        var next: WorkerConfiguration
        do {
            let settings = try readSettings(options)
            next = try settings.configuration(handler: try resolveHandler(settings))
            for name in started.changesNeedingRestart(to: settings) {
                logger.warning("\(name) cannot change on reload; restart the service to apply it")
            }
        } catch {
            logger.error("reload rejected, keeping the running configuration: \(error)")
            notifier.ready(status: "Reload rejected: \(error); \((try? await server.statusLine()) ?? "")")
            return nil
        }
        next.listenAddresses = current.listenAddresses
        next.adoptedSockets = current.adoptedSockets
        do {
            try await server.reload(next)
        } catch {
            logger.error("reload failed: \(error)")
            notifier.ready(status: "Reload failed: \(error)")
            return nil
        }
        logger.info(
            "configuration reloaded",
            metadata: ["workers": "\(next.workers)", "handler": "\(next.handler.displayName)"]
        )
        notifier.ready(status: (try? await server.statusLine()) ?? "Ready")
        return next
    }

    /// Raises the soft limit on open files to the hard limit, so that `max-connections` clients can be served,
    /// and warns when even that is too low for it.
    private static func raiseOpenFileLimit(for configuration: WorkerConfiguration, logger: Logger) {
        do {
            let (before, after) = try OpenFileLimit.raiseSoftLimitToHard()
            if after != before { logger.info("raised the open-file limit (RLIMIT_NOFILE) from \(before) to \(after)") }
        } catch {
            logger.warning("\(error)")
        }
        guard let soft = OpenFileLimit.current?.soft else { return }
        let needed = UInt64(configuration.maximumConnections) + UInt64(OpenFileLimit.reserved)
        if soft < needed {
            logger.warning(
                "the open-file limit \(soft) is below max-connections (\(configuration.maximumConnections)) plus \(OpenFileLimit.reserved): connections past about \(soft - min(soft, UInt64(OpenFileLimit.reserved))) may fail to be accepted; raise LimitNOFILE= or lower max-connections"
            )
        }
    }

    /// Refreshes `STATUS=` every two seconds.
    private static func refreshStatus(of server: AiotaskServer, notifier: Notifier) async {
        guard notifier.isEnabled else { return }
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(2))
            if let line = try? await server.statusLine() { notifier.status(line) }
        }
    }

    /// Sends `WATCHDOG=1` at half the interval systemd asked for, but only while the event loop answers and
    /// the pool keeps a process alive: a stuck loop or a dead pool stops the pings and systemd restarts us.
    private static func feedWatchdog(for server: AiotaskServer, notifier: Notifier, logger: Logger) async {
        guard let interval = Notifier.watchdogInterval() else { return }
        logger.info("watchdog enabled: pinging every \(interval / 2)")
        while !Task.isCancelled {
            if await server.isHealthy(within: interval / 4) {
                notifier.watchdog()
            } else {
                logger.error(
                    "unhealthy: the event loop is stuck or no worker process stays alive; not pinging the watchdog"
                )
            }
            try? await Task.sleep(for: interval / 2)
        }
    }

    /// While draining, asks systemd for more time every few seconds and says how much is left.
    private static func reportDrain(of server: AiotaskServer, notifier: Notifier) async {
        guard notifier.isEnabled else { return }
        while !Task.isCancelled {
            let left = (try? await server.tasksInFlight()) ?? 0
            notifier.extendTimeout(by: .seconds(15), status: "Stopping: draining \(left) tasks in flight")
            try? await Task.sleep(for: .seconds(5))
        }
    }

    /// Reports a fatal start-up error to systemd (`ERRNO=`, `STATUS=`) and stderr, then exits.
    private static func fail(_ notifier: Notifier, _ code: Int32, _ message: String, exitCode: Int32) -> Never {
        notifier.failed(errno: code, status: "Failed: \(message)")
        StandardError.writeLine("aiotaskd: \(message)")
        exit(exitCode)
    }
}

/// The command line of a program built on ``Daemon/main(handler:)``: the daemon's options, plus `--help`, `-h` and
/// `--version` named after the program.
struct WorkerProgramCommand: ParsableCommand {
    /// The name the program was started by, for its help text and its pool's display name.
    static var programName: String { URL(fileURLWithPath: CommandLine.arguments[0]).lastPathComponent }

    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: programName,
            abstract: "An aiotask worker: runs submitted tasks with this program's own handler, in a supervised pool.",
            discussion: "Without --listen the worker listens on unix:\(ServerAddress.defaultUnixPath).",
            version: AiotaskVersion.current
        )
    }

    @OptionGroup var options: DaemonOptions

    /// The parsed options; on `--help`, `-h` or `--version` prints the text and exits 0, on a usage error
    /// prints it and exits 64.
    static func parseOptionsOrExit() -> DaemonOptions {
        do {
            var command = try parseAsRoot()
            // `--help` and `-h` parse to ArgumentParser's own help command, not to this one.
            guard let parsed = command as? Self else {
                try command.run()
                Foundation.exit(0)
            }
            return parsed.options
        } catch {
            exit(withError: error)
        }
    }
}

/// Delivers the signals the daemon acts on as an async stream instead of their default actions.
final class SignalEvents {
    private let sources: [any DispatchSourceSignal]
    let stream: AsyncStream<Int32>

    init() {
        let (stream, continuation) = AsyncStream.makeStream(of: Int32.self)
        self.stream = stream
        var signals = [SIGTERM, SIGINT, SIGHUP]
        #if DEBUG
            signals.append(SIGUSR2)
        #endif
        sources = signals.map { signalNumber in
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
            source.setEventHandler { continuation.yield(signalNumber) }
            source.resume()
            return source
        }
    }
}
