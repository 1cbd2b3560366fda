import AiotaskProtocol
import AiotaskTestSupport
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
    /// With several servers: how `aiotask bench --balance` spreads the tasks over them (its `AiotaskClientPool`).
    var balance = "least-outstanding"
    /// For `tls://` servers: the PEM file of the authority their certificates chain to (`--tls-ca`).
    var tlsAuthority: String?

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
        try await checkedRun(client: client, against: [server])
    }

    /// Runs the load against several servers at once: `aiotask bench` balances it over them with its
    /// `AiotaskClientPool`, `connections` to each.
    func checkedRun(client: String, against servers: [ServerAddress]) async throws -> Report {
        var arguments = [
            "bench", "--server", servers.map { "\($0)" }.joined(separator: ","), "--balance", balance, "--tasks",
            "\(tasks)", "--concurrency", "\(concurrency)",
            "--size", "\(size)", "--connections", "\(connections)", "--json",
        ]
        if !verify { arguments.append("--no-verify") }
        if let tlsAuthority { arguments += ["--tls-ca", tlsAuthority] }
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

    /// Runs `executable` with `arguments` as a ``SpawnedProcess`` (the one way aiotask starts a child: a process
    /// group of its own, only its standard streams), collects its output, and awaits its exit without a thread.
    static func run(_ executable: String, _ arguments: [String]) async throws -> ClientRun {
        let process: SpawnedProcess
        do {
            process = try SpawnedProcess.spawn(executable, arguments)
        } catch {
            throw DaemonUnderTest.Failure(description: "cannot start \(executable): \(error)")
        }
        // The longest measurement runs for seconds; the limit only stops a hung one.
        let status: Int32 =
            switch try await process.wait(limit: .seconds(600)) {
            case .exited(let code): code
            case .signaled(let signal): 128 + signal
            }
        return ClientRun(
            status: status,
            standardOutput: Data(process.standardOutputBytes),
            standardError: process.standardError.trimmingCharacters(in: .whitespacesAndNewlines)
        )
    }
}
