import AiotaskClient
import AiotaskProtocol
import AiotaskTransport
import ArgumentParser
import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// `aiotask bench`: a load generator that measures throughput and latency.
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure the server's throughput and latency.",
        discussion: """
            Runs --tasks tasks of --size pseudo-random bytes, keeping --concurrency of them in flight in total, \
            spread evenly over --connections connections (with several --server addresses: --connections to each, \
            the tasks balanced over the servers by --balance), and checks that each result equals its task (as the \
            echo handler returns it; --no-verify skips that). Prints tasks per second and the latency \
            percentiles; --json prints one JSON object instead. Exits with 1 when a task failed or returned \
            the wrong result. (The benchmark suite, which starts its own servers and checks every performance \
            figure, is the aiotask-bench program of the source tree's Benchmarks/ package.)
            """
    )

    @OptionGroup var options: ServerOptions

    @Option(name: .long, help: "How many tasks to run.")
    var tasks = 10_000

    @Option(name: .long, help: "How many tasks are in flight at once, over all connections.")
    var concurrency = 64

    @Option(name: .long, help: ArgumentHelp("The size of each task.", valueName: "bytes"))
    var size = 64

    @Option(name: .long, help: "How many connections to spread the tasks over (to each server, with several).")
    var connections = 1

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Send this text as every task instead of --size pseudo-random bytes (e.g. 10 for the sleep handler).",
            valueName: "text"
        )
    )
    var payload: String?

    @Flag(
        name: .long,
        help: """
            Make each connection a ReconnectingClient: a task the server never started (it said GOODBYE) is sent \
            again on a new connection, one lost with its connection fails with connectionLost, and the next task \
            connects again (through a balancer, to another server).
            """
    )
    var reconnect = false

    @Option(name: .long, help: ArgumentHelp("Seconds each task may run (default: the server's).", valueName: "seconds"))
    var timeout: Double?

    @Flag(name: .long, inversion: .prefixedNo, help: "Check that each result equals its task.")
    var verify = true

    @Flag(name: .long, help: "Print the report as one JSON object.")
    var json = false

    @Flag(
        name: .long,
        inversion: .prefixedNo,
        help: """
            Run each connection's tasks on the connection's own event loop thread, so that submitting and \
            resuming need no thread switch (--no-tasks-on-event-loop: on Swift's global executor).
            """
    )
    var tasksOnEventLoop = true

    func validate() throws {
        guard tasks >= 1 else { throw ValidationError("--tasks must be at least 1") }
        guard concurrency >= 1 else { throw ValidationError("--concurrency must be at least 1") }
        guard connections >= 1 else { throw ValidationError("--connections must be at least 1") }
        guard connections <= concurrency else {
            throw ValidationError(
                "--connections must not exceed --concurrency (each connection needs a task in flight)"
            )
        }
        guard size >= 0 else { throw ValidationError("--size must not be negative") }
        if let timeout, !(timeout > 0 && timeout.isFinite) {
            throw ValidationError("--timeout must be a positive number of seconds")
        }
    }

    func run() async throws {
        MemoryTuning.keepLargeBuffersInHeap()
        let report: BenchReport
        do {
            report = try await measure()
        } catch {
            throw AiotaskCommand.report(error)
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            FileHandle.standardOutput.write(try encoder.encode(report) + Data("\n".utf8))
        } else {
            print(report.text)
        }
        if report.failed > 0 || report.mismatched > 0 {
            throw AiotaskCommand.taskFailedExitCode
        }
    }

    /// Connects, runs all tasks, closes, and summarises.
    private func measure() async throws -> BenchReport {
        let load = BenchLoad(
            tasks: tasks,
            concurrency: concurrency,
            size: payload?.utf8.count ?? size,
            connections: connections,
            timeout: timeout.map { Duration.seconds($0) },
            verify: verify,
            tasksOnEventLoop: tasksOnEventLoop,
            payload: payload.map { ByteBuffer(string: $0) }
        )
        let options = self.options
        if try options.addresses().count > 1 {
            let (showProgress, reportFirstFailure) = (Terminal.stderrIsTerminal, !json)
            // One connection to each server: they share one event loop, as the one connection of a single-server
            // run has one, and the tasks run on it, so that none is handed between threads (with more, the pool
            // spreads its connections over the singleton group's loops, and the tasks over those loops).
            let loop: (any EventLoop)? = connections == 1 ? MultiThreadedEventLoopGroup.singleton.next() : nil
            let servers = try options.addresses().count
            let connectTimeout = Duration.seconds(options.connectTimeout)
            return try await options.withPool(connectionsPerServer: connections, eventLoopGroup: loop) { pool in
                // The clock starts once every server takes tasks (or the connect timeout has passed), as a
                // single-server run's starts once it is connected: the first tasks would otherwise all go to the
                // server that answered first, and the figure would measure the connecting.
                let deadline = ContinuousClock.now + connectTimeout
                while pool.endpointsTakingTasks.count < servers, ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(2))
                }
                return try await load.run(
                    pool: pool,
                    servers: servers,
                    on: loop,
                    showProgress: showProgress,
                    reportFirstFailure: reportFirstFailure
                )
            }
        }
        if reconnect {
            let configuration = ReconnectingClient.Configuration(
                connectTimeout: .seconds(options.connectTimeout),
                protocol: options.wireProtocol,
                tls: options.tls
            )
            return try await load.run(
                reconnectingTo: try options.address(),
                configuration: configuration,
                showProgress: Terminal.stderrIsTerminal,
                reportFirstFailure: !json
            )
        }
        return try await load.run(
            connect: { try await options.connect(on: $0) },
            showProgress: Terminal.stderrIsTerminal,
            reportFirstFailure: !json
        )
    }
}

