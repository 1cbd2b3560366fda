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

/// The real `aiotaskd`, under load from several clients, while its pool processes are killed with SIGKILL every few
/// milliseconds, or while its handler misbehaves in every way the chaos handler knows.
@Suite("Fault injection", .serialized)
struct FaultInjectionTests {
    static let workers = 4
    /// How the failure of a task a dead process may have started ends (``Supervisor/failPossiblyStarted``).
    static let possiblyStarted = " while it may have been running the task"
    static let memoryLimitMiB = 160

    @Test(
        "under load, with pool processes killed by SIGKILL every few ms, only the tasks a killed process had started fail; every task gets exactly one answer, counted; the pool recovers with no zombie or orphan and a bounded daemon RSS"
    )
    func killStorm() async throws {
        try await Self.runLoad(killing: true, memoryFaults: false) { index in
            switch index % 10 {
            // Tasks that run for a while, so that the load lasts long enough for kills to hit running tasks.
            case 3: .nap
            case 7: .fail(index)
            default: .echo(index)
            }
        }
    }

    @Test(
        "under load, handlers that crash, hang, exit, break the framing, flood stderr, leak or hog memory, or leave children behind fail only their own task, with its reason; no orphan, no zombie, bounded daemon RSS"
    )
    func misbehavingHandlers() async throws {
        try await Self.runLoad(killing: false, memoryFaults: true, mix: Fault.init(index:))
    }

    @Test(
        "a drain deadline in the middle of a pipelined storm: every task gets exactly one answer, none runs twice, a task told shuttingDown never ran, a task with its result ran once"
    )
    func drainDeadlineStorm() async throws {
        let token = "storm\(UInt32.random(in: 0...UInt32.max))"
        let daemon = try await RunningDaemon.start(arguments: [
            "--handler", "chaos", "--workers", "2", "--prefetch", "8", "--drain-timeout", "0.05",
        ])
        let count = 12_000
        let tasks = (0..<count).map { (TaskID.random(), "\($0)") }
        let answers: DrainAnswers
        do {
            answers = try await withTimeout(.seconds(60)) {
                let observer = try await AiotaskClient.connect(to: .unix(path: daemon.socket))
                let before = try await observer.serverInfo().tasks.submitted
                return try await RawConnection.with(.unix(path: daemon.socket)) { connection in
                    try await connection.send(.hello(Hello(maximumPayloadLength: 1 << 20)))
                    #expect(try await connection.readFrame()?.type == FrameType.hello.rawValue)
                    var bytes = ByteBuffer()
                    for (id, name) in tasks {
                        try bytes.writeFrame(
                            .submit(id, timeout: nil, payload: ByteBuffer(string: "stderr \(token)-\(name)"))
                        )
                    }
                    try await connection.send(Array(bytes.readableBytesView))
                    // Every task taken (so each is owed an answer), most still queued or sent ahead: stop now.
                    _ = try await observer.waitForInfo { $0.tasks.submitted - before == count }
                    daemon.process.signal(SIGTERM)
                    return try await DrainAnswers(tasks, frames: connection.readUntilClosed())
                }
            }
        } catch {
            daemon.process.killGroup()
            throw error
        }
        #expect(try await daemon.process.wait() == .exited(0))
        try? FileManager.default.removeItem(atPath: daemon.directory)

        // The chaos handler writes each task's text to stderr as it runs it, into the daemon's log.
        var runs: [String] = []
        for line in daemon.process.standardError.split(separator: "\n") {
            var rest = line[...]
            while let found = rest.range(of: "\(token)-") {
                let digits = rest[found.upperBound...].prefix { $0.isNumber }
                runs.append(String(digits))
                rest = rest[found.upperBound...]
            }
        }
        answers.check(runs: runs)
        let reasons = answers.reasons
        print("drain-deadline storm: \(count) tasks, \(runs.count) ran; answers: \(reasons)")
        #expect(reasons[.shuttingDown, default: 0] > 0, "the deadline came after the storm: \(reasons)")
        #expect(reasons[nil, default: 0] > 0, "no task ran before the deadline: \(reasons)")
    }

