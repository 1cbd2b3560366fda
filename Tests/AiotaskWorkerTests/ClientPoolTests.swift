import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import ServiceLifecycle
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

/// ``AiotaskClientPool`` against real servers on 127.0.0.11, .12 and .13: in-process ones where a graceful stop is
/// enough, `aiotaskd` processes where one must die.
@Suite("AiotaskClientPool: one client for many servers", .serialized)
struct ClientPoolTests {
    static let hosts = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]

    /// Three in-process servers running `handler` (`chaos` by default), each on TCP on its own loopback address.
    static func startServers(
        workers: Int = 2,
        handler: String = "chaos"
    ) async throws -> [(TestServer, ServerAddress)] {
        var servers: [(TestServer, ServerAddress)] = []
        for host in hosts {
            let server = try await TestServer.start(
                handler: .builtin(handler),
                workers: workers,
                listen: [.tcp(host: host, port: 0)]
            )
            let port = try #require(server.server.localAddresses.first { $0.protocol == .inet }?.port)
            servers.append((server, .tcp(host: host, port: port)))
        }
        return servers
    }

    /// A pool over `servers` choosing by `strategy`.
    static func pool(
        _ servers: [(TestServer, ServerAddress)],
        _ strategy: BalancingStrategy,
        connections: Int = 1,
        logger: Logger = Logger(label: "test")
    ) -> AiotaskClientPool {
        AiotaskClientPool(
            addresses: servers.map(\.1),
            configuration: .init(connectionsPerEndpoint: connections, strategy: strategy),
            logger: logger
        )
    }

    /// Runs `body` while `pool` runs, then cancels the pool.
    static func running<Value: Sendable>(
        _ pool: AiotaskClientPool,
        _ body: @Sendable () async throws -> Value
    ) async throws -> Value {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await pool.run() }
            defer { group.cancelAll() }
            return try await body()
        }
    }

    /// Waits until the pool sends tasks to exactly `addresses`.
    static func waitUntilTakingTasks(_ pool: AiotaskClientPool, are addresses: [ServerAddress]) async throws {
        while pool.endpointsTakingTasks != addresses { try await Task.sleep(for: .milliseconds(5)) }
    }

    /// Submits `count` tasks `echo x`, `inFlight` at a time (each worker takes the next task when it is free),
    /// and checks each result.
    static func submit(_ count: Int, inFlight: Int, to pool: AiotaskClientPool) async throws {
        let next = NIOLockedValueBox(0)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<inFlight {
                group.addTask { () async throws -> Void in
                    while next.withLockedValue({ taken in
                        defer { taken += 1 }
                        return taken < count
                    }) {
                        let result = try await pool.submit("echo x")
                        #expect(result == Array("x".utf8))
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    static func submitted(_ servers: [(TestServer, ServerAddress)]) async throws -> [Int] {
        var counts: [Int] = []
        for (server, _) in servers { counts.append(try await server.server.info().tasks.submitted) }
        return counts
    }

    static func stop(_ servers: [(TestServer, ServerAddress)]) async {
        for (server, _) in servers { try? await server.stop() }
    }

    // MARK: Balancing

    @Test(
        "round robin gives each of three servers a third of the tasks; first available gives the first one all",
        arguments: [(BalancingStrategy.roundRobin, [100, 100, 100]), (.firstAvailable, [300, 0, 0])]
    )
    func spreadsByStrategy(strategy: BalancingStrategy, expected: [Int]) async throws {
        let servers = try await Self.startServers()
        let pool = Self.pool(servers, strategy, connections: 2)
        try await withTimeout(.seconds(60)) {
            try await Self.running(pool) {
                try await Self.waitUntilTakingTasks(pool, are: servers.map(\.1))
                try await Self.submit(300, inFlight: 30, to: pool)
                #expect(try await Self.submitted(servers) == expected)
            }
        }
        await Self.stop(servers)
    }

    @Test("least outstanding sends few tasks to a server whose tasks do not come back")
    func leastOutstandingAvoidsTheBusyServer() async throws {
        let servers = try await Self.startServers(workers: 1)
        let pool = Self.pool(servers, .leastOutstanding)
        try await withTimeout(.seconds(60)) {
            try await Self.running(pool) {
                try await Self.waitUntilTakingTasks(pool, are: servers.map(\.1))
                // Another client keeps the first server's only process busy for 5 s: the pool's tasks sent there
                // wait, outstanding, and the pool's choices see it.
                let other = try await servers[0].0.client()
                let blocker = Task { try await other.submit("sleep 5000") }
                while try await servers[0].0.server.info().workers.busy == 0 {
                    try await Task.sleep(for: .milliseconds(5))
                }
                try await Self.submit(150, inFlight: 8, to: pool)
                let counts = try await Self.submitted(servers)
                #expect(counts.reduce(0, +) == 151)
                // Choosing without looking at the load would strand all 8 in flight there, then send it a third
                // of the rest.
                #expect(counts[0] - 1 < 20, "the stalled server got \(counts[0] - 1) of 150 tasks: \(counts)")
                _ = try await blocker.value
                try await other.close()
            }
        }
        await Self.stop(servers)
    }

    @Test("a host name is resolved to its addresses, which take the tasks")
    func resolvesAHostName() async throws {
        let servers = try await Self.startServers(handler: "echo")
        guard case .tcp(let host, let port) = servers[1].1 else { preconditionFailure("servers listen on TCP") }
        let pool = AiotaskClientPool(
            endpoints: .host(host, port: port, every: .milliseconds(200)),
            logger: Logger(label: "test")
        )
        try await withTimeout(.seconds(60)) {
            try await Self.running(pool) {
                try await Self.waitUntilTakingTasks(pool, are: [servers[1].1])
                #expect(try await pool.submit("resolved") == Array("resolved".utf8))
                #expect(try await Self.submitted(servers) == [0, 1, 0])
            }
        }
        await Self.stop(servers)
    }

    @Test("aiotask bench and submit balance over several servers, --server repeated or a comma list")
    func commandLineTakesSeveralServers() async throws {
        let servers = try await Self.startServers(handler: "echo")
        try await withTimeout(.seconds(60)) {
            let list = servers.map { "\($0.1)" }
            let report = try await runBench(
                ["--server", list[0] + "," + list[1], "--server", list[2], "--balance", "round-robin"]
            )
            // 2,000 tasks in turn, but the first tasks wait for the first connection made.
            #expect(report["connections"] as? Int == 6)
            let counts = try await Self.submitted(servers)
            #expect(counts.allSatisfy { (600...740).contains($0) }, "\(counts)")

            let submit = try await runCLI(["submit", "--server", list.joined(separator: ","), "via the pool"])
            #expect(submit.exit == .exited(0), "stderr: \(submit.standardError)")
            #expect(submit.standardOutput == "via the pool")
            #expect(try await Self.submitted(servers).reduce(0, +) == 2001)

            let status = try await runCLI(["status", "--server", list.joined(separator: ",")])
            #expect(status.exit == .exited(2))
            #expect(status.standardError.contains("talks to one server"), "\(status.standardError)")
        }
        await Self.stop(servers)
    }

    // MARK: Failures

    /// An `aiotaskd` process listening on TCP on `host` (and on its own Unix socket).
    struct Host {
        let daemon: RunningDaemon
        let address: ServerAddress

        /// Starts aiotaskd with `arguments`; its handler sees `tag` in `AIOTASK_DAEMON`.
        static func start(_ host: String, port: Int? = nil, tag: String, arguments: [String]) async throws -> Host {
            let port = try port ?? SystemdTestKit.freePort(host: host)
            let daemon = try await RunningDaemon.start(
                arguments: arguments + ["--listen", "tcp://\(host):\(port)"],
                environment: ["AIOTASK_DAEMON": tag]
            )
            return Host(daemon: daemon, address: .tcp(host: host, port: port))
        }

        var port: Int {
            guard case .tcp(_, let port) = address else { return 0 }
            return port
        }

        func kill() async throws {
            daemon.process.killGroup()
            _ = try await daemon.process.wait()
        }

        func terminate() async throws {
            daemon.process.signal(SIGTERM)
            _ = try await daemon.process.wait()
        }

        func remove() {
            daemon.process.killGroup()
            try? FileManager.default.removeItem(atPath: daemon.directory)
        }
    }

    /// A handler that records every task it starts (`NAME MS`: append `NAME` and the pid of the daemon's pool
    /// process to the record file, sleep MS, return NAME), so that a test counts the runs of each task.
    static func recordingHandler() throws -> (script: HandlerScript, record: String) {
        let script = try HandlerScript(
            """
            import os
            import time

            record = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs")
            for task in tasks():
                name, milliseconds = task.decode().split()
                with open(record, "a") as file:
                    file.write(name + " " + os.environ.get("AIOTASK_DAEMON", "?") + "\\n")
                time.sleep(int(milliseconds) / 1000)
                reply(0, name.encode())
            """
        )
        return (script, script.directory + "/runs")
    }

    /// The runs recorded so far: for each task name, the daemons (by tag) that started it.
    static func runs(in record: String) -> [String: [String]] {
        let text = (try? String(contentsOfFile: record, encoding: .utf8)) ?? ""
        var runs: [String: [String]] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ").map(String.init)
            guard parts.count == 2 else { continue }
            runs[parts[0], default: []].append(parts[1])
        }
        return runs
    }

    static func handlerArguments(_ script: HandlerScript, workers: Int = 1) -> [String] {
        ["--handler", "exec:\(HandlerScript.python) \(script.path)", "--workers", "\(workers)", "--prefetch", "0"]
    }

    @Test(
        "a killed server is ejected, its started tasks fail with connectionLost and never run twice; it takes tasks again after its backoff"
    )
    func killedServerIsEjectedAndReturns() async throws {
        let (script, record) = try Self.recordingHandler()
        defer { script.remove() }
        let arguments = Self.handlerArguments(script)
        let first = try await Host.start(Self.hosts[0], tag: "first", arguments: arguments)
        let second = try await Host.start(Self.hosts[1], tag: "second", arguments: arguments)
        defer {
            first.remove()
            second.remove()
        }
        let logs = LogCapture()
        let pool = AiotaskClientPool(
            addresses: [first.address, second.address],
            configuration: .init(
                connectionsPerEndpoint: 1,
                strategy: .firstAvailable,
                backoffBase: .milliseconds(200),
                backoffLimit: .milliseconds(400)
            ),
            logger: logs.logger
        )
        try await withTimeout(.seconds(60)) {
            try await Self.running(pool) {
                try await Self.waitUntilTakingTasks(pool, are: [first.address, second.address])
                // One task runs on the first server, three wait in its queue (sent: they may run).
                let sent = (0..<4).map { index in Task { try await pool.submit("sent\(index) 30000") } }
                while Self.runs(in: record).isEmpty { try await Task.sleep(for: .milliseconds(5)) }
                while pool.outstandingTasks < 4 { try await Task.sleep(for: .milliseconds(5)) }

                try await first.kill()
                for task in sent {
                    do {
                        _ = try await task.value
                        Issue.record("a task survived the death of its server")
                    } catch let error as AiotaskClientError {
                        #expect(error.code == .connectionLost, "\(error)")
                    }
                }
                _ = await logs.first { $0.message == "endpoint ejected" }
                #expect(pool.endpointsTakingTasks == [second.address])
                // New tasks go to the second server.
                for index in 0..<3 { #expect(try await pool.submit("after\(index) 0") == Array("after\(index)".utf8)) }

                // Back on the same address: tried again after the backoff, it takes the tasks again.
                let restarted = try await Host.start(
                    Self.hosts[0],
                    port: first.port,
                    tag: "restarted",
                    arguments: arguments
                )
                defer { restarted.remove() }
                _ = await logs.first { $0.message == "endpoint takes tasks again" }
                #expect(try await pool.submit("back 0") == Array("back".utf8))

                let runs = Self.runs(in: record)
                #expect(runs.values.allSatisfy { $0.count == 1 }, "a task ran twice: \(runs)")
                // The one that was running ran once, there; the queued ones never ran, nowhere else either.
                let sentRuns = (0..<4).compactMap { runs["sent\($0)"] }
                #expect(sentRuns == [["first"]], "\(runs)")
                for index in 0..<3 { #expect(runs["after\(index)"] == ["second"], "\(runs)") }
                #expect(runs["back"] == ["restarted"], "\(runs)")
            }
        }
    }

    @Test("tasks a stopping server never started run once on another server; the one it interrupted is not run again")
    func neverStartedTasksMoveToAnotherServer() async throws {
        let (script, record) = try Self.recordingHandler()
        defer { script.remove() }
        // At its drain deadline the first server fails its running task as interrupted and its queued ones as
        // shuttingDown: never started.
        let first = try await Host.start(
            Self.hosts[0],
            tag: "first",
            arguments: Self.handlerArguments(script) + ["--drain-timeout", "0.3"]
        )
        let second = try await Host.start(
            Self.hosts[1],
            tag: "second",
            arguments: Self.handlerArguments(script, workers: 2)
        )
        defer {
            first.remove()
            second.remove()
        }
        let logs = LogCapture()
        let pool = AiotaskClientPool(
            addresses: [first.address, second.address],
            configuration: .init(connectionsPerEndpoint: 1, strategy: .firstAvailable),
            logger: logs.logger
        )
        try await withTimeout(.seconds(60)) {
            try await Self.running(pool) {
                try await Self.waitUntilTakingTasks(pool, are: [first.address, second.address])
                let running = Task { try await pool.submit("running 30000") }
                while Self.runs(in: record).isEmpty { try await Task.sleep(for: .milliseconds(5)) }
                let queued = (0..<4).map { index in Task { try await pool.submit("queued\(index) 0") } }
                while pool.outstandingTasks < 5 { try await Task.sleep(for: .milliseconds(5)) }

                try await first.terminate()
                do {
                    _ = try await running.value
                    Issue.record("the interrupted task has a result")
                } catch let failure as TaskFailure {
                    #expect(failure.reason == .interrupted, "\(failure)")
                }
                for (index, task) in queued.enumerated() {
                    #expect(try await task.value == Array("queued\(index)".utf8))
                }
                let runs = Self.runs(in: record)
                #expect(runs["running"] == ["first"], "\(runs)")
                for index in 0..<4 { #expect(runs["queued\(index)"] == ["second"], "\(runs)") }
            }
        }
    }

    @Test("a server that says GOODBYE finishes its task and gets no new one; nothing is logged above info")
    func goodbyeIsHonoured() async throws {
        let servers = try await Self.startServers(workers: 1)
        guard case .tcp(let host, let port) = servers[0].1 else { preconditionFailure("servers listen on TCP") }
        let logs = LogCapture()
        let pool = Self.pool(servers, .roundRobin, connections: 2, logger: logs.logger)
        let restarted = try await withTimeout(.seconds(60)) {
            try await Self.running(pool) {
                try await Self.waitUntilTakingTasks(pool, are: servers.map(\.1))
                // Round robin: the first task goes to the first server.
                let running = Task { try await pool.submit("sleep 1000") }
                while try await servers[0].0.server.info().workers.busy == 0 {
                    try await Task.sleep(for: .milliseconds(5))
                }
                let stopping = Task { try await servers[0].0.server.shutdown() }
                _ = await logs.first { $0.message == "server stopping, no new tasks there" }
                #expect(pool.endpointsTakingTasks == Array(servers.map(\.1).dropFirst()))
                try await Self.submit(60, inFlight: 6, to: pool)
                #expect(try await running.value == Array("slept 1000".utf8))
                try await stopping.value
                let counts = try await Self.submitted(Array(servers.dropFirst()))
                #expect(counts == [30, 30], "the tasks after GOODBYE went to the others: \(counts)")

                // Started again on its address, it takes tasks again.
                let restarted = try await TestServer.start(
                    handler: .builtin("chaos"),
                    workers: 1,
                    listen: [.tcp(host: host, port: port)]
                )
                try await Self.waitUntilTakingTasks(pool, are: servers.map(\.1))
                let above = logs.entries.filter { $0.level > .info }
                #expect(above.isEmpty, "logged above info: \(above.map(\.message))")
                return restarted
            }
        }
        try await restarted.stop()
        await Self.stop(Array(servers.dropFirst()))
    }

    @Test("graceful shutdown lets the task in flight finish, refuses new ones, then run() returns")
    func gracefulShutdownDrains() async throws {
        let servers = try await Self.startServers(workers: 1)
        let pool = Self.pool(servers, .firstAvailable)
        let group = ServiceGroup(services: [pool], logger: Logger(label: "test"))
        try await withTimeout(.seconds(60)) {
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                try await Self.waitUntilTakingTasks(pool, are: servers.map(\.1))
                let running = Task { try await pool.submit("sleep 1000") }
                while try await servers[0].0.server.info().workers.busy == 0 {
                    try await Task.sleep(for: .milliseconds(5))
                }
                await group.triggerGracefulShutdown()
                while !pool.endpointsTakingTasks.isEmpty { try await Task.sleep(for: .milliseconds(5)) }
                do {
                    _ = try await pool.submit("echo late")
                    Issue.record("a task was taken during the shutdown")
                } catch let error as AiotaskClientError {
                    #expect(error.code == .connectionLost, "\(error)")
                }
                #expect(try await running.value == Array("slept 1000".utf8))
                // run() returned: the group ends by itself.
                try await tasks.next()
                #expect(try await Self.submitted(servers) == [1, 0, 0])
            }
        }
        await Self.stop(servers)
    }
}
