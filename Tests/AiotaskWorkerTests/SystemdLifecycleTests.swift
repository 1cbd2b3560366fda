import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// SIGTERM drains and SIGHUP reloads of a socket-activated aiotaskd, seen from a client.
@Suite(
    "Drain on SIGTERM and reload on SIGHUP",
    .enabled(if: systemdSocketActivateIsInstalled, "no \(systemdSocketActivate) (package systemd)"),
    .timeLimit(.minutes(1))
)
struct SystemdLifecycleTests {
    /// Waits until the server reports `handle`'s task as running.
    private static func waitUntilRunning(_ handle: TaskHandle) async throws {
        try await withTimeout(.seconds(20)) {
            // The protocol has no "started" event: ask until the status says so.
            while try await handle.status() != .processing { try await Task.sleep(for: .milliseconds(10)) }
        }
    }

    @Test("SIGTERM: STOPPING=1, the running and the queued tasks finish with their results, then exit 0")
    func sigtermDrainsTasksInFlight() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socketPath = directory + "/aiotask.sock"
        let daemon = try SocketActivatedDaemon.start(
            listen: socketPath,
            ["--handler", "chaos", "--workers", "1", "--drain-timeout", "20"]
        )
        defer { daemon.cleanUp() }
        try await daemon.waitUntilListening()

        try await withTimeout(.seconds(60)) {
            let client = try await SystemdTestKit.connect(to: .unix(path: socketPath))
            var handles: [TaskHandle] = []
            for _ in 0..<3 { handles.append(try await client.enqueue(ByteBuffer(string: "sleep 3000"))) }
            try await Self.waitUntilRunning(handles[0])
            #expect(try await handles[2].status() == .inQueue)

            daemon.process.signal(SIGTERM)
            let stopping = try await daemon.notifications.next("STOPPING")
            #expect(stopping.message["STATUS"] == "Stopping: draining 3 tasks in flight")
            let extended = try await daemon.notifications.next(after: stopping.index + 1) {
                $0["EXTEND_TIMEOUT_USEC"] != nil
            }
            #expect(Int(extended.message["EXTEND_TIMEOUT_USEC"] ?? "").map { $0 > 0 } == true)

            for handle in handles { #expect(String(buffer: try await handle.result()) == "slept 3000") }
            #expect(try await daemon.process.wait() == .exited(0))
        }
    }

    @Test("SIGTERM with a short --drain-timeout: the running task fails as interrupted, the queued one as shuttingDown")
    func drainDeadlineFailsTheRest() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socketPath = directory + "/aiotask.sock"
        let daemon = try SocketActivatedDaemon.start(
            listen: socketPath,
            ["--handler", "chaos", "--workers", "1", "--drain-timeout", "0.5", "--kill-grace", "0.5"]
        )
        defer { daemon.cleanUp() }
        try await daemon.waitUntilListening()

