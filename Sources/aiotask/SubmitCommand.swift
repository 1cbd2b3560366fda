import AiotaskClient
import AiotaskProtocol
import ArgumentParser
import Foundation
import NIOCore

/// `aiotask submit`: runs one task and writes its result to stdout.
struct SubmitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "submit",
        abstract: "Run one task and write its result to stdout.",
        discussion: """
            The task is TEXT, or all of stdin when TEXT is not given; the result bytes are written to stdout as \
            they are. When the task fails, the reason goes to stderr and the exit status is 1; connection and \
            server problems exit with 2. A task the server refused because it was stopping (so never started) \
            is submitted again on a new connection, a few times: a service restarting under systemd's socket \
            serves it. With several --server addresses the task goes to one of them (--balance), and to another \
            when one is down or stopping.
            """
    )

    @OptionGroup var options: ServerOptions

    @Argument(help: "The task, as text. Without it the task is read from stdin.")
    var text: String?

    @Option(name: .long, help: ArgumentHelp("Seconds the task may run (default: the server's).", valueName: "seconds"))
    var timeout: Double?

    func validate() throws {
        if let timeout, !(timeout > 0 && timeout.isFinite) {
            throw ValidationError("--timeout must be a positive number of seconds")
        }
    }

    func run() async throws {
        let payload: ByteBuffer
        if let text {
            payload = ByteBuffer(string: text)
        } else {
            payload = ByteBuffer(bytes: FileHandle.standardInput.readDataToEndOfFile())
        }
        let timeout = self.timeout.map { Duration.seconds($0) }
        if try options.addresses().count > 1 {
            // The pool resubmits a task no server started, to another server, by itself.
            do {
                let result = try await options.withPool { try await $0.submit(payload, timeout: timeout) }
                FileHandle.standardOutput.write(Data(result.readableBytesView))
                return
            } catch {
                throw AiotaskCommand.report(error)
            }
        }
        var attempt = 1
        while true {
            do {
                let result = try await options.withClient { client in
                    try await client.submit(payload, timeout: timeout)
                }
                FileHandle.standardOutput.write(Data(result.readableBytesView))
                return
            } catch let failure as TaskFailure where failure.reason == .shuttingDown && attempt < ServerOptions.attempts
            {
                attempt += 1
                try await Task.sleep(for: ServerOptions.pause(before: attempt))
            } catch {
                throw AiotaskCommand.report(error)
            }
        }
    }
}
