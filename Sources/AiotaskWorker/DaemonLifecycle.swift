import Logging
import ServiceLifecycle
import Systemd
import UnixSignals

/// The daemon's side of the service manager, run as a service beside the `AiotaskServer` in the daemon's
/// `ServiceGroup`: `STATUS=` refreshes and watchdog pings while the server serves, SIGHUP reloads, and on SIGTERM or
/// SIGINT the stop: `STOPPING=1`, then the server's drain with `EXTEND_TIMEOUT_USEC=` every few seconds.
///
/// Why it drains the server itself: a group stops its services one at a time, the last first, so this service (last
/// in the group) would otherwise return before the drain it must report on has begun. It then returns, and its
/// `gracefullyShutdownGroup` termination ends the group; the server's own graceful shutdown finds it stopped.
///
/// Why it traps SIGTERM and SIGINT too, beside the group: to log which signal stopped the daemon, and to act on one
/// that came while the server was starting, before the group listened for signals. `signals` is created before the
/// server starts for that reason.
struct DaemonLifecycle: Service {
    /// The signals ``signals`` must trap.
    static var trappedSignals: [UnixSignal] {
        #if DEBUG
            [.sighup, .sigterm, .sigint, .sigusr2]
        #else
            [.sighup, .sigterm, .sigint]
        #endif
    }

    /// How long a graceful shutdown waits for the signal behind it, so that the log can name it.
    static let signalNamingWait = Duration.seconds(1)

    let server: AiotaskServer
    let signals: UnixSignalsSequence
    let notifier: Notifier
    let logger: Logger
    /// Re-reads the settings and rolls the server over to them; returns the configuration now in force, or nil if it
    /// did not change.
    let reload: @Sendable (_ current: ServerConfiguration) async -> ServerConfiguration?
    let configuration: ServerConfiguration

    /// What the service is told, in the order it happened.
    private enum Event: Sendable {
        case signal(UnixSignal)
        /// The group asked for a graceful shutdown ``signalNamingWait`` ago and no stop signal came with it.
        case gracefulShutdownWithoutSignal
    }

    /// How serving ended.
    private enum Outcome {
        /// Stop now; the signal that asked for it, if known.
        case stop(UnixSignal?)
        /// The service was cancelled: the group is going down because another service failed.
        case cancelled
    }

    func run() async throws {
        let (events, input) = AsyncStream.makeStream(of: Event.self)
        let outcome = await withTaskGroup(of: Void.self) { background -> Outcome in
            background.addTask { await refreshStatus() }
            background.addTask { await feedWatchdog() }
            background.addTask { [signals] in
                for await signal in signals { input.yield(.signal(signal)) }
            }
            background.addTask {
                guard (try? await gracefulShutdown()) != nil,
                    (try? await Task.sleep(for: Self.signalNamingWait)) != nil
                else { return }
                input.yield(.gracefulShutdownWithoutSignal)
            }
            let outcome = await handle(events)
            background.cancelAll()
            return outcome
        }
        guard case .stop(let signal) = outcome else { return }
        logger.info(signal.map { "received \(signalName($0.rawValue)); stopping" } ?? "stopping")
        notifier.stopping(status: "Stopping: draining \((try? await server.tasksInFlight()) ?? 0) tasks in flight")
        try await withThrowingTaskGroup(of: Void.self) { drain in
            drain.addTask { await reportDrain() }
            try await server.shutdown()
            drain.cancelAll()
        }
    }

    /// Reloads on SIGHUP, one reload at a time, until a stop is due or the service is cancelled.
    private func handle(_ events: AsyncStream<Event>) async -> Outcome {
        var configuration = configuration
        for await event in events {
            switch event {
            case .signal(.sighup):
                if let next = await reload(configuration) { configuration = next }
            #if DEBUG
                case .signal(.sigusr2):
                    logger.warning("SIGUSR2: stalling the event loop (debug builds only)")
                    server.debugStallEventLoop()
            #endif
            case .signal(let signal):
                return .stop(signal)
            case .gracefulShutdownWithoutSignal:
                return .stop(nil)
            }
        }
        return .cancelled
    }

    /// Refreshes `STATUS=` every two seconds.
    private func refreshStatus() async {
        guard notifier.isEnabled else { return }
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(2))
            if let line = try? await server.statusLine() { notifier.status(line) }
        }
    }

    /// Sends `WATCHDOG=1` at half the interval systemd asked for, but only while the event loop answers and
    /// the pool keeps a process alive: a stuck loop or a dead pool stops the pings and systemd restarts us.
    private func feedWatchdog() async {
        guard let interval = Notifier.watchdogInterval() else { return }
        logger.info("watchdog enabled: pinging every \(interval / 2)")
        while !Task.isCancelled {
            if await server.isHealthy(within: interval / 4) {
                notifier.watchdog()
            } else {
                logger.error(
                    "unhealthy: the event loop is stuck or no pool process stays alive; not pinging the watchdog"
                )
            }
            try? await Task.sleep(for: interval / 2)
        }
    }

    /// While draining, asks systemd for more time every few seconds and says how much is left.
    private func reportDrain() async {
        guard notifier.isEnabled else { return }
        while !Task.isCancelled {
            let left = (try? await server.tasksInFlight()) ?? 0
            notifier.extendTimeout(by: .seconds(15), status: "Stopping: draining \(left) tasks in flight")
            try? await Task.sleep(for: .seconds(5))
        }
    }
}
