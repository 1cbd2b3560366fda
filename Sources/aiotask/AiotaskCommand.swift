import AiotaskClient
import AiotaskProtocol
import ArgumentParser
import Foundation

/// The `aiotask` command: submit tasks to an aiotask server, show its statistics, measure its speed.
@main
struct AiotaskCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "aiotask",
        abstract: "Submit tasks to an aiotask server, show its statistics, or measure its throughput.",
        discussion: """
            The server is named by --server, else by $AIOTASK_SERVER, else unix:\(ServerAddress.defaultUnixPath). \
            Addresses look like tcp://127.0.0.1:4242, tcp://[::1]:4242 or unix:/path/to/socket.

            Exit status: 0 success; 1 a task failed (bench: a task failed or returned the wrong result); \
            2 connection, server or usage problem.
            """,
        version: AiotaskVersion.current,
        subcommands: [
            SubmitCommand.self, StatusCommand.self, TopCommand.self, BenchCommand.self, DrainCommand.self,
            UndrainCommand.self,
        ]
    )

    /// Exit status when a task failed.
    static let taskFailedExitCode = ExitCode(1)
    /// Exit status for connection, server and usage problems.
    static let problemExitCode = ExitCode(2)

    /// Runs the command like `AsyncParsableCommand.main()`, but with exit status 2 for usage errors.
    static func main() async {
        do {
            var command = try await asyncParseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            if exitCode(for: error) == .validationFailure {
                Terminal.writeError(fullMessage(for: error))
                Foundation.exit(problemExitCode.rawValue)
            }
            exit(withError: error)
        }
    }

    /// Reports `error` on stderr in one line and returns the exit status it calls for.
    static func report(_ error: any Error) -> ExitCode {
        switch error {
        case let failure as TaskFailure:
            let detail = failure.message.isEmpty ? "" : ": \(failure.message)"
            Terminal.writeError("aiotask: task failed (\(failure.reason))\(detail)")
            return taskFailedExitCode
        case let error as AiotaskClientError:
            Terminal.writeError("aiotask: \(error)")
            if error.code == .handshakeFailed {
                Terminal.writeError(
                    "aiotask: for an original aiotask 0.0.2 server, give --legacy (or --protocol automatic)"
                )
            }
        case let error as AddressError:
            Terminal.writeError("aiotask: \(error)")
        default:
            Terminal.writeError("aiotask: \(error)")
        }
        return problemExitCode
    }
}
