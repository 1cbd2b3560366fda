import AiotaskClient
import AiotaskProtocol
import ArgumentParser
import Foundation
import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// `aiotask top`: the pool of one server, live — each process's pid, state, task and how long it has run, memory,
/// tasks done and restarts; the queue, throughput and failures per second with a sparkline of the last minute.
struct TopCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "top",
        abstract: "Show the server's pool live, process by process; q or Ctrl-C quits.",
        discussion: """
            Refreshed every second. Needs an aiotaskd that speaks protocol version 2 (POOL); --once and --json \
            need no terminal.
            """
    )

    @OptionGroup var options: ServerOptions

    @Flag(name: .long, help: "Print one screen and exit.")
    var once = false

    @Flag(name: .long, help: "Print the pool's state as one JSON object (the server's POOL) and exit.")
    var json = false

    @Option(name: .long, help: ArgumentHelp("Seconds between refreshes.", valueName: "seconds"))
    var interval: Double = 1

    func validate() throws {
        guard interval >= 0.1, interval.isFinite else { throw ValidationError("--interval must be at least 0.1") }
    }

    func run() async throws {
        do {
            try await options.withClient { client in
                if json {
                    let bytes = try await client.poolStatusJSON()
                    FileHandle.standardOutput.write(Data(bytes.readableBytesView) + Data("\n".utf8))
                } else if once || !Terminal.stdinIsTerminal {
                    var view = TopView()
                    view.record(try await client.poolStatus(), at: Terminal.monotonicSeconds())
                    let size = Terminal.size()
                    print(view.lines(width: size.columns, server: "\(client.address)").joined(separator: "\n"))
                } else {
                    try await live(client)
                }
            }
        } catch {
            throw AiotaskCommand.report(error)
        }
    }

    /// Redraws every `interval` until `q` or Ctrl-C, in the terminal's alternate screen, in raw mode; both are
    /// undone on the way out, whatever ends the loop.
    private func live(_ client: AiotaskClient) async throws {
        let keys = try Terminal.RawMode()
        defer { keys.restore() }
        var view = TopView()
        let server = "\(client.address)"
        while true {
            view.record(try await client.poolStatus(), at: Terminal.monotonicSeconds())
            let size = Terminal.size()
            let lines = view.lines(width: size.columns, height: size.rows - 1, server: server)
            // Home, each line cleared to its end, the rest of the screen cleared, the hint on the last line.
            var screen = "\u{1B}[H"
            for line in lines { screen += line + "\u{1B}[K\r\n" }
            screen += "\u{1B}[J\u{1B}[\(size.rows);1Hq or Ctrl-C quits\u{1B}[K"
            Terminal.writeOutput(screen)
            if await keys.waitForQuit(seconds: interval) { return }
        }
    }
}
