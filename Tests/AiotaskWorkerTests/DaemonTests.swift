import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import AiotaskWorker
import Foundation
import NIOCore
import NIOPosix
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The shipped executables, run as an operator would: `aiotaskd` with a config file or options, `aiotask` against it.
@Suite("Daemon and CLI")
struct DaemonTests {
    @Test("aiotaskd --config serves with the file's settings; SIGTERM stops it with 0 and removes its socket")
    func configFile() async throws {
        let daemon = try await RunningDaemon.start(
            config: """
                # the handler and size of the pool
                handler = sha256
                workers = 1
                listen = unix:{SOCKET}
                """
        )
        try await daemon.stopAfter {
            let submit = try await runCLI(["submit", "--server", daemon.server, "abc"])
            #expect(submit.exit == .exited(0), "stderr: \(submit.standardError)")
            #expect(submit.standardOutput == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")

            let status = try await runCLI(["status", "--server", daemon.server, "--json"])
            #expect(status.exit == .exited(0), "stderr: \(status.standardError)")
            let json = try JSONSerialization.jsonObject(with: Data(status.standardOutput.utf8)) as? [String: Any]
            let workers = try #require(json?["workers"] as? [String: Any], "no workers in \(status.standardOutput)")
            #expect(workers["configured"] as? Int == 1)
            #expect(json?["handler"] as? String == "sha256")
        }
    }

    @Test("aiotask submit of a failing task exits 1 with the reason on stderr")
    func submitFailure() async throws {
        let daemon = try await RunningDaemon.start(arguments: ["--handler", "fail", "--workers", "1"])
        try await daemon.stopAfter {
            let submit = try await runCLI(["submit", "--server", daemon.server, "disk on fire"])
            #expect(submit.exit == .exited(1))
            #expect(submit.standardOutput.isEmpty)
            #expect(submit.standardError.contains("handler error"))
            #expect(submit.standardError.contains("disk on fire"))
        }
    }

    @Test("aiotask bench runs every task and reports its latency as JSON")
    func bench() async throws {
        let daemon = try await RunningDaemon.start(arguments: ["--handler", "echo", "--workers", "2"])
        try await daemon.stopAfter {
            let report = try await runBench(["--server", daemon.server])
            let latency = try #require(report["latency_us"] as? [String: Any])
            #expect((latency["p50"] as? Double ?? 0) > 0)
        }
    }

