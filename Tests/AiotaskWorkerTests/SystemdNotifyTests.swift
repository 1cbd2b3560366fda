import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// What aiotaskd tells the service manager through `NOTIFY_SOCKET`, and when.
@Suite(
    "sd_notify lifecycle and watchdog",
    .enabled(if: systemdSocketActivateIsInstalled, "no \(systemdSocketActivate) (package systemd)"),
    .timeLimit(.minutes(1))
)
struct SystemdNotifyTests {
    /// The states a service reports, in the order they were sent.
    private static func states(in messages: [NotifyMessage]) -> [String] {
        messages.compactMap { message in
            ["READY", "RELOADING", "STOPPING"].first { message[$0] == "1" }
        }
    }

    @Test("READY=1 once the socket is adopted and the pool is up; STATUS refreshes; HUP reloads; TERM stops; exit 0")
    func lifecycleInOrder() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socketPath = directory + "/aiotask.sock"
        let daemon = try SocketActivatedDaemon.start(
            listen: socketPath,
            fdname: "aiotask",
            ["--handler", "echo", "--workers", "2"]
        )
        defer { daemon.cleanUp() }
        let notifications = daemon.notifications
        try await daemon.waitUntilListening()

        async let connected: Void = SystemdTestKit.connectOnce(to: .unix(path: socketPath))
        let ready = try await notifications.next("READY")
        // Checked the moment READY=1 arrives: the event loop already watches the passed socket, and the whole pool
        // is running.
        #expect(SystemdTestKit.epollWatches(pid: daemon.pid, descriptor: 3), "READY=1 before the socket was adopted")
        #expect(SystemdTestKit.children(of: daemon.pid).count == 2, "READY=1 before the pool was up")
        #expect(ready.index == 0, "notified before READY=1: \(notifications.messages)")
        #expect(ready.message["STATUS"]?.hasPrefix("Workers: 0 busy, 2 idle of 2;") == true, "\(ready.message)")
        try await connected

        // A STATUS-only refresh follows on its own.
        let refresh = try await notifications.next(after: ready.index + 1, limit: .seconds(10)) {
            $0.assignments.keys.sorted() == ["STATUS"] && $0["STATUS"]!.hasPrefix("Workers: ")
        }

        daemon.process.signal(SIGHUP)
        let reloading = try await notifications.next("RELOADING", after: refresh.index + 1)
        // Foundation reads CLOCK_MONOTONIC here, the clock systemd wants MONOTONIC_USEC in.
        let nowMicroseconds = UInt64(ProcessInfo.processInfo.systemUptime * 1_000_000)
        let stamp = try #require(reloading.message["MONOTONIC_USEC"].flatMap(UInt64.init), "\(reloading.message)")
        #expect(
            stamp <= nowMicroseconds && nowMicroseconds - stamp < 10_000_000,
            "MONOTONIC_USEC=\(stamp), now \(nowMicroseconds)"
        )
        let reloaded = try await notifications.next("READY", after: reloading.index + 1)
        #expect(reloaded.message["STATUS"]?.hasPrefix("Workers: ") == true, "\(reloaded.message)")

        daemon.process.signal(SIGTERM)
        let stopping = try await notifications.next("STOPPING", after: reloaded.index + 1)
        #expect(stopping.message["STATUS"]?.hasPrefix("Stopping") == true, "\(stopping.message)")
        #expect(try await daemon.process.wait() == .exited(0))

        #expect(Self.states(in: notifications.messages) == ["READY", "RELOADING", "READY", "STOPPING"])
    }

    @Test("WATCHDOG=1 pings at half WATCHDOG_USEC while healthy, and stop when the event loop is stuck")
    func watchdogStopsWhenTheLoopStalls() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socketPath = directory + "/aiotask.sock"
        // WATCHDOG_PID stays unset: systemd-socket-activate execs in place, so only the daemon reads WATCHDOG_USEC.
        let interval = Duration.milliseconds(400)
        let daemon = try SocketActivatedDaemon.start(
            listen: socketPath,
            environment: ["WATCHDOG_USEC": "400000"],
            ["--handler", "echo", "--workers", "1"]
        )
        defer { daemon.cleanUp() }
        let notifications = daemon.notifications
        try await daemon.waitUntilListening()
        try await SystemdTestKit.connectOnce(to: .unix(path: socketPath))

        let ready = try await notifications.next("READY")
        let first = try await notifications.next("WATCHDOG", after: ready.index + 1, limit: .seconds(10))
        var ping = first
        for _ in 0..<2 { ping = try await notifications.next("WATCHDOG", after: ping.index + 1, limit: .seconds(10)) }
        // Three pings span two half-intervals: the daemon paces them, it does not flood. (Arrival times are stamped by
        // the listening thread, which may be late for any one of them: half of the span is the bound.)
        #expect(ping.message.arrival - first.message.arrival >= interval / 2)

        daemon.process.signal(SIGUSR2)
        try await daemon.process.waitForStandardError(
            containing: "SIGUSR2: stalling the event loop",
            limit: .seconds(10)
        )
        // The first health check after the stall reports it; by then a ping of any earlier check has been sent.
        // (Not fatal here: a daemon that keeps pinging fails the check below, with the pings as evidence.)
        try? await daemon.process.waitForStandardError(containing: "not pinging the watchdog", limit: .seconds(3))
        let stalled = ContinuousClock.now
        // The one wait for an absence: one interval of grace for datagrams in transit, then three intervals.
        try await Task.sleep(until: stalled + interval * 4)
        let late = notifications.messages.filter { $0["WATCHDOG"] == "1" && $0.arrival > stalled + interval }
        #expect(late.isEmpty, "pinged while the event loop was stuck: \(late.count) pings")
        #expect(daemon.process.standardError.contains("not pinging the watchdog"))
    }

    @Test("WATCHDOG=1 stops when no pool process stays alive")
    func watchdogStopsWhenThePoolCrashLoops() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socketPath = directory + "/aiotask.sock"
        let interval = Duration.milliseconds(400)
        // A handler program that exits at once: every process the pool starts dies young.
        let daemon = try SocketActivatedDaemon.start(
            listen: socketPath,
            environment: ["WATCHDOG_USEC": "400000"],
            ["--handler", "exec:/bin/false", "--workers", "1"]
        )
        defer { daemon.cleanUp() }
        let notifications = daemon.notifications
        try await daemon.waitUntilListening()
        try await SystemdTestKit.connectOnce(to: .unix(path: socketPath))

        _ = try await notifications.next("READY")
        // The third crash in a row (restarted after 0.1 s, then 0.2 s) makes the slot crash-looping for good; before
        // it, a process just restarted still counts as alive. Every health check from then on fails.
        try await daemon.process.waitForStandardError(
            containing: "restarting pool process after 0.2 seconds",
            limit: .seconds(10)
        )
        try await daemon.process.waitForStandardError(containing: "not pinging the watchdog", limit: .seconds(10))
        let unhealthy = ContinuousClock.now
        // The one wait for an absence: one interval of grace for datagrams in transit, then three intervals.
        try await Task.sleep(until: unhealthy + interval * 4)
        let late = notifications.messages.filter { $0["WATCHDOG"] == "1" && $0.arrival > unhealthy + interval }
        #expect(late.isEmpty, "pinged while every process kept dying: \(late.count) pings")
    }
}
