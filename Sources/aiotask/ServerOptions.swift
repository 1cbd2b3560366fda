import AiotaskClient
import AiotaskProtocol
import ArgumentParser
import Foundation
import Logging
import NIOCore

/// The options every subcommand shares: which server, and how long connecting may take.
struct ServerOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "The server: tcp://HOST:PORT, tcp://[IPV6]:PORT, tls://HOST:PORT or unix:PATH.",
            discussion: """
                Default: $AIOTASK_SERVER, else unix:\(ServerAddress.defaultUnixPath). submit and bench take several \
                servers (repeated, or separated by commas) and balance their tasks over them (see --balance).
                """,
            valueName: "address"
        )
    )
    var server: [String] = []

    @Option(
        name: .long,
        help: ArgumentHelp(
            "How tasks are spread over several servers: \(BalancingStrategy.all.map(\.rawValue).joined(separator: ", ")).",
            valueName: "strategy"
        )
    )
    var balance: BalancingStrategy = .leastOutstanding

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

    @Option(
        name: .long,
        help: ArgumentHelp(
            "For tls:// servers: trust the certificate authorities of this PEM file instead of the system's.",
            valueName: "file"
        )
    )
    var tlsCa: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "For tls:// servers that require one: this client's certificate (PEM), with --tls-key.",
            valueName: "file"
        )
    )
    var tlsCertificate: String?

    @Option(name: .long, help: ArgumentHelp("The private key (PEM) of --tls-certificate.", valueName: "file"))
    var tlsKey: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "For tls:// servers: the name the server's certificate must carry, instead of the address's host.",
            valueName: "name"
        )
    )
    var tlsServerName: String?

    /// The TLS of `tls://` servers, from the `--tls-…` options.
    var tls: ClientTLSConfiguration {
        ClientTLSConfiguration(
            trustRoots: tlsCa.map { .file($0) } ?? .system,
            serverName: tlsServerName,
            certificateFile: tlsCertificate,
            keyFile: tlsKey
        )
    }

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
        let addresses: [ServerAddress]
        do {
            addresses = try self.addresses()
        } catch {
            throw ValidationError("\(error)")
        }
        if (tlsCertificate == nil) != (tlsKey == nil) {
            throw ValidationError("--tls-certificate and --tls-key go together")
        }
        if addresses.count > 1 && wireProtocol != .extended {
            throw ValidationError("several servers need the extended protocol (no GOODBYE in the legacy one)")
        }
    }

    /// The addresses from `--server` (repeated, or separated by commas), else `$AIOTASK_SERVER` (which may list
    /// several too), else the default Unix socket.
    func addresses() throws -> [ServerAddress] {
        let texts =
            server.isEmpty
            ? [
                ProcessInfo.processInfo.environment["AIOTASK_SERVER"].flatMap { $0.isEmpty ? nil : $0 }
                    ?? "unix:\(ServerAddress.defaultUnixPath)"
            ] : server
        let addresses = try texts.flatMap { $0.split(separator: ",") }.map {
            try ServerAddress(parsing: $0.trimmingCharacters(in: .whitespaces))
        }
        guard !addresses.isEmpty else { throw ValidationError("--server names no address") }
        return addresses
    }

    /// The one server of a command that talks to one.
    func address() throws -> ServerAddress {
        let addresses = try addresses()
        guard addresses.count == 1 else {
            throw ValidationError("this command talks to one server; --server names \(addresses.count)")
        }
        return addresses[0]
    }

    /// The client pool over every `--server`, with `connections` connections to each, on `eventLoopGroup` (nil for
    /// NIO's singleton group); its `run()` must be running for tasks to go out.
    func pool(
        connectionsPerServer connections: Int = 1,
        eventLoopGroup: (any EventLoopGroup)? = nil
    ) throws -> AiotaskClientPool {
        AiotaskClientPool(
            addresses: try addresses(),
            configuration: .init(
                connectionsPerEndpoint: connections,
                strategy: balance,
                connectTimeout: Duration.seconds(connectTimeout),
                eventLoopGroup: eventLoopGroup,
                tls: tls
            ),
            // Warnings (an endpoint ejected) go to stderr; the normal path logs nothing there.
            logger: Logger(label: "aiotask") { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = .warning
                return handler
            }
        )
    }

    /// Runs `body` with a pool over every `--server` while the pool runs, then stops the pool.
    func withPool<Result: Sendable>(
        connectionsPerServer connections: Int = 1,
        eventLoopGroup: (any EventLoopGroup)? = nil,
        _ body: @escaping @Sendable (AiotaskClientPool) async throws -> Result
    ) async throws -> Result {
        let pool = try pool(connectionsPerServer: connections, eventLoopGroup: eventLoopGroup)
        return try await withThrowingTaskGroup(of: Result?.self) { group in
            group.addTask {
                try await pool.run()
                return nil
            }
            defer { group.cancelAll() }
            let result = try await body(pool)
            // Every task has its answer: nothing is lost by closing the connections at once.
            group.cancelAll()
            return result
        }
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
                    protocol: wireProtocol,
                    tls: tls
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

extension BalancingStrategy: ExpressibleByArgument {
    public init?(argument: String) {
        self.init(rawValue: argument)
    }

    public static var allValueStrings: [String] { all.map(\.rawValue) }
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