    @Test(
        "an invalid config file makes aiotaskd exit 78, naming the file and line",
        arguments: [
            ("workers = 2\nlisten = unix:/tmp/x.sock\ncolour = blue\n", 3, "colour: unknown setting"),
            ("# pool\nworkers = many\n", 2, "workers: 'many' is not a whole number"),
            ("\n\n\n\nworkers = 0\n", 5, "workers: must be from 1 to 4096"),
            ("listen = nowhere\n", 1, "listen: invalid address 'nowhere'"),
        ]
    )
    func invalidConfig(text: String, line: Int, message: String) async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/aiotaskd.conf"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        let daemon = try SpawnedProcess.spawn(Products.aiotaskd, ["--config", path], removing: systemdVariables)
        #expect(try await daemon.wait() == .exited(78))
        #expect(daemon.standardError.contains("\(path):\(line): \(message)"), "stderr: \(daemon.standardError)")
    }

    @Test(
        "every shipped program and subcommand answers --help, -h and --version with its text and exit status 0",
        arguments: [
            (Products.aiotaskd, [], "USAGE: aiotaskd"),
            (Products.exampleWorker, [], "USAGE: aiotask-example-worker"),
            (Products.aiotask, [], "USAGE: aiotask <subcommand>"),
            (Products.aiotask, ["submit"], "USAGE: aiotask submit"),
            (Products.aiotask, ["status"], "USAGE: aiotask status"),
            (Products.aiotask, ["top"], "USAGE: aiotask top"),
            (Products.aiotask, ["bench"], "USAGE: aiotask bench"),
        ]
    )
    func helpAndVersion(program: String, subcommand: [String], usage: String) async throws {
        for flag in ["--help", "-h"] {
            // The built executable, as packaged: parsing in process would not catch a crash in its `main`.
            let run = try SpawnedProcess.spawn(program, subcommand + [flag], removing: systemdVariables)
            let exit = try await run.wait()
            #expect(exit == .exited(0), "\(program) \(subcommand) \(flag): \(exit); stderr: \(run.standardError)")
            #expect(run.standardOutput.contains(usage), "\(program) \(subcommand) \(flag): \(run.standardOutput)")
            #expect(run.standardOutput.contains("--version"), "no --version in: \(run.standardOutput)")
        }
        let version = try SpawnedProcess.spawn(program, subcommand + ["--version"], removing: systemdVariables)
        let exit = try await version.wait()
        #expect(exit == .exited(0), "\(program) \(subcommand) --version: \(exit); stderr: \(version.standardError)")
        #expect(version.standardOutput == AiotaskVersion.current + "\n")
    }

    @Test("a busy port makes aiotaskd exit 1 naming the address and the reason in plain words, with no drain logged")
    func busyPort() async throws {
        // The port is held by a listening socket of this test for as long as the daemon runs.
        let holder = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: 0).get()
        defer { holder.close(promise: nil) }
        let port = try #require(holder.localAddress?.port)
        let daemon = try SpawnedProcess.spawn(
            Products.aiotaskd,
            ["--listen", "tcp://127.0.0.1:\(port)", "--workers", "1"],
            removing: systemdVariables
        )
        #expect(try await daemon.wait() == .exited(1))
        Self.expectPlainStartFailure(
            daemon.standardError,
            "aiotaskd: cannot listen on tcp://127.0.0.1:\(port): address already in use"
        )
    }

    @Test("a unix socket in a missing directory makes aiotaskd exit 1 naming the path, with no drain logged")
    func missingSocketDirectory() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/no/such/dir/aiotask.sock"
        let daemon = try SpawnedProcess.spawn(
            Products.aiotaskd,
            ["--listen", "unix:\(path)", "--workers", "1"],
            removing: systemdVariables
        )
        #expect(try await daemon.wait() == .exited(1))
        Self.expectPlainStartFailure(
            daemon.standardError,
            "aiotaskd: cannot listen on unix:\(path): no such file or directory"
        )
    }

    /// `stderr` of a daemon that could not start ends with `line`, names no library call or errno, and logs no
    /// drain (nothing was ever accepted).
    static func expectPlainStartFailure(_ stderr: String, _ line: String) {
        #expect(stderr.hasSuffix(line + "\n"), "stderr: \(stderr)")
        #expect(!stderr.contains("errno") && !stderr.contains("bind("), "stderr: \(stderr)")
        #expect(!stderr.contains("draining"), "stderr: \(stderr)")
    }

    @Test("aiotask submit on a handler program that exits 3 without a word on stderr prints no empty parentheses")
    func handlerExitWithoutStderr() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let script = directory + "/exit3.sh"
        // Reads its task's length prefix, then exits 3, silently.
        try "#!/bin/sh\nhead -c 4 >/dev/null\nexit 3\n".write(toFile: script, atomically: true, encoding: .utf8)
        #expect(chmod(script, 0o755) == 0)
        let daemon = try await RunningDaemon.start(arguments: ["--handler", "exec:/bin/sh \(script)", "--workers", "1"])
        try await daemon.stopAfter {
            let submit = try await runCLI(["submit", "--server", daemon.server, "anything"])
            #expect(submit.exit == .exited(1))
            #expect(submit.standardError.contains("exited with code 3"), "stderr: \(submit.standardError)")
            #expect(!submit.standardError.contains("()"), "stderr: \(submit.standardError)")
        }
    }

    @Test("aiotaskd refuses a config file it cannot read")
    func missingConfig() async throws {
        let daemon = try SpawnedProcess.spawn(
            Products.aiotaskd,
            ["--config", "/nonexistent/aiotaskd.conf"],
            removing: systemdVariables
        )
        #expect(try await daemon.wait() == .exited(78))
        #expect(daemon.standardError.contains("cannot read /nonexistent/aiotaskd.conf"))
    }
    @Test(
        "a reload that changes the log level, which only a restart applies, logs a warning naming it and applies the rest"
    )
    func reloadWarnsOfSettingsNeedingRestart() async throws {
        let daemon = try await RunningDaemon.start(config: "workers = 1\nlog-level = info\nlisten = unix:{SOCKET}\n")
        try await daemon.stopAfter {
            try daemon.writeConfig("workers = 2\nlog-level = debug\nlisten = unix:{SOCKET}\n")
            try await daemon.reload(count: 1)
            let log = daemon.process.standardError
            #expect(log.contains("log-level cannot change on reload; restart the service to apply it"), "\(log)")
            #expect(!log.contains("listen cannot change"), "\(log)")
            try await withTimeout(.seconds(30)) {
                let client = try await AiotaskClient.connect(to: .unix(path: daemon.socket))
                let info = try await client.waitForInfo { $0.workers.configured == 2 }
                #expect(info.workers.configured == 2)
                try await client.close()
            }
        }
    }

    @Test(
        "after a reload lowers max-payload, a larger task on a connection opened before fails payloadTooLarge; the pool stays whole, and a task queued before the reload still gets its result"
    )
    func reloadLowersPayloadLimit() async throws {
        let daemon = try await RunningDaemon.start(
            config: "handler = chaos\nworkers = 1\nprefetch = 0\nlisten = unix:{SOCKET}\n"
        )
        let hold = 1500 * testSlowdown
        try await daemon.stopAfter {
            try await withTimeout(.seconds(30)) {
                let client = try await AiotaskClient.connect(to: .unix(path: daemon.socket))
                let large = "echo " + String(repeating: "x", count: 1995)
                // Queued behind a running task, so it reaches a process started after the reload.
                let running = try await client.enqueue("sleep \(hold)")
                _ = try await client.waitForInfo { $0.tasks.running == 1 }
                let queued = try await client.enqueue(large)
                // Taken by the daemon before the reload, under the old limit: `enqueue` returns once the task is
                // written, and the answer to a query on the same connection comes after the daemon read it.
                _ = try await client.waitForInfo { $0.tasks.submitted == 2 }

                try daemon.writeConfig(
                    "handler = chaos\nworkers = 1\nprefetch = 0\nmax-payload = 1024\nlisten = unix:{SOCKET}\n"
                )
                try await daemon.reload(count: 1)

                let failure = try await client.failure(of: large)
                #expect(failure?.reason == .payloadTooLarge, "\(String(describing: failure))")
                #expect(failure?.message == "task of 2000 bytes exceeds the limit of 1024 bytes")
                #expect(try await running.text() == "slept \(hold)")
                #expect(try await queued.text() == String(large.dropFirst(5)))
                let info = try await client.waitForInfo { $0.workers.alive == 1 && $0.workers.busy == 0 }
                #expect(info.tasks.failed == 1, "\(info.tasks)")
                #expect(try await client.submit("echo small") == Array("small".utf8))
                try await client.close()
            }
        }
        #expect(!daemon.process.standardError.contains("broke its link"), "\(daemon.process.standardError)")
    }

    @Test(
        "reloads cycling workers 2, 1, 2, 3, 2 while tasks run keep every AIOTASK_WORKER_INDEX in 0..<workers, each held by one process; status reports the file's workers"
    )
    func reloadsKeepWorkerIndexes() async throws {
        let script = try HandlerScript(
            """
            import os
            import time

            for task in tasks():
                time.sleep(int(task) / 1000)
                reply(0, os.environ["AIOTASK_WORKER_INDEX"].encode())
            """
        )
        defer { script.remove() }
        @Sendable func config(workers: Int) -> String {
            "handler = exec:\(HandlerScript.python) \(script.path)\nworkers = \(workers)\nlisten = unix:{SOCKET}\n"
        }
        let daemon = try await RunningDaemon.start(config: config(workers: 2))
        try await daemon.stopAfter {
            try await withTimeout(.seconds(60)) {
                let client = try await AiotaskClient.connect(to: .unix(path: daemon.socket))
                /// The indexes of the processes that run `count` tasks at once, one each.
                func indexes(ofTasksAtOnce count: Int, milliseconds: Int) async throws -> [Int] {
                    let handles = try await (0..<count).asyncMap { _ in try await client.enqueue("\(milliseconds)") }
                    return try await handles.asyncMap { try #require(Int(try await $0.text())) }.sorted()
                }
                #expect(try await indexes(ofTasksAtOnce: 2, milliseconds: 200) == [0, 1])
                // Each step reloads while every process runs a long task, so the slots leaving the pool still hold
                // their index: from 2 to 1 and straight back to 2, then to 3, then to 2.
                let hold = 1500 * testSlowdown
                var workers = 2
                var reloads = 0
                for steps in [[1, 2], [3], [2]] {
                    let holding = try await (0..<workers).asyncMap { _ in try await client.enqueue("\(hold)") }
                    _ = try await client.waitForInfo { $0.tasks.running == workers }
                    for next in steps {
                        try daemon.writeConfig(config(workers: next))
                        reloads += 1
                        try await daemon.reload(count: reloads)
                        let during = try await client.serverInfo()
                        #expect(during.workers.configured == next, "after the reload to \(next): \(during.workers)")
                        #expect(during.tasks.running == workers, "the long tasks ended before the reload to \(next)")
                    }
                    let held = try await holding.asyncMap { try #require(Int(try await $0.text())) }.sorted()
                    #expect(held == Array(0..<workers), "the tasks running across the reloads to \(steps)")
                    workers = steps.last!
                    _ = try await client.waitForInfo {
                        $0.workers.alive == workers && $0.workers.busy == 0 && $0.workers.configured == workers
                    }
                    let seen = try await indexes(ofTasksAtOnce: workers, milliseconds: 200)
                    #expect(seen == Array(0..<workers), "indexes with \(workers) workers")
                }
                try await client.close()
            }
            let status = try await runCLI(["status", "--server", daemon.server, "--json"])
            let json = try JSONSerialization.jsonObject(with: Data(status.standardOutput.utf8)) as? [String: Any]
            let workers = try #require(json?["workers"] as? [String: Any], "no workers in \(status.standardOutput)")
            #expect(workers["configured"] as? Int == 2)
        }
    }
}

extension Array {
    /// `transform` applied to each element in turn.
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var results: [T] = []
        for element in self { results.append(try await transform(element)) }
        return results
    }
}