/// One benchmark load: how many tasks of what size, how many in flight over how many connections.
struct BenchLoad: Sendable {
    var tasks: Int
    var concurrency: Int
    var size: Int
    var connections: Int
    var timeout: Duration? = nil
    var verify = true
    /// Run each connection's tasks on its event loop (see ``EventLoopTaskExecutor``).
    var tasksOnEventLoop = true
    /// Every task's bytes, instead of `size` pseudo-random ones.
    var payload: ByteBuffer? = nil

    /// Connects `connections` clients with `connect`, runs all tasks, closes, and summarises.
    func run(
        connect: @escaping @Sendable (any EventLoop) async throws -> AiotaskClient,
        showProgress: Bool = false,
        reportFirstFailure: Bool = false
    ) async throws -> BenchReport {
        let clients = try await connectAll(connect)
        do {
            let report = try await measure(with: clients, showProgress: showProgress)
            for client in clients { try? await client.close() }
            if reportFirstFailure, let failure = report.firstFailure {
                Terminal.writeError("aiotask: first failure: \(failure)")
            }
            return report
        } catch {
            for client in clients { try? await client.close() }
            throw error
        }
    }

    /// Runs all tasks through `pool` (whose `run()` is running), balanced over its `servers` servers; `loop` is the
    /// one event loop of all the pool's connections, nil when they are spread over the singleton group's.
    func run(
        pool: AiotaskClientPool,
        servers: Int,
        on loop: (any EventLoop)? = nil,
        showProgress: Bool = false,
        reportFirstFailure: Bool = false
    ) async throws -> BenchReport {
        // Tasks run on the loops of the pool's connections (each worker on one), so that a task whose connection
        // shares its loop is handed over and resumed without a thread switch: every task when there is one loop.
        let loops =
            tasksOnEventLoop ? loop.map { [$0] } ?? Array(MultiThreadedEventLoopGroup.singleton.makeIterator()) : []
        let report = try await measure(
            with: [pool],
            executors: loops.isEmpty ? [nil] : loops.map { EventLoopTaskExecutor($0) },
            connections: connections * servers,
            showProgress: showProgress
        )
        if reportFirstFailure, let failure = report.firstFailure {
            Terminal.writeError("aiotask: first failure: \(failure)")
        }
        return report
    }

    /// Runs all tasks over `connections` ``ReconnectingClient``s of `address`, closes them, and summarises.
    func run(
        reconnectingTo address: ServerAddress,
        configuration: ReconnectingClient.Configuration,
        showProgress: Bool = false,
        reportFirstFailure: Bool = false
    ) async throws -> BenchReport {
        let loops = (0..<connections).map { _ in MultiThreadedEventLoopGroup.singleton.next() }
        let clients = loops.map { loop in
            var configuration = configuration
            configuration.eventLoopGroup = loop
            return ReconnectingClient(to: address, configuration: configuration)
        }
        let report = try await measure(
            with: clients,
            executors: loops.map { tasksOnEventLoop ? EventLoopTaskExecutor($0) : nil },
            connections: clients.count,
            showProgress: showProgress
        )
        for client in clients { try? await client.close() }
        if reportFirstFailure, let failure = report.firstFailure {
            Terminal.writeError("aiotask: first failure: \(failure)")
        }
        return report
    }