        try await withTimeout(.seconds(50)) {
            let client = try await SystemdTestKit.connect(to: .unix(path: socketPath))
            let running = try await client.enqueue(ByteBuffer(string: "sleep 30000"))
            let queued = try await client.enqueue(ByteBuffer(string: "sleep 30000"))
            try await Self.waitUntilRunning(running)

            daemon.process.signal(SIGTERM)
            for (handle, reason) in [(running, FailureReason.interrupted), (queued, .shuttingDown)] {
                let failure = await #expect(throws: TaskFailure.self) { try await handle.result() }
                #expect(failure?.reason == reason, "\(String(describing: failure))")
            }
            #expect(try await daemon.process.wait() == .exited(0))
        }
        try await daemon.notifications.next("STOPPING")
    }

    @Test(
        "signals while draining change nothing: a second SIGTERM, a SIGINT and a SIGHUP neither cut the drain nor reload; the task finishes, exit 0"
    )
    func signalsWhileDraining() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socketPath = directory + "/aiotask.sock"
        let daemon = try SocketActivatedDaemon.start(
            listen: socketPath,
            ["--handler", "chaos", "--workers", "1", "--drain-timeout", "20"]
        )
        defer { daemon.cleanUp() }
        try await daemon.waitUntilListening()

        try await withTimeout(.seconds(50)) {
            let client = try await SystemdTestKit.connect(to: .unix(path: socketPath))
            let running = try await client.enqueue(ByteBuffer(string: "sleep 2000"))
            try await Self.waitUntilRunning(running)

            daemon.process.signal(SIGTERM)
            let stopping = try await daemon.notifications.next("STOPPING")
            for signal in [SIGTERM, SIGINT, SIGHUP] { daemon.process.signal(signal) }
            #expect(String(buffer: try await running.result()) == "slept 2000")
            #expect(try await daemon.process.wait() == .exited(0))
            let after = daemon.notifications.messages.dropFirst(stopping.index + 1)
            #expect(!after.contains { $0["RELOADING"] != nil || $0["READY"] != nil }, "\(after)")
            let stops = daemon.process.standardError.components(separatedBy: "; stopping").count - 1
            #expect(stops == 1, "stderr: \(daemon.process.standardError)")
        }
    }

    @Test("SIGHUP twice under load, resizing the pool from the config file: every task gets its result")
    func reloadsLoseNoTask() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socketPath = directory + "/aiotask.sock"
        let configPath = directory + "/aiotaskd.conf"
        @Sendable func writeConfig(_ text: String) throws {
            // Replaced in one step, so a reload never reads half a file.
            try text.write(toFile: configPath + ".new", atomically: false, encoding: .utf8)
            guard rename(configPath + ".new", configPath) == 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        }
        try writeConfig("handler = chaos\nworkers = 2\n")
        let daemon = try SocketActivatedDaemon.start(listen: socketPath, ["--config", configPath])
        defer { daemon.cleanUp() }
        let notifications = daemon.notifications
        try await daemon.waitUntilListening()

        try await withTimeout(.seconds(50)) {
            let client = try await SystemdTestKit.connect(to: .unix(path: socketPath))
            let ready = try await notifications.next("READY")
            #expect(ready.message["STATUS"]?.contains("idle of 2;") == true, "\(ready.message)")

            let load = TaskLoad()
            // Whatever happens, the lanes end: a failed wait must not leave them submitting forever.
            defer { load.stop() }
            let lanes = Task {
                await withTaskGroup(of: Void.self) { group in
                    for lane in 0..<200 {
                        group.addTask { await load.run(lane: lane, client: client) }
                    }
                }
            }

            try await load.waitForCompleted(atLeast: 100)
            daemon.process.signal(SIGHUP)
            let firstReload = try await notifications.next("RELOADING", after: ready.index + 1)
            let firstReady = try await notifications.next("READY", after: firstReload.index + 1)
            try await load.waitForCompleted(atLeast: load.completed + 100)

            try writeConfig("handler = chaos\nworkers = 3\n")
            daemon.process.signal(SIGHUP)
            let secondReload = try await notifications.next("RELOADING", after: firstReady.index + 1)
            let secondReady = try await notifications.next("READY", after: secondReload.index + 1)
            #expect(secondReady.message["STATUS"]?.contains("of 3;") == true, "\(secondReady.message)")
            try await load.waitForCompleted(atLeast: load.completed + 100)

            load.stop()
            await lanes.value
            #expect(load.failures.isEmpty, "\(load.failures.count) tasks failed, first: \(load.failures.prefix(3))")
            #expect(load.completed >= 300)

            let info = try await client.serverInfo()
            #expect(info.workers.configured == 3)
            #expect(info.tasks.failed == 0)

            // A config the daemon cannot use is rejected; the running one keeps serving.
            try writeConfig("handler = chaos\nworkers = 3\nno-such-setting = 1\n")
            daemon.process.signal(SIGHUP)
            let badReload = try await notifications.next("RELOADING", after: secondReady.index + 1)
            let rejected = try await notifications.next("READY", after: badReload.index + 1)
            #expect(rejected.message["STATUS"]?.hasPrefix("Reload rejected") == true, "\(rejected.message)")
            #expect(rejected.message["STATUS"]?.contains("no-such-setting") == true, "\(rejected.message)")
            #expect(try await client.submit("echo still serving") == Array("still serving".utf8))
            #expect(try await client.serverInfo().workers.configured == 3)
            try await daemon.process.waitForStandardError(containing: "reload rejected")
            try await client.close()
        }
        #expect(try await daemon.stop() == .exited(0))
    }
}

/// Many lanes, each submitting one task after another until stopped, counting results and keeping failures.
private final class TaskLoad: Sendable {
    private struct State {
        var completed = 0
        var failures: [String] = []
        var isStopped = false
        var waiters: [(count: Int, continuation: CheckedContinuation<Void, Never>)] = []
    }

    private let state = NIOLockedValueBox(State())

    var completed: Int { state.withLockedValue { $0.completed } }
    var failures: [String] { state.withLockedValue { $0.failures } }

    /// Ends every lane after its current task, and releases whoever still waits for a count.
    func stop() {
        let waiters = state.withLockedValue { state in
            state.isStopped = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.continuation.resume() }
    }

    func run(lane: Int, client: AiotaskClient) async {
        var round = 0
        while !state.withLockedValue({ $0.isStopped }) {
            let (task, expected) =
                round % 2 == 0
                ? ("sleep 20", "slept 20") : ("echo lane \(lane) round \(round)", "lane \(lane) round \(round)")
            round += 1
            do {
                let result = try await client.submit(task)
                if result == Array(expected.utf8) {
                    record(nil)
                } else {
                    record("\(task): unexpected result \(String(decoding: result, as: UTF8.self))")
                }
            } catch {
                record("\(task): \(error)")
            }
        }
    }

    private func record(_ failure: String?) {
        let ready = state.withLockedValue { state -> [CheckedContinuation<Void, Never>] in
            if let failure {
                state.failures.append(failure)
                return []
            }
            state.completed += 1
            let count = state.completed
            var ready: [CheckedContinuation<Void, Never>] = []
            state.waiters.removeAll { waiter in
                guard count >= waiter.count else { return false }
                ready.append(waiter.continuation)
                return true
            }
            return ready
        }
        for continuation in ready { continuation.resume() }
    }

    /// Waits until `count` tasks have returned their results.
    func waitForCompleted(atLeast count: Int, limit: Duration = .seconds(20)) async throws {
        try await withTimeout(limit) { [self] in
            await withCheckedContinuation { continuation in
                let done = state.withLockedValue { state in
                    if state.completed >= count { return true }
                    state.waiters.append((count, continuation))
                    return false
                }
                if done { continuation.resume() }
            }
        }
    }
}