    /// Tasks of one round: each of three library clients runs `clientTasks`, the raw client `rawTasks`.
    static let clientTasks = 100
    static let rawTasks = 60
    static var roundTasks: Int { 3 * clientTasks + rawTasks }

    /// Starts aiotaskd with the chaos handler, runs two equal rounds of the load of tasks given by `mix` from several
    /// clients at once (killing pool processes meanwhile if `killing`), and checks every guarantee of the fault
    /// suite after each; the daemon's memory must not grow in the second round as a leak would make it.
    ///
    /// - Parameter memoryFaults: whether the load makes pool processes grow; without it, no task may fail for the
    ///   memory limit.
    private static func runLoad(
        killing: Bool,
        memoryFaults: Bool,
        mix: @escaping @Sendable (Int) -> Fault
    ) async throws {
        let marker = (name: "AIOTASK_FAULT_RUN", value: UUID().uuidString)
        let daemon = try await RunningDaemon.start(
            arguments: [
                "--handler", "chaos", "--workers", "\(Self.workers)", "--prefetch", "2",
                "--max-worker-rss", "\(Self.memoryLimitMiB)",
            ],
            environment: [marker.name: marker.value]
        )
        try await daemon.stopAfter {
            try await withTimeout(.seconds(120)) {
                let address = ServerAddress.unix(path: daemon.socket)
                // Warm up, so that the first round starts from a daemon that has served tasks.
                let warmup = try await AiotaskClient.connect(to: address)
                for index in 0..<200 {
                    #expect(try await warmup.submit("echo warm \(index)") == Array("warm \(index)".utf8))
                }
                try await warmup.close()
                var resident: [Int] = []
                for round in 0..<2 {
                    resident.append(
                        try await Self.runLoad(
                            on: daemon,
                            killing: killing,
                            memoryFaults: memoryFaults,
                            mix: mix,
                            firstIndex: round * Self.roundTasks,
                            marker: "\(marker.name)=\(marker.value)"
                        )
                    )
                }
                // A leak grows the daemon by about as much in each round; the second round may take back what the
                // first left in caches and allocator pools, no more (16 MiB: a leak of 32 MiB over the run shows).
                #expect(
                    !residentMemoryIsMeaningful || resident[1] <= resident[0] + 16 * 1024,
                    "daemon RSS grew from \(resident[0]) KiB after the first round to \(resident[1]) KiB after the second"
                )
            }
        }
        // With the daemon gone, nothing it or its handlers started is left.
        let leftovers = try await Self.waitForProcesses(withEnvironment: "\(marker.name)=\(marker.value)") {
            $0.isEmpty
        }
        #expect(leftovers.isEmpty, "processes left after the daemon stopped: \(leftovers)")
    }

    /// One round of the load, with its checks; returns the daemon's resident memory after it, in KiB.
    private static func runLoad(
        on daemon: RunningDaemon,
        killing: Bool,
        memoryFaults: Bool,
        mix: @escaping @Sendable (Int) -> Fault,
        firstIndex: Int,
        marker: String
    ) async throws -> Int {
        let daemonPID = daemon.process.pid
        let address = ServerAddress.unix(path: daemon.socket)
        let observer = try await AiotaskClient.connect(to: address)
        let baseline = try await observer.waitForInfo { $0.workers.alive == Self.workers && $0.workers.busy == 0 }
        let rssBefore = try #require(ProcessTable.residentKiB(daemonPID))

        // The load: three clients of the library and one speaking raw frames, all at once.
        let clientTasks = Self.clientTasks
        let rawTasks = Self.rawTasks
        let killer = Killer(daemon: daemonPID)
        defer { killer.stop() }
        let killerRun = Task { if killing { await killer.run(for: .seconds(60)) } }
        let (settled, settle) = AsyncStream<Void>.makeStream()
        async let raw = Self.runRawClient(
            address: address,
            count: rawTasks,
            firstIndex: firstIndex + 3 * clientTasks,
            mix: mix,
            settled
        )
        var outcomes: [(Fault, Outcome)] = []
        try await withThrowingTaskGroup(of: [(Fault, Outcome)].self) { group in
            for client in 0..<3 {
                group.addTask {
                    try await Self.runClient(
                        address: address,
                        count: clientTasks,
                        firstIndex: firstIndex + client * clientTasks,
                        mix: mix
                    )
                }
            }
            for try await results in group { outcomes += results }
        }
        killer.stop()
        await killerRun.value

        // The pool comes back to full size, with nothing queued or running.
        let info = try await observer.waitForInfo {
            $0.workers.alive == Self.workers && $0.workers.busy == 0 && $0.queue.length == 0
                && $0.tasks.submitted - baseline.tasks.submitted == 3 * clientTasks + rawTasks
                && $0.tasks.succeeded + $0.tasks.failed == $0.tasks.submitted
        }
        settle.finish()
        let rawResult = try await raw
        outcomes += rawResult.outcomes
        #expect(rawResult.duplicates.isEmpty, "tasks answered more than once: \(rawResult.duplicates)")
        #expect(rawResult.strays.isEmpty, "answers to tasks never submitted: \(rawResult.strays)")

        // Every task has one answer that fits what it asked for, and the daemon counted each one once.
        let killed = killer.killed
        #expect(outcomes.count == 3 * clientTasks + rawTasks)
        // Per dead process: the task it was running, and the tasks sent ahead to it that it had claimed (started:
        // their answers died with it, so they may have run).
        var crashedPIDs: [pid_t: (running: Int, claimed: Int)] = [:]
        var killedWhileRunning = 0
        var tally: [String: Int] = [:]
        for (fault, outcome) in outcomes {
            tally[outcome.summary(killed: killed), default: 0] += 1
            if case .failure(.workerCrashed, let message) = outcome {
                let pid = CrashTests.pid(in: message)
                #expect(pid != nil, "a crash that names no process: \(message)")
                if let pid {
                    if message.hasSuffix(Self.possiblyStarted) {
                        crashedPIDs[pid, default: (0, 0)].claimed += 1
                    } else {
                        crashedPIDs[pid, default: (0, 0)].running += 1
                    }
                    if killed.contains(pid) && !fault.crashesByItself { killedWhileRunning += 1 }
                }
            }
            #expect(fault.accepts(outcome, killed: killed, memoryFaults: memoryFaults), "\(fault): \(outcome)")
        }
        // A dying process fails only the task it was running: the tasks sent ahead to it ran elsewhere.
        // A dying process fails only the task it was running and, with it, those sent ahead that it had started (at
        // most --prefetch 2); the tasks sent ahead that it had not claimed ran elsewhere.
        let repeated = crashedPIDs.filter {
            $0.value.running > 1 || $0.value.claimed > 2 || ($0.value.claimed > 0 && $0.value.running != 1)
        }
        let repeatedFailures = outcomes.filter { _, outcome in
            guard case .failure(.workerCrashed, let message) = outcome else { return false }
            return CrashTests.pid(in: message).map { repeated[$0] != nil } ?? false
        }
        #expect(repeated.isEmpty, "processes that failed tasks they had not started: \(repeatedFailures)")
        if killing {
            #expect(killedWhileRunning > 0, "no kill hit a running task; \(killed.count) kills")
        } else {
            // Without kills, every fault shows up with its own reason.
            let faults = outcomes.map(\.0)
            #expect(tally["timed out", default: 0] == faults.filter { $0.timeout != nil }.count)
            #expect(tally["worker crashed (memory limit)", default: 0] >= faults.filter { $0.isHog }.count)
        }

        let succeeded = outcomes.filter(\.1.isSuccess).count
        #expect(info.tasks.submitted - baseline.tasks.submitted == outcomes.count)
        #expect(info.tasks.succeeded - baseline.tasks.succeeded == succeeded)
        #expect(info.tasks.failed - baseline.tasks.failed == outcomes.count - succeeded)

        // No zombie, no orphan: the daemon's only children are its pool processes, and nothing else carries the
        // run's marker.
        let processes = try await Self.waitForProcesses(withEnvironment: marker) { processes in
            processes.count == Self.workers + 1 && processes.allSatisfy { !$0.isZombie }
                && processes.allSatisfy { $0.pid == daemonPID || $0.parent == daemonPID }
        }
        #expect(processes.count == Self.workers + 1, "processes of the run: \(processes)")
        #expect(processes.allSatisfy { !$0.isZombie }, "zombies: \(processes)")
        #expect(processes.allSatisfy { $0.pid == daemonPID || $0.parent == daemonPID }, "orphans: \(processes)")

        // The daemon still serves, and its memory did not grow with the tasks it served.
        #expect(try await observer.submit("echo after") == Array("after".utf8))
        let rssAfter = try #require(ProcessTable.residentKiB(daemonPID))
        try await observer.close()

        let summary = tally.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ")
        print(
            "fault storm: \(outcomes.count) tasks, \(killed.count) kills, \(killedWhileRunning) running tasks killed, "
                + "restarts \(info.workers.restarts - baseline.workers.restarts), daemon RSS \(rssBefore) -> "
                + "\(rssAfter) KiB; \(summary)"
        )
        return rssAfter
    }

    // MARK: Clients

    /// Runs `count` tasks on one connection of the library, 32 at a time.
    private static func runClient(
        address: ServerAddress,
        count: Int,
        firstIndex: Int,
        mix: @escaping @Sendable (Int) -> Fault
    ) async throws -> [(Fault, Outcome)] {
        let client = try await AiotaskClient.connect(to: address)
        let results = try await withThrowingTaskGroup(of: (Fault, Outcome).self) { group in
            var next = firstIndex
            var results: [(Fault, Outcome)] = []
            func add() {
                let index = next
                next += 1
                group.addTask {
                    let fault = mix(index)
                    let handle = try await client.enqueue(ByteBuffer(string: fault.command), timeout: fault.timeout)
                    do {
                        return (fault, .success(String(buffer: try await handle.result())))
                    } catch let failure as TaskFailure {
                        return (fault, .failure(failure.reason, failure.message))
                    }
                }
            }
            for _ in 0..<32 where next < firstIndex + count { add() }
            while let result = try await group.next() {
                results.append(result)
                if next < firstIndex + count { add() }
            }
            return results
        }
        try await client.close()
        return results
    }

    struct RawResult: Sendable {
        var outcomes: [(Fault, Outcome)]
        var duplicates: [String]
        var strays: [String]
    }

    /// Sends `count` tasks at once as raw SUBMIT frames and counts the answers to each id; once `settled` ends (the
    /// daemon is idle again), asks for INFO and reads up to it, so any late second answer is seen too.
    private static func runRawClient(
        address: ServerAddress,
        count: Int,
        firstIndex: Int,
        mix: @Sendable (Int) -> Fault,
        _ settled: AsyncStream<Void>
    ) async throws -> RawResult {
        try await RawConnection.with(address) { connection in
            try await connection.send(.hello(Hello(maximumPayloadLength: 1 << 20)))
            let hello = try #require(try await connection.readFrame())
            #expect(hello.type == FrameType.hello.rawValue)

            var faults: [[UInt8]: Fault] = [:]
            var bytes = ByteBuffer()
            for index in firstIndex..<(firstIndex + count) {
                let fault = mix(index)
                let id = TaskID.random()
                var idBytes = ByteBuffer()
                _ = idBytes.writeTaskID(id)
                faults[Array(idBytes.readableBytesView)] = fault
                try bytes.writeFrame(.submit(id, timeout: fault.timeout, payload: ByteBuffer(string: fault.command)))
            }
            try await connection.send(Array(bytes.readableBytesView))

            var outcomes: [[UInt8]: Outcome] = [:]
            var duplicates: [String] = []
            var strays: [String] = []
            func record(_ frame: RawFrame) {
                let outcome: Outcome
                switch frame.type {
                case FrameType.result.rawValue:
                    outcome = .success(String(decoding: frame.afterTaskID, as: UTF8.self))
                case FrameType.failed.rawValue:
                    let rest = frame.afterTaskID
                    outcome = .failure(
                        FailureReason(rawValue: rest.first ?? 0),
                        String(decoding: rest.dropFirst(), as: UTF8.self)
                    )
                default:
                    strays.append("frame type \(frame.type)")
                    return
                }
                if faults[frame.taskID] == nil {
                    strays.append("\(outcome)")
                } else if outcomes[frame.taskID] != nil {
                    duplicates.append("\(outcome)")
                } else {
                    outcomes[frame.taskID] = outcome
                }
            }
            while outcomes.count < count {
                let frame = try #require(try await connection.readFrame(), "the daemon closed the raw connection")
                record(frame)
            }
            for await _ in settled {}
            try await connection.send(.infoRequest)
            while true {
                let frame = try #require(try await connection.readFrame(), "the daemon closed the raw connection")
                if frame.type == FrameType.info.rawValue { break }
                record(frame)
            }
            return RawResult(
                outcomes: outcomes.map { (faults[$0.key]!, $0.value) },
                duplicates: duplicates,
                strays: strays
            )
        }
    }

    /// Waits (up to 20 s) until the processes carrying `marker` in their environment satisfy `condition`; returns
    /// the last listing either way, for the test to check and show.
    private static func waitForProcesses(
        withEnvironment marker: String,
        _ condition: ([ProcessEntry]) -> Bool
    ) async throws -> [ProcessEntry] {
        let deadline = ContinuousClock.now + .seconds(20)
        while true {
            let processes = ProcessTable.processes(withEnvironment: marker)
            if condition(processes) || ContinuousClock.now > deadline { return processes }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}

/// How a task ended, as its client saw it.
enum Outcome: Sendable, CustomStringConvertible {
    case success(String)
    case failure(FailureReason, String)

    var isSuccess: Bool {
        if case .success = self { return true }
        return false
    }

    /// The kind of outcome, for the tally: `ok`, or the failure reason and, for crashes, their cause.
    func summary(killed: Set<pid_t>) -> String {
        switch self {
        case .success: "ok"
        case .failure(.workerCrashed, let message) where message.contains("exceeded the memory limit"):
            "worker crashed (memory limit)"
        case .failure(.workerCrashed, let message) where CrashTests.pid(in: message).map(killed.contains) == true:
            "worker crashed (killed by the test)"
        case .failure(let reason, _): "\(reason)"
        }
    }

    var description: String {
        switch self {
        case .success(let text): "result '\(text.prefix(60))'"
        case .failure(let reason, let message): "\(reason): \(message)"
        }
    }
}

/// What a task of the storm asks the chaos handler to do; the mix repeats every 50 tasks, with the faults spread
/// out so that a process has benign tasks to answer between them (crashes in a row, with no task answered in
/// between, put a slot into restart backoff).
enum Fault: Sendable, CustomStringConvertible {
    case echo(Int)
    case sleep
    case nap
    case fail(Int)
    case exit
    case signal
    case garbage
    case hang
    case orphan
    case orphanExit
    case flood
    case leak
    case hog

    init(index: Int) {
        self =
            switch index % 50 {
            case 0: .exit
            case 7: .signal
            case 14: .garbage
            case 21: .orphanExit
            case 28: .hog
            case 35: .hang
            case 42: .orphan
            case 3, 17, 31: .fail(index)
            case 5, 12, 26, 40: .sleep
            case 10, 45: .leak
            case 38: .flood
            default: .echo(index)
            }
    }

    var command: String {
        switch self {
        case .echo(let index): "echo task \(index)"
        case .sleep: "sleep 2"
        case .nap: "sleep 50"
        case .fail(let index): "fail boom \(index)"
        case .exit: "exit 3"
        case .signal: "signal 11"
        case .garbage: "garbage"
        case .hang: "hang"
        case .orphan: "orphan"
        case .orphanExit: "orphan exit"
        case .flood: "flood-stderr 20000"
        case .leak: "leak 24"
        case .hog: "hog 400"
        }
    }

    /// The timeout the task is sent with: those that never answer by themselves get one.
    var timeout: Duration? {
        switch self {
        case .hang, .orphan: .milliseconds(100)
        default: nil
        }
    }

    var isHog: Bool {
        if case .hog = self { return true }
        return false
    }

    /// Whether the task makes its own process die.
    var crashesByItself: Bool {
        switch self {
        case .exit, .signal, .garbage, .orphanExit, .hog: true
        default: false
        }
    }

    var description: String { command }

    /// Whether `outcome` is a right answer to this task, given the pool processes the test killed.
    ///
    /// Any task may also fail because the test killed its process (`workerCrashed` naming a killed pid and
    /// SIGKILL), or — only under a load with `memoryFaults`, where earlier `leak` tasks leave a process large — because
    /// its process was found over the memory limit while running it.
    func accepts(_ outcome: Outcome, killed: Set<pid_t>, memoryFaults: Bool) -> Bool {
        if case .failure(.workerCrashed, let message) = outcome {
            // A task sent ahead to a process that claimed it and died before its answer was out; bounded per process
            // by the suite.
            if message.hasSuffix(FaultInjectionTests.possiblyStarted) { return true }
            if memoryFaults, message.contains("exceeded the memory limit: "), message.hasSuffix(" MiB > 160 MiB") {
                return true
            }
            if let pid = CrashTests.pid(in: message), killed.contains(pid), message.contains("SIGKILL") { return true }
        }
        switch (self, outcome) {
        case (.echo(let index), .success(let text)): return text == "task \(index)"
        case (.sleep, .success(let text)): return text == "slept 2"
        case (.nap, .success(let text)): return text == "slept 50"
        case (.fail(let index), .failure(.handlerError, let message)): return message == "boom \(index)"
        case (.exit, .failure(.workerCrashed, let message)): return message.contains("exited with code 3")
        case (.signal, .failure(.workerCrashed, let message)): return message.contains("SIGSEGV")
        case (.garbage, .failure(.workerCrashed, let message)): return message.contains("broke the reply framing")
        case (.hang, .failure(.timedOut, _)), (.orphan, .failure(.timedOut, _)): return true
        case (.orphanExit, .failure(.workerCrashed, _)): return true
        case (.flood, .success(let text)): return text == "flooded 20000"
        case (.leak, .success(let text)): return text == "leaked 24"
        default: return false
        }
    }
}

/// Kills a random pool process of the daemon with SIGKILL every 2 to 8 ms, remembering whom it killed.
///
/// Only processes that have lived for ``minimumAge`` are killed: a process that dies before it answered a task
/// counts as a crash loop, and the daemon rightly backs off from restarting it; killing every process as it starts
/// would measure the backoff rather than the handling of the kills. Sanitized processes take longer to start.
final class Killer: Sendable {
    static let minimumAge: Duration = .milliseconds(150) * testSlowdown

    private let daemon: pid_t
    private let state = NIOLockedValueBox<(killed: Set<pid_t>, isStopped: Bool)>(([], false))

    init(daemon: pid_t) {
        self.daemon = daemon
    }

    var killed: Set<pid_t> { state.withLockedValue { $0.killed } }

    func stop() {
        state.withLockedValue { $0.isStopped = true }
    }

    /// Kills until stopped or until `duration` has passed.
    func run(for duration: Duration) async {
        let end = ContinuousClock.now + duration
        while ContinuousClock.now < end, !state.withLockedValue({ $0.isStopped }) {
            let candidates = childProcesses(of: daemon).filter { pid in
                ProcessTable.age(pid).map { $0 >= Self.minimumAge } ?? false
            }
            if let victim = candidates.randomElement(), ProcessTable.killChild(victim, of: daemon) {
                state.withLockedValue { _ = $0.killed.insert(victim) }
            }
            try? await Task.sleep(for: .milliseconds(Int.random(in: 2...8)))
        }
    }
}
