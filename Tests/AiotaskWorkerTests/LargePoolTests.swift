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

/// A pool of hundreds of processes against the real `aiotaskd`: the daemon notices their exits without a thread
/// per process (``ChildProcess/watchExit(reaping:_:)`` in the daemon), so its thread count does not grow with the
/// pool.
@Suite("A large pool")
struct LargePoolTests {
    static let workers = 256
    /// Pool processes the storm kills, each once.
    static let kills = 48
    /// Tasks of the storm, on ``connections`` connections of ``inFlight`` tasks each.
    static let tasks = 2_400
    static let connections = 4
    static let inFlight = 64
    /// A pool process is killed after every this many answers.
    static let answersPerKill = tasks / (kills + 2)

    /// Most threads the daemon may have: its event loops and Swift's concurrency pool (a thread per core each),
    /// plus a fixed handful (main, dispatch, the orphan reaper's queue) — never one per pool process.
    static var threadLimit: Int { 32 + 2 * ProcessInfo.processInfo.activeProcessorCount }

    @Test(
        "a pool of 256 processes starts, survives a kill storm with every task answered once, and stops cleanly, and the daemon has no thread per process"
    )
    func killStorm() async throws {
        let daemon = try await RunningDaemon.start(
            arguments: ["--handler", "echo", "--workers", "\(Self.workers)"]
        )
        let daemonPID = daemon.process.pid
        let killed = KillLog()
        try await daemon.stopAfter {
            try await withTimeout(.seconds(60)) {
                let address = ServerAddress.unix(path: daemon.socket)
                let observer = try await AiotaskClient.connect(to: address)
                let baseline = try await observer.waitForInfo { $0.workers.alive == Self.workers }
                let pool = childProcesses(of: daemonPID)
                #expect(pool.count == Self.workers, "children: \(pool.count)")
                killed.note(threads: Self.threadCount(daemonPID))
                #expect(
                    killed.peakThreads < Self.threadLimit,
                    "the daemon has \(killed.peakThreads) threads for \(Self.workers) pool processes"
                )

                // The storm: tasks on several connections at once, and a pool process killed every few answers.
                let onAnswer: @Sendable () -> Void = {
                    guard let victim = killed.next(everyAnswers: Self.answersPerKill, of: pool, limit: Self.kills)
                    else { return }
                    kill(victim, SIGKILL)
                    killed.note(threads: Self.threadCount(daemonPID))
                }
                var outcomes: [Outcome] = []
                try await withThrowingTaskGroup(of: [Outcome].self) { group in
                    for connection in 0..<Self.connections {
                        group.addTask {
                            try await Self.run(
                                Self.tasks / Self.connections,
                                named: "c\(connection)-",
                                on: address,
                                onAnswer: onAnswer
                            )
                        }
                    }
                    for try await results in group { outcomes += results }
                }
                #expect(killed.pids.count == Self.kills)

                // Every task has its answer: its echo, or a crash of the process that was running it.
                #expect(outcomes.count == Self.tasks)
                let wrong = outcomes.filter { !$0.isAccepted(killed: Set(killed.pids)) }
                #expect(wrong.isEmpty, "answers that do not fit: \(wrong.prefix(5))")

                // The daemon answered each task once, replaced each killed process once, and is left with its full
                // pool and no zombie.
                let info = try await observer.waitForInfo {
                    $0.workers.alive == Self.workers && $0.workers.busy == 0 && $0.queue.length == 0
                        && $0.tasks.submitted - baseline.tasks.submitted == Self.tasks
                        && $0.tasks.succeeded + $0.tasks.failed == $0.tasks.submitted
                        && $0.workers.restarts - baseline.workers.restarts == Self.kills
                }
                let succeeded = outcomes.filter(\.isSuccess).count
                #expect(info.tasks.succeeded - baseline.tasks.succeeded == succeeded)
                #expect(info.tasks.failed - baseline.tasks.failed == Self.tasks - succeeded)
                let children = childProcesses(of: daemonPID).compactMap(ProcessTable.entry)
                #expect(children.count == Self.workers)
                #expect(children.allSatisfy { !$0.isZombie }, "zombies: \(children.filter(\.isZombie))")
                killed.note(threads: Self.threadCount(daemonPID))
                #expect(
                    killed.peakThreads < Self.threadLimit,
                    "the daemon had up to \(killed.peakThreads) threads for \(Self.workers) pool processes"
                )
                print(
                    "large pool: \(Self.workers) processes, \(Self.kills) killed, \(Self.tasks) tasks "
                        + "(\(Self.tasks - succeeded) failed), daemon threads at most \(killed.peakThreads)"
                )
                killed.remember(children.map(\.pid))
                try await observer.close()
            }
        }
        // Stopped cleanly (exit 0, checked by stopAfter), and no pool process outlives the daemon.
        let survivors = killed.pool.compactMap(ProcessTable.entry).filter { !$0.isZombie }
        #expect(survivors.isEmpty, "pool processes left after the daemon stopped: \(survivors)")
    }

    /// The daemon's threads, from `/proc/PID/task`.
    static func threadCount(_ pid: pid_t) -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []).count
    }

    /// Runs `count` echo tasks on one connection, ``inFlight`` at a time; `onAnswer` is called after each answer.
    private static func run(
        _ count: Int,
        named prefix: String,
        on address: ServerAddress,
        onAnswer: @escaping @Sendable () -> Void
    ) async throws -> [Outcome] {
        let client = try await AiotaskClient.connect(to: address)
        var outcomes: [Outcome] = []
        try await withThrowingTaskGroup(of: Outcome.self) { group in
            var next = 0
            func submitNext() {
                let payload = "\(prefix)\(next)"
                next += 1
                group.addTask {
                    defer { onAnswer() }
                    do {
                        let result = try await client.submit(ByteBuffer(string: payload))
                        return .result(sent: payload, received: String(buffer: result))
                    } catch let failure as TaskFailure {
                        return .failure(sent: payload, failure.reason, failure.message)
                    }
                }
            }
            while next < min(count, inFlight) { submitNext() }
            for try await outcome in group {
                outcomes.append(outcome)
                if next < count { submitNext() }
            }
        }
        try await client.close()
        return outcomes
    }

    /// How one task of the storm ended.
    enum Outcome: CustomStringConvertible {
        case result(sent: String, received: String)
        case failure(sent: String, FailureReason, String)

        var isSuccess: Bool {
            if case .result = self { return true }
            return false
        }

        /// Its echo, or a crash of a process the storm killed.
        func isAccepted(killed: Set<pid_t>) -> Bool {
            switch self {
            case .result(let sent, let received):
                return sent == received
            case .failure(_, let reason, let message):
                return reason == .workerCrashed && message.contains("SIGKILL")
                    && CrashTests.pid(in: message).map(killed.contains) == true
            }
        }

        var description: String {
            switch self {
            case .result(let sent, let received): "\(sent) answered \(received)"
            case .failure(let sent, let reason, let message): "\(sent) failed: \(reason) \(message)"
            }
        }
    }

    /// The pool processes the storm killed, the daemon's peak thread count, and the pool left at the end.
    final class KillLog: Sendable {
        private struct State {
            var answers = 0
            var pids: [pid_t] = []
            var peakThreads = 0
            var pool: [pid_t] = []
        }

        private let state = NIOLockedValueBox(State())

        var pids: [pid_t] { state.withLockedValue { $0.pids } }
        var peakThreads: Int { state.withLockedValue { $0.peakThreads } }
        var pool: [pid_t] { state.withLockedValue { $0.pool } }

        /// Counts an answer; every `answers` answers, the next process of `pool` to kill (until `limit` are).
        func next(everyAnswers answers: Int, of pool: [pid_t], limit: Int) -> pid_t? {
            state.withLockedValue { state in
                state.answers += 1
                guard state.answers % answers == 0, state.pids.count < limit else { return nil }
                // Spread over the pool rather than its first processes.
                let victim = pool[(state.pids.count * 5) % pool.count]
                state.pids.append(victim)
                return victim
            }
        }

        func note(threads: Int) {
            state.withLockedValue { $0.peakThreads = max($0.peakThreads, threads) }
        }

        func remember(_ pool: [pid_t]) {
            state.withLockedValue { $0.pool = pool }
        }
    }
}
