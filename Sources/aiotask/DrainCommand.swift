import AiotaskClient
import AiotaskProtocol
import ArgumentParser

/// `aiotask drain` and `aiotask undrain`: an operator takes a host out of its balancer's rotation before
/// maintenance, and puts it back.
struct DrainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drain",
        abstract: "Put the server into drain for HAProxy's agent check: the balancer sends it no new connection.",
        discussion: """
            The server's agent check (its --agent-listen) then answers "up drain", so HAProxy stops sending it new \
            connections; the connections already open keep being served, tasks included. Lasts until \
            "aiotask undrain" or the server stops. Prints what the agent check now answers.
            """
    )

    @OptionGroup var options: ServerOptions

    func run() async throws {
        try await DrainCommand.setDrained(true, options: options)
    }

    /// Sends `DRAIN` and prints the agent check's answer that results.
    static func setDrained(_ drained: Bool, options: ServerOptions) async throws {
        do {
            try await options.withClient { client in
                let info = try await client.setDrained(drained)
                print("agent check: \(info.agentCheck ?? "unknown (the server is older than the agent check)")")
            }
        } catch {
            throw AiotaskCommand.report(error)
        }
    }
}

/// `aiotask undrain`: lifts an operator's drain.
struct UndrainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "undrain",
        abstract: "Lift an operator's drain: the agent check says ready again (unless the server is busy or failing)."
    )

    @OptionGroup var options: ServerOptions

    func run() async throws {
        try await DrainCommand.setDrained(false, options: options)
    }
}
