import CSystemd

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Sends service state to systemd through `$NOTIFY_SOCKET` (sd_notify); does nothing when not under systemd.
public struct Notifier: Sendable {
    public init() {}

    /// Whether a notification socket is set, i.e. the service manager listens.
    public var isEnabled: Bool { getenv("NOTIFY_SOCKET") != nil }

    /// Sends `KEY=value` assignments, one per line, in one datagram.
    public func send(_ assignments: [(String, String)]) {
        guard isEnabled else { return }
        let state = assignments.map { "\($0.0)=\($0.1.replacingNewlines())" }.joined(separator: "\n")
        _ = sd_notify(0, state)
    }

    /// The service is up and serving (`READY=1`), with a status line.
    public func ready(status: String) {
        send([("READY", "1"), ("STATUS", status)])
    }

    /// A new status line for `systemctl status`.
    public func status(_ text: String) {
        send([("STATUS", text)])
    }

    /// The service is reloading its configuration; `READY=1` ends the reload.
    public func reloading(status: String) {
        send([("RELOADING", "1"), ("MONOTONIC_USEC", String(Self.monotonicMicroseconds())), ("STATUS", status)])
    }

    /// The service is stopping.
    public func stopping(status: String) {
        send([("STOPPING", "1"), ("STATUS", status)])
    }

    /// Asks for more time to start, reload or stop than the unit's timeout allows.
    public func extendTimeout(by duration: Duration, status: String) {
        send([("EXTEND_TIMEOUT_USEC", String(Self.microseconds(duration))), ("STATUS", status)])
    }

    /// The service is healthy: resets the watchdog timer.
    public func watchdog() {
        send([("WATCHDOG", "1")])
    }

    /// The service failed to start, with the errno-style code and a status line saying why.
    public func failed(errno code: Int32, status: String) {
        send([("ERRNO", String(code)), ("STATUS", status)])
    }

    /// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this process), if any.
    public static func watchdogInterval() -> Duration? {
        var microseconds: UInt64 = 0
        guard sd_watchdog_enabled(0, &microseconds) > 0, microseconds > 0 else { return nil }
        return .microseconds(Int64(clamping: microseconds))
    }

    static func monotonicMicroseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
    }

    static func microseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds * 1_000_000 + attoseconds / 1_000_000_000_000
    }
}

extension String {
    /// Status lines are single lines: newlines would start new assignments.
    fileprivate func replacingNewlines() -> String {
        String(map { $0 == "\n" || $0 == "\r" ? " " : $0 })
    }
}
