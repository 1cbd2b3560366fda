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

    @Option(
        name: .customLong("protocol"),
        help: ArgumentHelp(
            "The protocol to speak: extended, legacy (only the frames of aiotask 0.0.2, for an original server) or automatic (extended, else legacy when the server does not answer HELLO within 2 s).",
            valueName: "protocol"
        )
    )
    var protocolChoice: ProtocolChoice?

    @Flag(name: .long, help: "Same as --protocol legacy.")
    var legacy = false

    /// The protocol from `--protocol` or `--legacy`; extended by default.
    var wireProtocol: WireProtocol {
        legacy ? .legacy : protocolChoice?.wireProtocol ?? .extended
    }

    func validate() throws {
        if legacy, let protocolChoice, protocolChoice != .legacy {
            throw ValidationError("--legacy contradicts --protocol \(protocolChoice.rawValue)")
        }
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

    /// Connects to the server, trying again a few times when it closes the connection before the handshake
    /// (it is restarting, or at its connection limit): nothing was sent, so that is safe. The connection runs on
    /// `eventLoop` if given.
    func connect(on eventLoop: (any EventLoop)? = nil) async throws -> AiotaskClient {
        let address = try address()
        var attempt = 1
        while true {
            do {
                return try await AiotaskClient.connect(
                    to: address,
                    eventLoopGroup: eventLoop,
                    connectTimeout: Duration.seconds(connectTimeout),
                    protocol: wireProtocol
                )
            } catch let error as AiotaskClientError
                where error.code == .closedBeforeHandshake && attempt < Self.attempts
            {
                attempt += 1
                try await Task.sleep(for: Self.pause(before: attempt))
            }
        }
    }

    /// How many times a command tries a connection, or a task the server did not start because it was stopping.
    static let attempts = 5

    /// The pause before try number `attempt`: 25 ms, 50 ms, 100 ms, 200 ms.
    static func pause(before attempt: Int) -> Duration {
        .milliseconds(25 << min(attempt - 2, 6))
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

/// A value of `--protocol`.
enum ProtocolChoice: String, ExpressibleByArgument, CaseIterable {
    case extended, legacy, automatic

    var wireProtocol: WireProtocol {
        switch self {
        case .extended: .extended
        case .legacy: .legacy
        case .automatic: .automatic
        }
    }
}

extension Duration {
    /// A duration from a command-line number of seconds, to the millisecond.
    static func seconds(_ seconds: Double) -> Duration {
        .milliseconds(Int64((seconds * 1000).rounded()))
    }
}
