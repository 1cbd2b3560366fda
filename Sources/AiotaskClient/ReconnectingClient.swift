import AiotaskProtocol
import NIOConcurrencyHelpers
import NIOCore

/// A client that stays connected to an aiotask server across its restarts, reloads and package upgrades.
///
/// ```swift
/// let client = try ReconnectingClient(to: "unix:/run/aiotask/aiotask.sock")
/// let result = try await client.submit(Array("hello".utf8))   // connects on first use
/// try await client.close()
/// ```
///
/// It holds one ``AiotaskClient`` connection at a time, made on first use and made again when the server says
/// `GOODBYE` (it is stopping) or the connection ends. A task the server never started is submitted again, on a
/// new connection if need be, until ``Configuration/retryLimit`` has passed since it was submitted:
/// - one the server refused or dropped with `FailureReason.shuttingDown` (it was stopping);
/// - one that could not be sent because the connection had ended or the server had said `GOODBYE`;
/// - one waiting for a connection: connecting is retried, with a backoff of 50 ms doubling up to 1 s.
///
/// A task that was sent and then lost with its connection is *not* submitted again, because it may have run: it
/// fails with ``AiotaskClientError/Code/connectionLost``, as on an ``AiotaskClient``; the next task connects again.
/// Every other outcome, success or ``TaskFailure``, is the task's own, as on an ``AiotaskClient``.
///
/// Tasks submitted concurrently share the connection, and a new connection is made once for all of them.
public final class ReconnectingClient: TaskSubmitter {
    /// How a ``ReconnectingClient`` connects, and how long it retries.
    public struct Configuration: Sendable {
        /// How long one connection attempt, handshake included, may take.
        public var connectTimeout: Duration
        /// How long a task may wait for a server that takes it, from its submission: past it, the task fails with
        /// the last error met (a ``TaskFailure`` of reason `FailureReason.shuttingDown` or an
        /// ``AiotaskClientError`` of connecting).
        public var retryLimit: Duration
        /// The largest result to accept, announced to the server as by ``AiotaskClient``; between 0 and 4 GiB − 1.
        public var maximumResultLength: Int
        /// The group connections run on; nil for `MultiThreadedEventLoopGroup.singleton`.
        public var eventLoopGroup: (any EventLoopGroup)?
        /// The protocol each connection speaks (see ``WireProtocol``). In the legacy protocol no server says
        /// `GOODBYE`, so no task is ever submitted again: a task lost with its connection fails with
        /// ``AiotaskClientError/Code/connectionLost``.
        public var wireProtocol: WireProtocol
        /// For a `tls://` server: trust roots, the name to check, the client's certificate.
        public var tls: ClientTLSConfiguration

        /// A configuration; the defaults suit a server restarted by systemd, whose drain may take its 30 s.
        public init(
            connectTimeout: Duration = .seconds(10),
            retryLimit: Duration = .seconds(60),
            maximumResultLength: Int = AiotaskClient.defaultMaximumResultLength,
            eventLoopGroup: (any EventLoopGroup)? = nil,
            protocol wireProtocol: WireProtocol = .extended,
            tls: ClientTLSConfiguration = ClientTLSConfiguration()
        ) {
            self.connectTimeout = connectTimeout
            self.retryLimit = retryLimit
            self.maximumResultLength = maximumResultLength
            self.eventLoopGroup = eventLoopGroup
            self.wireProtocol = wireProtocol
            self.tls = tls
        }
    }

    /// The server this client connects to.
    public let address: ServerAddress
    /// How it connects and retries.
    public let configuration: Configuration

    private let connections = NIOLockedValueBox(Connections())

    /// A client of the server at `address`. Nothing is connected until the first request.
    public init(to address: ServerAddress, configuration: Configuration = Configuration()) {
        self.address = address
        self.configuration = configuration
    }

    /// A client of the server at `address`, given as text (`tcp://127.0.0.1:4242`, `unix:/run/aiotask/aiotask.sock`).
    ///
    /// - Throws: `AddressError` when the text is not an address.
    public convenience init(to address: String, configuration: Configuration = Configuration()) throws {
        self.init(to: try ServerAddress(parsing: address), configuration: configuration)
    }

    // MARK: Tasks

    /// Runs a task and returns its result, submitting it again while the server has not started it (see
    /// ``ReconnectingClient``).
    ///
    /// - Throws: ``TaskFailure`` when the task ends without a result; ``AiotaskClientError`` when the connection
    ///   it was sent on is lost, when no connection could be made within ``Configuration/retryLimit``, or when
    ///   the client is closed; `CancellationError` when the awaiting Swift task is cancelled between attempts.
    ///
    /// Traced like ``AiotaskClient/submit(_:timeout:)-(ByteBuffer,_)``: one client span around all the attempts,
    /// each of which carries its trace context.
    public func submit(_ payload: ByteBuffer, timeout: Duration? = nil) async throws -> ByteBuffer {
        try await submit(payload, timeout: timeout, traceParent: nil)
    }

    /// Runs a task that belongs to the trace `traceParent` says (nil: the caller's, as
    /// ``submit(_:timeout:)-(ByteBuffer,_)`` does), submitting it again, with the same trace context, while the
    /// server has not started it.
    public func submit(
        _ payload: ByteBuffer,
        timeout: Duration? = nil,
        traceParent: TraceParent?
    ) async throws -> ByteBuffer {
        try await TracePropagation.submit(explicit: traceParent) { trace in
            try await submit(payload, timeout: timeout, trace: trace)
        }
    }

