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
            when one is down or stopping. With --traceparent the task joins that W3C trace: the server logs its \
            trace id and span id with the task (TRACE_ID, SPAN_ID) and hands it to the handler.
            """
    )

    @OptionGroup var options: ServerOptions

    @Argument(help: "The task, as text. Without it the task is read from stdin.")
    var text: String?

    @Option(name: .long, help: ArgumentHelp("Seconds the task may run (default: the server's).", valueName: "seconds"))
    var timeout: Double?

    @Option(
        name: .customLong("traceparent"),
        help: ArgumentHelp(
            "A W3C trace context for the task: 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>.",
            valueName: "traceparent"
        )
    )
    var traceParentText: String?

    func validate() throws {
        if let timeout, !(timeout > 0 && timeout.isFinite) {
            throw ValidationError("--timeout must be a positive number of seconds")
        }
        if let traceParentText {
            do {
                _ = try TraceParent(parsing: traceParentText)
            } catch {
                throw ValidationError("--traceparent: \(error)")
            }
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
        let traceParent = try traceParentText.map { try TraceParent(parsing: $0) }
        if try options.addresses().count > 1 {
            // The pool resubmits a task no server started, to another server, by itself.
            do {
                let result = try await options.withPool {
                    try await $0.submit(payload, timeout: timeout, traceParent: traceParent)
                }
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
                    try await client.submit(payload, timeout: timeout, traceParent: traceParent)
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
