import AiotaskClient
import AiotaskProtocol
import ArgumentParser
import Foundation
import NIOCore

/// `aiotask status`: shows the server's live statistics.
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the server's workers, queue and task counters."
    )

    @OptionGroup var options: ServerOptions

    @Flag(name: .long, help: "Print the server's JSON object as it sent it.")
    var json = false

    func run() async throws {
        do {
            try await options.withClient { client in
                if json {
                    let bytes = try await client.serverInfoJSON()
                    FileHandle.standardOutput.write(Data(bytes.readableBytesView) + Data("\n".utf8))
                } else {
                    print(Self.render(try await client.serverInfo(), address: client.address))
                }
            }
        } catch {
            throw AiotaskCommand.report(error)
        }
    }

    /// The statistics as aligned `label  value` lines.
    static func render(_ info: ServerInfo, address: ServerAddress) -> String {
        var rows: [(String, String)] = [
            ("server", "\(address)"),
            ("version", "\(info.version) (pid \(info.pid), up \(formatUptime(info.uptimeSeconds)))"),
            ("handler", info.handler),
            (
                "workers",
                "\(info.workers.alive) alive of \(info.workers.configured), \(info.workers.busy) busy, "
                    + "\(info.workers.restarts) restarts"
            ),
            ("queue", "\(info.queue.length) waiting (capacity \(info.queue.capacity))"),
            (
                "tasks",
                "\(info.tasks.submitted) submitted, \(info.tasks.succeeded) succeeded, \(info.tasks.failed) failed, "
                    + "\(info.tasks.running) running"
            ),
            ("throughput", String(format: "%.1f tasks/s", info.tasksPerSecond)),
            ("connections", "\(info.connections)"),
        ]
        // What HAProxy's agent check hears now; a server older than the agent check does not say.
        if let agentCheck = info.agentCheck { rows.append(("agent check", agentCheck)) }
        let width = rows.map(\.0.count).max() ?? 0
        return rows.map { label, value in
            label + String(repeating: " ", count: width - label.count + 2) + value
        }.joined(separator: "\n")
    }

    /// `3d 4h 5m 6s`, leaving out leading zero units.
    static func formatUptime(_ seconds: Double) -> String {
        var rest = Int(seconds.rounded(.down))
        let days = rest / 86_400
        rest %= 86_400
        let hours = rest / 3600
        rest %= 3600
        let minutes = rest / 60
        let secs = rest % 60
        var parts: [String] = []
        if days > 0 { parts.append("\(days)d") }
        if days > 0 || hours > 0 { parts.append("\(hours)h") }
        if days > 0 || hours > 0 || minutes > 0 { parts.append("\(minutes)m") }
        parts.append("\(secs)s")
        return parts.joined(separator: " ")
    }
}