    private func submit(_ payload: ByteBuffer, timeout: Duration?, trace: OutboundTrace?) async throws -> ByteBuffer {
        try await retrying { client in
            do {
                return .finished(
                    try await client.submit(payload, timeout: timeout, trace: trace, reportingUnsent: true)
                )
            } catch let unsent as UnsentTask {
                return .retry(unsent.error)
            } catch let failure as TaskFailure where failure.reason == .shuttingDown {
                // The server is stopping, and never started the task.
                return .retry(failure)
            }
        }
    }

    // MARK: Server information

    /// The server's live statistics, asked again on a new connection if the connection ends first.
    ///
    /// - Throws: ``AiotaskClientError`` when no connection answers within ``Configuration/retryLimit``.
    public func serverInfo() async throws -> ServerInfo {
        try await retrying { client in
            do {
                return .finished(try await client.serverInfo())
            } catch let error as AiotaskClientError where error.code == .connectionLost {
                return .retry(error)
            }
        }
    }

    // MARK: Retrying

    /// What one attempt at a request came to: its value, or an error after which it is made again.
    private enum Attempt<Value> {
        case finished(Value)
        case retry(any Error)
    }

    /// Makes `attempt` on the current connection, connecting as needed, until it finishes or throws; waits between
    /// attempts, and throws the last error once the next attempt would start past ``Configuration/retryLimit``.
    /// After an attempt that asked to be retried, its connection is no longer used.
    private func retrying<Value>(_ attempt: (AiotaskClient) async throws -> Attempt<Value>) async throws -> Value {
        let deadline = ContinuousClock.now + configuration.retryLimit
        var backoff = Backoff()
        var stale: AiotaskClient?
        while true {
            let client: AiotaskClient
            do {
                client = try await connection(replacing: stale)
            } catch let error as AiotaskClientError where error.code.isConnecting {
                try await backoff.wait(before: deadline, orThrow: error)
                continue
            }
            switch try await attempt(client) {
            case .finished(let value):
                return value
            case .retry(let error):
                stale = client
                try await backoff.wait(before: deadline, orThrow: error)
            }
        }
    }

    // MARK: Closing

    /// Closes the connection, if any. Tasks pending on it fail with ``AiotaskClientError/Code/connectionLost``,
    /// and every later request fails with that code at once. Closing twice is harmless.
    public func close() async throws {
        let client = connections.withLockedValue { connections in
            connections.isClosed = true
            connections.connecting?.cancel()
            connections.connecting = nil
            defer { connections.current = nil }
            return connections.current
        }
        try await client?.close()
    }

    // MARK: Connections

    /// What the client is connected to, or connecting to.
    private struct Connections {
        var current: AiotaskClient?
        /// The connection being made, which every request waiting for one awaits.
        var connecting: Task<AiotaskClient, any Error>?
        var isClosed = false
    }

    /// What a request found: a connection, or one being made.
    private enum Lookup {
        case connected(AiotaskClient)
        case connecting(Task<AiotaskClient, any Error>)
    }

    /// The current connection, made if there is none. `stale`, a connection that can take no more tasks, is
    /// dropped first if it is still the current one (tasks pending on it still get their answers).
    private func connection(replacing stale: AiotaskClient?) async throws -> AiotaskClient {
        let found: Lookup = try connections.withLockedValue { connections in
            guard !connections.isClosed else {
                throw AiotaskClientError(.connectionLost, reason: "the client was closed")
            }
            if let stale, connections.current === stale { connections.current = nil }
            if let current = connections.current { return .connected(current) }
            if let connecting = connections.connecting { return .connecting(connecting) }
            let connecting = Task { try await self.connect() }
            connections.connecting = connecting
            return .connecting(connecting)
        }
        let attempt: Task<AiotaskClient, any Error>
        switch found {
        case .connected(let client): return client
        case .connecting(let connecting): attempt = connecting
        }
        do {
            let client = try await attempt.value
            try connections.withLockedValue { connections in
                if connections.connecting == attempt {
                    connections.connecting = nil
                    connections.current = client
                }
                guard !connections.isClosed else {
                    throw AiotaskClientError(.connectionLost, reason: "the client was closed")
                }
            }
            return client
        } catch {
            connections.withLockedValue { connections in
                if connections.connecting == attempt { connections.connecting = nil }
            }
            throw error
        }
    }

    private func connect() async throws -> AiotaskClient {
        try await AiotaskClient.connect(
            to: address,
            eventLoopGroup: configuration.eventLoopGroup,
            connectTimeout: configuration.connectTimeout,
            maximumResultLength: configuration.maximumResultLength,
            protocol: configuration.wireProtocol,
            tls: configuration.tls
        )
    }
}

/// A task failed with `error` without having been sent; see ``AiotaskClient/submit(_:timeout:reportingUnsent:)``.
struct UnsentTask: Error {
    let error: any Error
}

/// The wait between a ``ReconnectingClient``'s attempts: 50 ms, doubling up to 1 s.
private struct Backoff {
    private var delay = Duration.milliseconds(50)

    /// Waits before the next attempt, or throws `error` if that attempt would start after `deadline`.
    mutating func wait(before deadline: ContinuousClock.Instant, orThrow error: any Error) async throws {
        guard ContinuousClock.now + delay < deadline else { throw error }
        try await Task.sleep(for: delay)
        delay = min(delay * 2, .seconds(1))
    }
}

extension AiotaskClientError.Code {
    /// Whether the error comes from making a connection, before any task was sent on it.
    fileprivate var isConnecting: Bool {
        self == .connectFailed || self == .closedBeforeHandshake || self == .handshakeFailed || self == .serverError
    }
}