extension Range where Bound == Int {
    /// `transform` applied to each number in turn.
    func asyncMap<T>(_ transform: (Int) async throws -> T) async rethrows -> [T] {
        var results: [T] = []
        for element in self { results.append(try await transform(element)) }
        return results
    }
}

// Variables through which a service manager talks to aiotaskd; a test's daemon must not see the runner's.
let systemdVariables: Set<String> = [
    "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM",
]

/// What a finished command printed and how it ended.
struct CommandOutput {
    var exit: ProcessExit
    var standardOutput: String
    var standardError: String
}

/// Runs the `aiotask` CLI to its end.
func runCLI(_ arguments: [String], limit: Duration = .seconds(20)) async throws -> CommandOutput {
    let process = try SpawnedProcess.spawn(Products.aiotask, arguments, removing: ["AIOTASK_SERVER"])
    let exit = try await process.wait(limit: limit)
    return CommandOutput(exit: exit, standardOutput: process.standardOutput, standardError: process.standardError)
}

/// Runs `aiotask bench --json` with `arguments` for 2,000 tasks over 2 connections, checks that it exits 0 with every
/// task done and whole, and returns its report.
func runBench(_ arguments: [String]) async throws -> [String: Any] {
    let bench = try await runCLI(
        ["bench"] + arguments + ["--tasks", "2000", "--concurrency", "32", "--connections", "2", "--json"],
        limit: .seconds(40)
    )
    #expect(bench.exit == .exited(0), "stderr: \(bench.standardError)")
    let json = try JSONSerialization.jsonObject(with: Data(bench.standardOutput.utf8)) as? [String: Any]
    let report = try #require(json, "not a JSON object: \(bench.standardOutput)")
    #expect(report["tasks"] as? Int == 2000)
    #expect(report["failed"] as? Int == 0)
    #expect(report["mismatched"] as? Int == 0)
    return report
}