    private func measure(with clients: [AiotaskClient], showProgress: Bool) async throws -> BenchReport {
        let limit = clients[0].serverMaximumPayloadLength
        guard size <= limit else {
            throw ValidationError("--size \(size) exceeds the server's task limit of \(limit) bytes")
        }
        return try await measure(
            with: clients,
            executors: clients.map { tasksOnEventLoop ? EventLoopTaskExecutor($0.eventLoop) : nil },
            connections: clients.count,
            showProgress: showProgress
        )
    }

    /// Runs all tasks, `concurrency` at a time spread over `submitters`, the tasks of each on its executor.
    private func measure<Submitter: TaskSubmitter>(
        with clients: [Submitter],
        executors: [EventLoopTaskExecutor?],
        connections: Int,
        showProgress: Bool
    ) async throws -> BenchReport {
        let base = payload ?? Self.pseudoRandomBytes(count: size + Self.payloadOffsets)
        let offsets = payload == nil ? Self.payloadOffsets : 1
        let progress = Progress()
        let start = Terminal.monotonicNanoseconds()
        let progressTask = showProgress ? Self.showProgress(progress, of: tasks, since: start) : nil

        let (tasks, concurrency, size, verify, timeout) = (self.tasks, self.concurrency, self.size, verify, timeout)
        let outcome = try await withThrowingTaskGroup(of: WorkerOutcome.self) { group in
            for worker in 0..<concurrency {
                let client = clients[worker % clients.count]
                group.addTask(executorPreference: executors[worker % executors.count]) {
                    try await Self.runWorker(
                        worker,
                        of: concurrency,
                        tasks: tasks,
                        client: client,
                        base: base,
                        size: size,
                        offsets: offsets,
                        timeout: timeout,
                        verify: verify,
                        progress: progress
                    )
                }
            }
            var total = WorkerOutcome(expectedTasks: tasks)
            for try await outcome in group { total.merge(outcome) }
            return total
        }
        let elapsed = Terminal.monotonicNanoseconds() - start

        if let progressTask {
            progressTask.cancel()
            await progressTask.value
            Terminal.writeErrorRaw("\r\u{1B}[K")
        }
        return BenchReport(
            outcome: outcome,
            nanoseconds: elapsed,
            concurrency: concurrency,
            connections: connections,
            size: size
        )
    }

    private func connectAll(
        _ connect: @escaping @Sendable (any EventLoop) async throws -> AiotaskClient
    ) async throws -> [AiotaskClient] {
        try await withThrowingTaskGroup(of: AiotaskClient.self) { group in
            for _ in 0..<connections {
                let loop = MultiThreadedEventLoopGroup.singleton.next()
                group.addTask { try await connect(loop) }
            }
            var clients: [AiotaskClient] = []
            do {
                for try await client in group { clients.append(client) }
            } catch {
                for client in clients { try? await client.close() }
                throw error
            }
            return clients
        }
    }

    /// Runs tasks `worker`, `worker + step`, `worker + 2 step`, … one after the other.
    private static func runWorker(
        _ worker: Int,
        of step: Int,
        tasks: Int,
        client: some TaskSubmitter,
        base: ByteBuffer,
        size: Int,
        offsets: Int,
        timeout: Duration?,
        verify: Bool,
        progress: Progress
    ) async throws -> WorkerOutcome {
        var outcome = WorkerOutcome(expectedTasks: tasks / step + 1)
        var index = worker
        while index < tasks, !Task.isCancelled {
            let payload = base.getSlice(at: base.readerIndex + index % offsets, length: size)!
            let start = Terminal.monotonicNanoseconds()
            do {
                let result = try await client.submit(payload, timeout: timeout)
                outcome.latencies.append(Terminal.monotonicNanoseconds() - start)
                if verify, result != payload { outcome.mismatched += 1 }
            } catch let failure as TaskFailure {
                outcome.latencies.append(Terminal.monotonicNanoseconds() - start)
                outcome.failed(because: "\(failure.reason)", failure)
            } catch let error as AiotaskClientError where error.code == .connectionLost {
                // The task may have run on a server that went away: a failure of this task, not of the load.
                outcome.latencies.append(Terminal.monotonicNanoseconds() - start)
                outcome.failed(because: "\(error.code)", error)
            }
            progress.completed.add(1, ordering: .relaxed)
            index += step
        }
        return outcome
    }

    /// How many different starting offsets into the random bytes the tasks use, so that neighbours differ.
    private static let payloadOffsets = 251

    /// `count` bytes from a xorshift generator seeded at random: varied, and quick to make even for large sizes.
    private static func pseudoRandomBytes(count: Int) -> ByteBuffer {
        var state = UInt64.random(in: 1...UInt64.max)
        var buffer = ByteBuffer()
        buffer.reserveCapacity(count + 8)
        while buffer.readableBytes < count {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            buffer.writeInteger(state)
        }
        buffer.moveWriterIndex(to: buffer.readerIndex + count)
        return buffer
    }

