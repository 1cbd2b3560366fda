import AiotaskClient
import AiotaskProtocol
import ArgumentParser
import Foundation
import NIOCore

/// The options every subcommand shares: which server, and how long connecting may take.
struct ServerOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "The server: tcp://HOST:PORT, tcp://[IPV6]:PORT or unix:PATH.",
            discussion: "Default: $AIOTASK_SERVER, else unix:\(ServerAddress.defaultUnixPath).",
            valueName: "address"
        )
    )
    var server: String?

    @Option(name: .long, help: ArgumentHelp("Seconds to wait for the connection and handshake.", valueName: "seconds"))
    var connectTimeout: Double = 10

    func validate() throws {
        guard connectTimeout > 0, connectTimeout.isFinite else {
            throw ValidationError("--connect-timeout must be a positive number of seconds")
        }
        do {
            _ = try address()
        } catch {
            throw ValidationError("\(error)")
        }
    }

    /// The address from `--server`, `$AIOTASK_SERVER`, or the default Unix socket.
    func address() throws -> ServerAddress {
        let text =
            server ?? ProcessInfo.processInfo.environment["AIOTASK_SERVER"].flatMap { $0.isEmpty ? nil : $0 }
            ?? "unix:\(ServerAddress.defaultUnixPath)"
        return try ServerAddress(parsing: text)
    }

    /// Connects to the server, on `eventLoop` if given.
    func connect(on eventLoop: (any EventLoop)? = nil) async throws -> AiotaskClient {
        try await AiotaskClient.connect(
            to: address(),
            eventLoopGroup: eventLoop,
            connectTimeout: Duration.seconds(connectTimeout)
        )
    }

    /// Connects, runs `body` with the client, and closes the client whatever `body` does.
    func withClient<Result>(_ body: (AiotaskClient) async throws -> Result) async throws -> Result {
        let client = try await connect()
        do {
            let result = try await body(client)
            try? await client.close()
            return result
        } catch {
            try? await client.close()
            throw error
        }
    }
}

extension Duration {
    /// A duration from a command-line number of seconds, to the millisecond.
    static func seconds(_ seconds: Double) -> Duration {
        .milliseconds(Int64((seconds * 1000).rounded()))
    }
}