/// An `aiotaskd` process listening on a Unix socket in a directory of its own.
struct RunningDaemon {
    let process: SpawnedProcess
    let directory: String
    let socket: String

    /// The address to give `aiotask --server`.
    var server: String { "unix:\(socket)" }

    /// Starts aiotaskd with `arguments` (and `--config` with `config`, where `{SOCKET}` stands for the socket path,
    /// or `--listen` on the socket) and `environment` added to the test's, and waits until it is ready. The socket
    /// is `aiotask.sock` in `directory`, a new one by default. `launcher` is a command that execs aiotaskd, as
    /// `setpriv` does after changing the process's privileges.
    static func start(
        arguments: [String] = [],
        config: String? = nil,
        environment: [String: String] = [:],
        in directory: String? = nil,
        launcher: [String] = []
    ) async throws -> RunningDaemon {
        let directory = try directory ?? makeTemporaryDirectory()
        let socket = directory + "/aiotask.sock"
        var arguments = arguments + ["--kill-grace", "0.5"]
        if let config {
            let path = directory + "/aiotaskd.conf"
            try config.replacingOccurrences(of: "{SOCKET}", with: socket).write(
                toFile: path,
                atomically: true,
                encoding: .utf8
            )
            arguments += ["--config", path]
        } else {
            arguments += ["--listen", "unix:\(socket)"]
        }
        let process = try SpawnedProcess.spawn(
            launcher.first ?? Products.aiotaskd,
            launcher.isEmpty ? arguments : launcher.dropFirst() + [Products.aiotaskd] + arguments,
            environment: environment,
            removing: systemdVariables
        )
        do {
            try await process.waitForStandardError(containing: "ready")
        } catch {
            process.killGroup()
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
        return RunningDaemon(process: process, directory: directory, socket: socket)
    }

    /// Replaces the daemon's config file in one step (so a reload never reads half of it); `{SOCKET}` stands for the
    /// socket path.
    func writeConfig(_ text: String) throws {
        let path = directory + "/aiotaskd.conf"
        try text.replacingOccurrences(of: "{SOCKET}", with: socket).write(
            toFile: path + ".new",
            atomically: false,
            encoding: .utf8
        )
        guard rename(path + ".new", path) == 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
    }

    /// Sends SIGHUP and waits until the daemon has logged its `count`th successful reload.
    func reload(count: Int, limit: Duration = .seconds(20)) async throws {
        process.signal(SIGHUP)
        try await withTimeout(limit) {
            while process.standardError.components(separatedBy: "configuration reloaded").count - 1 < count {
                try await Task.sleep(for: .milliseconds(5))
            }
        }
    }

    /// Runs `body`, then stops the daemon with SIGTERM and checks that it exits 0 and removes its socket.
    func stopAfter(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch {
            process.killGroup()
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
        process.signal(SIGTERM)
        let exit = try await process.wait()
        #expect(exit == .exited(0), "stderr: \(process.standardError)")
        #expect(process.standardError.contains("received SIGTERM"))
        #expect(access(socket, F_OK) != 0, "the socket file is left behind")
        try? FileManager.default.removeItem(atPath: directory)
    }
}
