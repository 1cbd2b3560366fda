import AiotaskProtocol
import AiotaskTransport
import ArgumentParser
import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Systemd
import UnixSignals

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Runs a complete worker daemon: settings, logging, sockets (its own or systemd's), the server, the
/// sd_notify lifecycle with its watchdog, and signals (SIGTERM/SIGINT drain and stop, SIGHUP reloads).
public enum Daemon {
    /// The `FileDescriptorName=` of a socket systemd passes for the metrics listener rather than for tasks.
    public static let metricsSocketName = "metrics"
    /// The `FileDescriptorName=` of a socket systemd passes for tasks over TLS (the packaged `aiotask-tls.socket`).
    public static let tlsSocketName = "tls"

    /// The config file's settings (if `--config` names one) overridden by the command line's.
    public static func readSettings(_ options: DaemonOptions) throws(ConfigurationError) -> DaemonSettings {
        try readSettings(config: options.config, commandLine: options.settings)
    }

    /// The settings of the file at `config`, if any, overridden by `commandLine`'s.
    private static func readSettings(
        config path: String?,
        commandLine: DaemonSettings
    ) throws(ConfigurationError) -> DaemonSettings {
        guard let path else { return commandLine }
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigurationError(setting: "config", reason: "cannot read \(path): \(error.localizedDescription)")
        }
        return try ConfigFile.parse(text, path: path).overridden(by: commandLine)
    }

    /// Runs the worker until SIGTERM or SIGINT, then drains; returns the exit status for the process: 0 after a
    /// clean stop, 78 for an invalid configuration or passed sockets, 1 when the server cannot start or stop.
    ///
    /// The server and the service manager's side (`DaemonLifecycle`) run as two services of one `ServiceGroup`,
    /// which drains on SIGTERM and SIGINT; SIGHUP reloads.
    ///
    /// - Parameters:
    ///   - options: the command line, which overrides the file its `--config` names, if any (``readSettings(_:)``).
    ///   - resolveHandler: turns the settings' `handler` into the command the pool runs; called again on every
    ///     reload.
    public static func run(
        options: DaemonOptions,
        resolveHandler: @escaping @Sendable (DaemonSettings) throws(ConfigurationError) -> ProcessCommand
    ) async -> Int32 {
        MemoryTuning.keepLargeBuffersInHeap()
        let notifier = Notifier()
        let settings: DaemonSettings
        var configuration: ServerConfiguration
        do {
            settings = try readSettings(options)
            configuration = try settings.configuration(handler: try resolveHandler(settings))
        } catch {
            return fail(notifier, EINVAL, "invalid configuration: \(error)", exitCode: 78)
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
            return fail(notifier, EBADF, error.description, exitCode: 78)
        }
        // A socket named `metrics` (`FileDescriptorName=metrics`) is the metrics listener's; the others take tasks,
        // over TLS for one named `tls`.
        let (metricsSockets, taskSockets) = (
            activated.filter { $0.name == Self.metricsSocketName },
            activated.filter { $0.name != Self.metricsSocketName }
        )
        configuration.adoptedSockets = taskSockets.map {
            AdoptedSocket(descriptor: $0.descriptor, name: $0.name, usesTLS: $0.name == Self.tlsSocketName)
        }
        configuration.metricsAdoptedSockets = metricsSockets.map {
            AdoptedSocket(descriptor: $0.descriptor, name: $0.name)
        }
        if configuration.listenAddresses.isEmpty && taskSockets.isEmpty {
            configuration.listenAddresses = [.unix(path: ServerAddress.defaultUnixPath)]
        }

        signal(SIGPIPE, SIG_IGN)
        // As before the signal sources: ignored rather than left to their default action (ending the process), so
        // that one arriving while no source is registered does nothing.
        for trapped in DaemonLifecycle.trappedSignals { signal(trapped.rawValue, SIG_IGN) }
        // Trapped before the server starts, so that a SIGTERM while the pool starts stops the daemon once it is up.
        let signals = await UnixSignalsSequence(trapping: DaemonLifecycle.trappedSignals)
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
            return fail(notifier, code, message, exitCode: 1)
        }
        for socket in activated { SocketActivation.restoreBacklog(of: socket, default: SOMAXCONN) }
        logger.info(
            "ready",
            metadata: ["workers": "\(configuration.workers)", "handler": "\(configuration.handler.displayName)"]
        )
        notifier.ready(status: (try? await server.statusLine()) ?? "Ready")

        // What a reload reads again: the command line itself is not `Sendable`.
        let (configPath, commandLine) = (options.config, options.settings)
        let lifecycle = DaemonLifecycle(
            server: server,
            signals: signals,
            notifier: notifier,
            logger: logger,
            reload: { current in
                await reload(
                    server,
                    current: current,
                    started: settings,
                    configPath: configPath,
                    commandLine: commandLine,
                    resolveHandler: resolveHandler,
                    notifier: notifier,
                    logger: logger
                )
            },
            configuration: configuration
        )
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [
                    .init(service: server),
                    // Its stop is the daemon's: when it has drained the server, the group ends.
                    .init(service: lifecycle, successTerminationBehavior: .gracefullyShutdownGroup),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        var status: Int32 = 0
        do {
            try await group.run()
        } catch {
            logger.error("shutdown failed: \(error)")
            status = 1
        }
        reaper?.killAll()
        return status
    }

    /// Re-reads the settings and rolls the server over to them; a bad new configuration is rejected and the
    /// running one kept, and a change to a setting a reload cannot apply (`started` holds the settings read at
    /// start) is logged. Returns the configuration now in force, or nil if it did not change.
    private static func reload(
        _ server: AiotaskServer,
        current: ServerConfiguration,
        started: DaemonSettings,
        configPath: String?,
        commandLine: DaemonSettings,
        resolveHandler: (DaemonSettings) throws(ConfigurationError) -> ProcessCommand,
        notifier: Notifier,
        logger: Logger
    ) async -> ServerConfiguration? {
        notifier.reloading(status: "Reloading configuration")
        logger.info("SIGHUP: reloading configuration")
        var next: ServerConfiguration
        do {
            let settings = try readSettings(config: configPath, commandLine: commandLine)
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
        next.agentListenAddresses = current.agentListenAddresses
        next.metricsListenAddresses = current.metricsListenAddresses
        next.metricsAdoptedSockets = current.metricsAdoptedSockets
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
    private static func raiseOpenFileLimit(for configuration: ServerConfiguration, logger: Logger) {
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

    /// Reports a fatal start-up error to systemd (`ERRNO=`, `STATUS=`) and stderr; returns `exitCode`.
    private static func fail(_ notifier: Notifier, _ code: Int32, _ message: String, exitCode: Int32) -> Int32 {
        notifier.failed(errno: code, status: "Failed: \(message)")
        StandardError.writeLine("aiotaskd: \(message)")
        return exitCode
    }
}
