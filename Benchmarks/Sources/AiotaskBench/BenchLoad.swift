import AiotaskProtocol
import Foundation

/// One load of the suite: `aiotask bench` run as a process against a server, with how many tasks of what size, how
/// many in flight over how many connections.
///
/// The suite drives the shipped load generator rather than a copy of it, so its figures are what `aiotask bench` and
/// `scripts/bench-cpu` measure; the client then has a process of its own, as a user's has.
struct BenchLoad {
    var tasks: Int
    var concurrency: Int
    var size: Int
    var connections: Int
    /// Whether `aiotask bench` checks that each result equals its task (true for the echo handler).
    var verify = true

    /// What `aiotask bench --json` reports, as far as the suite reads it.
    struct Report: Decodable {
        struct Latency: Decodable {
            var p50: Double
            var p99: Double
        }

        var tasks: Int
        var failed: Int
        var mismatched: Int
        var tasksPerSecond: Double
        var latencyUs: Latency

        enum CodingKeys: String, CodingKey {
            case tasks, failed, mismatched
            case tasksPerSecond = "tasks_per_second"
            case latencyUs = "latency_us"
        }
    }

    /// Runs the load with the `aiotask` at `client` against `server`, and fails unless every task came back right:
    /// the suite measures only correct runs.
    func checkedRun(client: String, against server: ServerAddress) async throws -> Report {
        var arguments = [
            "bench", "--server", "\(server)", "--tasks", "\(tasks)", "--concurrency", "\(concurrency)",
            "--size", "\(size)", "--connections", "\(connections)", "--json",
        ]
        if !verify { arguments.append("--no-verify") }
        let run = try await ClientRun.run(client, arguments)
        guard run.status == 0 || run.status == 1,
            let report = try? JSONDecoder().decode(Report.self, from: run.standardOutput)
        else {
            throw DaemonUnderTest.Failure(
                description: "aiotask \(arguments.joined(separator: " ")) exited with status \(run.status): "
                    + run.standardError
            )
        }
        guard report.failed == 0, report.mismatched == 0, report.tasks == tasks else {
            throw DaemonUnderTest.Failure(
                description: "\(report.failed) of \(report.tasks) tasks failed and \(report.mismatched) returned a "
                    + "wrong result: \(run.standardError)"
            )
        }
        return report
    }
}

/// A finished run of a program: its exit status and what it wrote.
struct ClientRun {
    var status: Int32
    var standardOutput: Data
    var standardError: String

    /// Runs `executable` with `arguments`, its output into files, and awaits its exit without holding a thread.
    static func run(_ executable: String, _ arguments: [String]) async throws -> ClientRun {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("aiotask-bench-\(getpid())-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let outputPath = directory.appendingPathComponent("stdout")
        let errorPath = directory.appendingPathComponent("stderr")
        _ = FileManager.default.createFile(atPath: outputPath.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errorPath.path, contents: nil)
        let output = try FileHandle(forWritingTo: outputPath)
        let error = try FileHandle(forWritingTo: errorPath)

        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = output
        process.standardError = error
        let status: Int32 = try await withCheckedThrowingContinuation { continuation in
            process.terminationHandler = { continuation.resume(returning: $0.terminationStatus) }
            do {
                try process.run()
            } catch {
                process.terminationHandler = nil
                continuation.resume(
                    throwing: DaemonUnderTest.Failure(description: "cannot start \(executable): \(error)")
                )
            }
        }
        try? output.close()
        try? error.close()
        return ClientRun(
            status: status,
            standardOutput: (try? Data(contentsOf: outputPath)) ?? Data(),
            standardError: ((try? String(contentsOf: errorPath, encoding: .utf8)) ?? "")
                .trimmingCharacters(in: .whitespacesAndNewlines)
        )
    }
}