    /// Rewrites one stderr line with the count and rate until cancelled.
    private static func showProgress(_ progress: Progress, of tasks: Int, since start: UInt64) -> Task<Void, Never> {
        Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(250))
                let done = progress.completed.load(ordering: .relaxed)
                let seconds = Double(Terminal.monotonicNanoseconds() - start) / 1e9
                let rate = seconds > 0 ? Double(done) / seconds : 0
                Terminal.writeErrorRaw(String(format: "\r\u{1B}[K%d/%d tasks, %.0f tasks/s", done, tasks, rate))
            }
        }
    }
}

/// Tasks completed so far, for the progress line.
final class Progress: Sendable {
    let completed = Atomic<Int>(0)
}

/// What one worker (or all of them, merged) measured.
struct WorkerOutcome: Sendable {
    /// One entry per task that ended, in nanoseconds.
    var latencies: [UInt64] = []
    var failed = 0
    var mismatched = 0
    var firstFailure: (any Error & Sendable)?
    /// Failed tasks by reason (a `FailureReason`'s name, or `connectionLost`).
    var failures: [String: Int] = [:]

    mutating func failed(because reason: String, _ error: any Error & Sendable) {
        failed += 1
        failures[reason, default: 0] += 1
        if firstFailure == nil { firstFailure = error }
    }

    init(expectedTasks: Int) {
        latencies.reserveCapacity(expectedTasks)
    }

    mutating func merge(_ other: WorkerOutcome) {
        latencies.append(contentsOf: other.latencies)
        failed += other.failed
        mismatched += other.mismatched
        failures.merge(other.failures, uniquingKeysWith: +)
        if firstFailure == nil { firstFailure = other.firstFailure }
    }
}

/// The result of a benchmark run, printed as text or JSON.
struct BenchReport: Encodable {
    struct Latency: Encodable {
        var p50: Double
        var p99: Double
        var p999: Double
        var max: Double
    }

    var tasks: Int
    var failed: Int
    var mismatched: Int
    var seconds: Double
    var tasksPerSecond: Double
    var latencyUs: Latency
    var concurrency: Int
    var connections: Int
    var size: Int
    /// Failed tasks by reason.
    var failures: [String: Int]
    /// The first task that failed, for the text report.
    var firstFailure: (any Error & Sendable)?

    enum CodingKeys: String, CodingKey {
        case tasks, failed, mismatched, seconds, concurrency, connections, size, failures
        case tasksPerSecond = "tasks_per_second"
        case latencyUs = "latency_us"
    }

    init(outcome: WorkerOutcome, nanoseconds: UInt64, concurrency: Int, connections: Int, size: Int) {
        let sorted = outcome.latencies.sorted()
        func percentile(_ fraction: Double) -> Double {
            guard !sorted.isEmpty else { return 0 }
            let rank = Int((fraction * Double(sorted.count)).rounded(.up))
            return Double(sorted[min(sorted.count - 1, max(0, rank - 1))]) / 1000
        }
        tasks = sorted.count
        failed = outcome.failed
        mismatched = outcome.mismatched
        seconds = Double(nanoseconds) / 1e9
        tasksPerSecond = seconds > 0 ? Double(tasks) / seconds : 0
        latencyUs = Latency(
            p50: percentile(0.5),
            p99: percentile(0.99),
            p999: percentile(0.999),
            max: Double(sorted.last ?? 0) / 1000
        )
        self.concurrency = concurrency
        self.connections = connections
        self.size = size
        firstFailure = outcome.firstFailure
        failures = outcome.failures
    }

    /// The human-readable report.
    var text: String {
        let plural = connections == 1 ? "connection" : "connections"
        return [
            String(format: "tasks       %d in %.3f s (%d failed, %d mismatched)", tasks, seconds, failed, mismatched)
                + (failures.isEmpty
                    ? ""
                    : "; failed: "
                        + failures.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")),
            String(format: "throughput  %.0f tasks/s", tasksPerSecond),
            String(
                format: "latency     p50 %.0f µs, p99 %.0f µs, p99.9 %.0f µs, max %.0f µs",
                latencyUs.p50,
                latencyUs.p99,
                latencyUs.p999,
                latencyUs.max
            ),
            "load        \(size)-byte tasks, \(concurrency) in flight over \(connections) \(plural)",
        ].joined(separator: "\n")
    }
}
