import AiotaskProtocol
import AiotaskTransport
import Foundation
import NIOCore
import NIOPosix
import NIOSSL

/// A connection to an aiotask server, on which any number of tasks run concurrently.
///
/// ```swift
/// let client = try await AiotaskClient.connect(to: "tcp://127.0.0.1:4242")
/// let result = try await client.submit(Array("hello".utf8))
/// try await client.close()
/// ```
///
/// Tasks are pipelined on the one connection; their results come back in completion order, matched by task id.
/// A task that ends without a result throws a ``TaskFailure``; a problem with the connection throws an
/// ``AiotaskClientError``, and ends every pending request with it.
///
/// Cancelling the Swift task that awaits ``submit(_:timeout:)-(ByteBuffer,_)`` or ``TaskHandle/result()`` sends
/// `CANCEL` for the task and ends the wait at once with a ``TaskFailure`` of reason `FailureReason.cancelled`
/// (not a `CancellationError`), the same error a cancellation through ``TaskHandle/cancel()`` produces.
///
/// A connection ends with the server (a restart, a reload of the package); ``ReconnectingClient`` connects again
/// by itself and submits again the tasks the server never started.
public final class AiotaskClient: TaskSubmitter {
    /// The default largest result the client accepts: 64 MiB.
    public static let defaultMaximumResultLength = 64 * 1024 * 1024
    /// The largest task sent in the legacy protocol: an original 0.0.2 server asserts that a frame's length field
    /// is below 32,768, and the 16-byte task id counts in it.
    public static let legacyMaximumPayloadLength = 32_767 - TaskID.byteCount

    /// The server this client is connected to.
    public let address: ServerAddress
    /// The largest task the server accepts, in bytes, as announced in its `HELLO`; in the legacy protocol,
    /// ``legacyMaximumPayloadLength``.
    public let serverMaximumPayloadLength: Int
    /// The protocol version the server announced; 0 in the legacy protocol.
    public let serverProtocolVersion: UInt8
    /// The protocol this connection speaks: ``WireProtocol/extended`` or ``WireProtocol/legacy`` (never
    /// ``WireProtocol/automatic``, which chose one of them).
    public let wireProtocol: WireProtocol
    /// The largest result this client accepts, in bytes; a larger one fails its task with
    /// `FailureReason.payloadTooLarge`.
    public let maximumResultLength: Int

    private let channel: any Channel
    private let handler: NIOLoopBound<ClientChannelHandler>
    /// Completed when the connection stops taking tasks: `GOODBYE`, or its end.
    let endOfTasks: EventLoopFuture<ClientChannelHandler.EndOfTasks>
    /// Completed when the connection is closed.
    var closeFuture: EventLoopFuture<Void> { channel.closeFuture }

    /// The event loop the connection runs on. Code that submits many tasks can run on it (as a task executor)
    /// to hand tasks over and receive results without a thread switch.
    public var eventLoop: any EventLoop { handler.eventLoop }

    private init(
        address: ServerAddress,
        channel: any Channel,
        handler: NIOLoopBound<ClientChannelHandler>,
        endOfTasks: EventLoopFuture<ClientChannelHandler.EndOfTasks>,
        serverHello: Hello,
        maximumResultLength: Int,
        wireProtocol: WireProtocol
    ) {
        self.address = address
        self.channel = channel
        self.handler = handler
        self.endOfTasks = endOfTasks
        self.serverMaximumPayloadLength = Int(serverHello.maximumPayloadLength)
        self.serverProtocolVersion = serverHello.version
        self.maximumResultLength = maximumResultLength
        self.wireProtocol = wireProtocol
    }

    deinit {
        channel.close(promise: nil)
    }

    // MARK: Connecting

    /// Connects to an aiotask server and performs the `HELLO` handshake.
    ///
    /// - Parameters:
    ///   - address: Where the server listens (`tcp://host:port`, `tcp://[::1]:port` or `unix:/path`).
    ///   - eventLoopGroup: The group the connection runs on; by default `MultiThreadedEventLoopGroup.singleton`.
    ///   - connectTimeout: How long connecting and the handshake may take together. A server that accepts the
    ///     connection but never answers `HELLO` (such as one that only speaks the original protocol) makes the
    ///     connect fail with ``AiotaskClientError/Code/handshakeFailed`` after this time.
    ///   - maximumResultLength: The largest result to accept, announced to the server; between 0 and 4 GiB − 1.
    ///   - wireProtocol: The protocol to speak: ``WireProtocol/extended`` (an aiotask server), ``WireProtocol/legacy``
    ///     (any server, including an original 0.0.2 one; no handshake), or ``WireProtocol/automatic``.
    ///   - tls: For a `tls://` address: the trust roots, the name to check and the client's certificate; by default
    ///     the system's trust store and the address's host. Ignored for other addresses.
    /// - Throws: ``AiotaskClientError`` with code ``AiotaskClientError/Code/connectFailed``,
    ///   ``AiotaskClientError/Code/closedBeforeHandshake`` or ``AiotaskClientError/Code/handshakeFailed`` (or ``AiotaskClientError/Code/serverError`` when the server
    ///   refuses the handshake with an `ERROR` frame); for a `tls://` address also
    ///   ``AiotaskClientError/Code/untrustedCertificate``, ``AiotaskClientError/Code/certificateNameMismatch``,
    ///   ``AiotaskClientError/Code/tlsHandshakeRefused``, ``AiotaskClientError/Code/plaintextServer`` or
    ///   ``AiotaskClientError/Code/invalidTLSConfiguration``.
    public static func connect(
        to address: ServerAddress,
        eventLoopGroup: (any EventLoopGroup)? = nil,
        connectTimeout: Duration = .seconds(10),
        maximumResultLength: Int = AiotaskClient.defaultMaximumResultLength,
        protocol wireProtocol: WireProtocol = .extended,
        tls: ClientTLSConfiguration = ClientTLSConfiguration()
    ) async throws -> AiotaskClient {
        precondition(
            (0...Int(UInt32.max)).contains(maximumResultLength),
            "maximumResultLength must be between 0 and \(UInt32.max)"
        )
        let group = eventLoopGroup ?? MultiThreadedEventLoopGroup.singleton
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: connectTimeout)
        switch wireProtocol {
        case .extended, .legacy:
            return try await open(
                address,
                group: group,
                connectTimeout: connectTimeout,
                maximumResultLength: maximumResultLength,
                legacy: wireProtocol == .legacy,
                tls: tls
            )
        case .automatic:
            do {
                return try await open(
                    address,
                    group: group,
                    connectTimeout: connectTimeout,
                    maximumResultLength: maximumResultLength,
                    legacy: false,
                    handshakeLimit: WireProtocol.automaticFallbackDelay,
                    tls: tls
                )
            } catch let error as AiotaskClientError where error.code == .handshakeFailed {
                // No HELLO came back: an original server discarded it (with what followed), so the connection is
                // of no use; a new one speaks the legacy protocol from its first byte.
                let remaining = clock.now.duration(to: deadline)
                guard remaining > .zero else { throw error }
                return try await open(
                    address,
                    group: group,
                    connectTimeout: remaining,
                    maximumResultLength: maximumResultLength,
                    legacy: true,
                    tls: tls
                )
            }
        }
    }

    /// Connects to a Unix socket, trying again while its listen backlog is full, until `deadline`.
    ///
    /// Linux refuses a non-blocking connect to a Unix socket whose backlog is full with `EAGAIN` at once, where a
    /// TCP connect would wait: a daemon busy accepting a burst of connections must not look like one that is down.
    private static func connect(
        _ bootstrap: ClientBootstrap,
        unixSocket path: String,
        until deadline: ContinuousClock.Instant
    ) async throws -> any Channel {
        var pause = Duration.milliseconds(1)
        while true {
            do {
                return try await bootstrap.connect(unixDomainSocketPath: path).get()
            } catch let error as IOError where error.errnoCode == EAGAIN {
                guard ContinuousClock.now.advanced(by: pause) < deadline else {
                    throw AiotaskClientError(
                        .connectFailed,
                        reason: "unix:\(path): the socket's listen backlog stayed full until the connect timeout"
                            + " (the server accepts connections more slowly than they come)"
                    )
                }
                try await Task.sleep(for: pause)
                pause = min(pause * 2, .milliseconds(50))
            }
        }
    }

    /// Connects, then performs the `HELLO` handshake (waiting for its answer at most `handshakeLimit`, if given,
    /// within `connectTimeout`) or, with `legacy`, takes the connection as it is.
    private static func open(
        _ address: ServerAddress,
        group: any EventLoopGroup,
        connectTimeout: Duration,
        maximumResultLength: Int,
        legacy: Bool,
        handshakeLimit: Duration? = nil,
        tls: ClientTLSConfiguration
    ) async throws -> AiotaskClient {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: connectTimeout)
        let eventLoop = group.next()
        // Made before connecting, so that unusable TLS files fail the connect with nothing sent.
        let isTLS = if case .tls = address { true } else { false }
        let tlsContext = isTLS ? try tls.makeContext() : nil
        let tlsOutcome = isTLS ? TLSOutcome(on: eventLoop) : nil
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(TimeAmount(connectTimeout))
            // Large reads land where the kernel copies fast (see FastCopyBuffers).
            .channelOption(.allocator, value: FastCopyBuffers.allocator)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    var readWindow: ReadWindow?
                    if let context = tlsContext, let outcome = tlsOutcome, let host = address.hostAndPort?.host {
                        // The frames' bytes come out of TLS, not straight out of the socket: no direct reads.
                        try channel.syncOptions?.setOption(.recvAllocator, value: DirectFrameReads.largeReads)
                        try channel.pipeline.syncOperations.addHandlers(
                            tls.makeHandlers(context: context, host: host, outcome: outcome)
                        )
                    } else {
                        // Reads grow up to 1 MiB, and large results are read straight into their buffers.
                        let reads = DirectFrameReads()
                        try reads.install(on: channel)
                        readWindow = reads.window
                    }
                    try channel.pipeline.syncOperations.addHandler(
                        ClientChannelHandler(
                            maximumResultLength: maximumResultLength,
                            readWindow: readWindow,
                            readsFromTLS: tlsContext != nil,
                            legacy: legacy
                        )
                    )
                }
            }

        let channel: any Channel
        do {
            switch address {
            case .tcp(let host, let port), .tls(let host, let port):
                channel = try await bootstrap.connect(host: host, port: port).get()
            case .unix(let path):
                channel = try await connect(bootstrap, unixSocket: path, until: deadline)
            }
        } catch let error as AiotaskClientError {
            throw error
        } catch {
            throw AiotaskClientError(.connectFailed, reason: "\(address): \(AiotaskClientError.describe(error))")
        }
        if let tlsOutcome {
            try await waitForTLS(tlsOutcome, on: channel, until: deadline, address: address)
        }

        if legacy {
            do {
                let (handler, endOfTasks) = try await channel.eventLoop.submit {
                    let handler = try channel.pipeline.syncOperations.handler(type: ClientChannelHandler.self)
                    try handler.startLegacy()
                    return (NIOLoopBound(handler, eventLoop: channel.eventLoop), try handler.endOfTasksOrThrow())
                }.get()
                return AiotaskClient(
                    address: address,
                    channel: channel,
                    handler: handler,
                    endOfTasks: endOfTasks,
                    serverHello: Hello(version: 0, maximumPayloadLength: UInt32(legacyMaximumPayloadLength)),
                    maximumResultLength: maximumResultLength,
                    wireProtocol: .legacy
                )
            } catch {
                channel.close(promise: nil)
                if let tlsError = tlsOutcome?.error { throw tlsError }
                if error is AiotaskClientError { throw error }
                throw AiotaskClientError(.closedBeforeHandshake, reason: "the server closed the connection at once")
            }
        }

        let untilDeadline = max(.zero, clock.now.duration(to: deadline))
        let remaining = handshakeLimit.map { min(untilDeadline, $0) } ?? untilDeadline
        let handshake = channel.eventLoop.makePromise(of: Hello.self)
        let hello = Hello(version: Hello.currentVersion, maximumPayloadLength: UInt32(maximumResultLength))
        do {
            let (handler, endOfTasks) = try await channel.eventLoop.submit {
                let handler = try channel.pipeline.syncOperations.handler(type: ClientChannelHandler.self)
                handler.startHandshake(
                    hello,
                    timeout: TimeAmount(remaining),
                    describedTimeout: handshakeLimit.map { min($0, connectTimeout) } ?? connectTimeout,
                    promise: handshake
                )
                return (NIOLoopBound(handler, eventLoop: channel.eventLoop), try handler.endOfTasksOrThrow())
            }.get()
            let serverHello = try await handshake.futureResult.get()
            return AiotaskClient(
                address: address,
                channel: channel,
                handler: handler,
                endOfTasks: endOfTasks,
                serverHello: serverHello,
                maximumResultLength: maximumResultLength,
                wireProtocol: .extended
            )
        } catch {
            // The server may close the connection before the handshake starts (e.g. over its connection limit):
            // the promise is then still pending, and must be completed.
            handshake.fail(error)
            channel.close(promise: nil)
            // A TLS 1.3 server checks the client's certificate after the client's side of the handshake is over:
            // its refusal arrives as the HELLO is answered.
            if let tlsError = tlsOutcome?.error { throw tlsError }
            if error is AiotaskClientError { throw error }
            if error as? ChannelPipelineError == .notFound {
                // A channel loses its handlers as it closes: the server closed it before the handshake began.
                throw AiotaskClientError(.closedBeforeHandshake, reason: "the server closed the connection at once")
            }
            throw AiotaskClientError(.handshakeFailed, reason: "\(error)")
        }
    }

    /// Waits until the TLS handshake of `channel` is over, at most until `deadline`; closes the channel and throws
    /// what failed otherwise.
    private static func waitForTLS(
        _ outcome: TLSOutcome,
        on channel: any Channel,
        until deadline: ContinuousClock.Instant,
        address: ServerAddress
    ) async throws {
        let limit = max(.zero, ContinuousClock.now.duration(to: deadline))
        let timer = channel.eventLoop.scheduleTask(in: TimeAmount(limit)) {
            outcome.handshake.fail(
                AiotaskClientError(
                    .handshakeFailed,
                    reason: "\(address): no TLS handshake within \(limit) (a plaintext listener waiting for more, or "
                        + "a server too busy)"
                )
            )
        }
        defer { timer.cancel() }
        do {
            try await outcome.handshake.futureResult.get()
        } catch {
            channel.close(promise: nil)
            throw outcome.error ?? error
        }
    }

    /// Connects to the server at `address`, given as text (`tcp://127.0.0.1:4242`, `unix:/run/aiotask/aiotask.sock`).
    ///
    /// - Throws: `AddressError` when the text is not an address, otherwise as
    ///   ``connect(to:eventLoopGroup:connectTimeout:maximumResultLength:protocol:tls:)-(ServerAddress,_,_,_,_,_)``.
    public static func connect(
        to address: String,
        eventLoopGroup: (any EventLoopGroup)? = nil,
        connectTimeout: Duration = .seconds(10),
        maximumResultLength: Int = AiotaskClient.defaultMaximumResultLength,
        protocol wireProtocol: WireProtocol = .extended,
        tls: ClientTLSConfiguration = ClientTLSConfiguration()
    ) async throws -> AiotaskClient {
        try await connect(
            to: ServerAddress(parsing: address),
            eventLoopGroup: eventLoopGroup,
            connectTimeout: connectTimeout,
            maximumResultLength: maximumResultLength,
            protocol: wireProtocol,
            tls: tls
        )
    }

    // MARK: Tasks

    /// Runs a task and returns its result.
    ///
    /// - Parameters:
    ///   - payload: The task bytes, handed to the server's handler as they are.
    ///   - timeout: How long the task may run before the server kills it; nil for the server's default.
    /// - Throws: ``TaskFailure`` when the task ends without a result (including `FailureReason.payloadTooLarge`
    ///   at once, without sending, when `payload` exceeds ``serverMaximumPayloadLength``, and
    ///   `FailureReason.cancelled` when the awaiting Swift task is cancelled); ``AiotaskClientError`` when the
    ///   connection fails, or with ``AiotaskClientError/Code/legacyProtocol`` for a `timeout` in the legacy
    ///   protocol.
    ///
    /// Made where `ServiceContext.current` is set and a tracer is in use, the submit runs in a client span
    /// `aiotask.submit`, whose W3C trace context the task carries to the server (protocol version 3): the daemon
    /// logs its ids as `TRACE_ID` and `SPAN_ID` and hands it to the handler. Without a tracer it costs nothing.
    public func submit(_ payload: ByteBuffer, timeout: Duration? = nil) async throws -> ByteBuffer {
        try await TracePropagation.submit(explicit: nil) { trace in
            try await submit(payload, timeout: timeout, trace: trace, reportingUnsent: false)
        }
    }

    /// Runs a task that belongs to the trace `traceParent` says, and returns its result.
    ///
    /// No span is started: the task carries `traceParent` as it is (a server before protocol version 3 gets the
    /// task without it). Otherwise as ``submit(_:timeout:)-(ByteBuffer,_)``.
    public func submit(
        _ payload: ByteBuffer,
        timeout: Duration? = nil,
        traceParent: TraceParent?
    ) async throws -> ByteBuffer {
        try await TracePropagation.submit(explicit: traceParent) { trace in
            try await submit(payload, timeout: timeout, trace: trace, reportingUnsent: false)
        }
    }

    /// Whether a task's trace context is sent: the server negotiated protocol version 3 or later.
    var sendsTraceContext: Bool {
        wireProtocol == .extended && serverProtocolVersion >= Hello.traceContextVersion
    }

    /// ``submit(_:timeout:)-(ByteBuffer,_)`` with the trace context `trace` (sent only to a server that speaks
    /// version 3); with `reportingUnsent`, a task that fails without having been sent (the connection had ended or
    /// the server had said `GOODBYE`) throws an ``UnsentTask`` around its error, so that it can be sent again
    /// elsewhere. (An error rather than a flag: nothing is allocated for the tasks that are sent.)
    func submit(
        _ payload: ByteBuffer,
        timeout: Duration?,
        trace: OutboundTrace?,
        reportingUnsent: Bool
    ) async throws -> ByteBuffer {
        let id = TaskID.random()
        try check(id, payload: payload, timeout: timeout)
        let trace = sendsTraceContext ? trace : nil
        // The event loop resumes this caller directly with the answer: no promise and future in between.
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { continuation in
                onEventLoop { handler in
                    if reportingUnsent, let refusal = handler.refusal(of: id) {
                        continuation.resume(throwing: UnsentTask(error: refusal))
                        return
                    }
                    handler.submit(
                        id,
                        timeout: timeout,
                        trace: trace,
                        payload: payload,
                        promise: .continuation(continuation)
                    )
                }
                // A cancellation that came before the task reached the event loop cancelled nothing: the CANCEL
                // below follows the task. (Cancelling twice is harmless.)
                if Task.isCancelled { onEventLoop { $0.cancel(id, failingLocally: true) } }
            }
        } onCancel: {
            self.onEventLoop { $0.cancel(id, failingLocally: true) }
        }
    }

    /// Sends a task and returns at once with a handle to await its result, ask its status, or cancel it.
    ///
    /// - Throws: ``TaskFailure`` with `FailureReason.payloadTooLarge` when `payload` exceeds
    ///   ``serverMaximumPayloadLength`` (nothing is sent). Connection problems surface from the handle.
    public func enqueue(_ payload: ByteBuffer, timeout: Duration? = nil) async throws -> TaskHandle {
        let id = TaskID.random()
        let future = try send(id, payload: payload, timeout: timeout)
        return TaskHandle(id: id, client: self, future: future)
    }

    /// Checks the payload, then hands the task to the event loop.
    private func send(_ id: TaskID, payload: ByteBuffer, timeout: Duration?) throws -> EventLoopFuture<ByteBuffer> {
        try check(id, payload: payload, timeout: timeout)
        let promise = eventLoop.makePromise(of: ByteBuffer.self)
        onEventLoop { $0.submit(id, timeout: timeout, trace: nil, payload: payload, promise: .promise(promise)) }
        return promise.futureResult
    }

    /// Fails a task that must not be sent: with a timeout the legacy protocol cannot carry, too large for the
    /// server, or its caller cancelled already.
    private func check(_ id: TaskID, payload: ByteBuffer, timeout: Duration?) throws {
        if timeout != nil && wireProtocol == .legacy {
            throw AiotaskClientError(
                .legacyProtocol,
                reason: "a per-task timeout needs the extended protocol (ENQUEUE has no timeout field); "
                    + "the server's default timeout applies to tasks sent without one"
            )
        }
        guard payload.readableBytes <= serverMaximumPayloadLength else {
            throw TaskFailure(
                taskID: id,
                reason: .payloadTooLarge,
                message: "the task of \(payload.readableBytes) bytes exceeds the server's limit of "
                    + "\(serverMaximumPayloadLength) bytes"
            )
        }
        guard !Task.isCancelled else { throw TaskFailure.cancelledByClient(id) }
    }

    /// Awaits a task's result; cancelling the awaiting Swift task cancels the task.
    func awaitResult(of id: TaskID, _ future: EventLoopFuture<ByteBuffer>) async throws -> ByteBuffer {
        // The task was handed to the event loop before this point, so the CANCEL queued by the handler below
        // always runs after it, even when the Swift task is cancelled already.
        try await withTaskCancellationHandler {
            try await future.get()
        } onCancel: {
            self.onEventLoop { $0.cancel(id, failingLocally: true) }
        }
    }

    /// Sends `CANCEL` for a task still pending on this connection.
    func cancel(_ id: TaskID) {
        onEventLoop { $0.cancel(id, failingLocally: false) }
    }

    /// Asks the server for a task's status.
    func status(of id: TaskID) async throws -> TaskStatus {
        let promise = eventLoop.makePromise(of: TaskStatus.self)
        onEventLoop { $0.status(of: id, promise: promise) }
        return try await promise.futureResult.get()
    }

    // MARK: Server information

    /// The server's live statistics.
    ///
    /// - Throws: ``AiotaskClientError``, with ``AiotaskClientError/Code/protocolViolation`` when the answer is not
    ///   the expected JSON object.
    public func serverInfo() async throws -> ServerInfo {
        try Self.decode(ServerInfo.self, from: try await serverInfoJSON(), answer: "INFO", "a valid statistics object")
    }

    /// The server's live statistics as the UTF-8 JSON object it sent (snake_case keys, see `ServerInfo`).
    ///
    /// - Throws: ``AiotaskClientError``, with ``AiotaskClientError/Code/legacyProtocol`` in the legacy protocol,
    ///   which has no `INFO`.
    public func serverInfoJSON() async throws -> ByteBuffer {
        try await requestJSON(.infoRequest, answer: "INFO", for: "server statistics")
    }

    /// The pool's live state, process by process (pid, state, running task and for how long, memory, tasks done,
    /// restarts), with the server's statistics: what `aiotask top` shows.
    ///
    /// - Throws: ``AiotaskClientError``, with ``AiotaskClientError/Code/unsupportedByServer`` when the server
    ///   speaks a protocol version before 2 (``serverProtocolVersion``), ``AiotaskClientError/Code/legacyProtocol``
    ///   in the legacy protocol, ``AiotaskClientError/Code/protocolViolation`` when the answer is not the expected
    ///   JSON object.
    public func poolStatus() async throws -> PoolStatus {
        try Self.decode(PoolStatus.self, from: try await poolStatusJSON(), answer: "POOL", "a valid pool state")
    }

    /// The pool's live state as the UTF-8 JSON object the server sent (snake_case keys, see `PoolStatus`).
    ///
    /// - Throws: as ``poolStatus()``.
    public func poolStatusJSON() async throws -> ByteBuffer {
        guard wireProtocol == .legacy || serverProtocolVersion >= Hello.poolStatusVersion else {
            throw AiotaskClientError(
                .unsupportedByServer,
                reason: "the pool's state (POOL) needs protocol version \(Hello.poolStatusVersion); "
                    + "the server speaks version \(serverProtocolVersion)"
            )
        }
        return try await requestJSON(.poolRequest, answer: "POOL", for: "the pool's state")
    }

    /// Sends `request` (`INFO_REQUEST` or `POOL_REQUEST`) and returns the JSON of its answer; `legacyProtocol` in
    /// the legacy protocol, which has neither.
    private func requestJSON(_ request: Frame, answer: String, for purpose: String) async throws -> ByteBuffer {
        guard wireProtocol != .legacy else {
            throw AiotaskClientError(
                .legacyProtocol,
                reason: "\(answer) (\(purpose)) needs the extended protocol; an original 0.0.2 server has none"
            )
        }
        let promise = eventLoop.makePromise(of: ByteBuffer.self)
        onEventLoop { $0.requestInfo(request, promise: promise) }
        return try await promise.futureResult.get()
    }

    /// Puts the server into drain for HAProxy's agent check (`drained` true), or takes it out (false), and
    /// returns its statistics after the change (its `agentCheck` says what the agent now answers).
    ///
    /// A drained server still takes every task sent to it; the balancer only stops sending it new connections.
    /// The state lasts until it is changed again or the server stops (docs/deployment.md, "Draining a host").
    ///
    /// - Throws: ``AiotaskClientError``, with ``AiotaskClientError/Code/legacyProtocol`` in the legacy protocol,
    ///   which has no `DRAIN`.
    public func setDrained(_ drained: Bool) async throws -> ServerInfo {
        guard wireProtocol != .legacy else {
            throw AiotaskClientError(.legacyProtocol, reason: "DRAIN needs the extended protocol")
        }
        let promise = eventLoop.makePromise(of: ByteBuffer.self)
        onEventLoop { $0.requestDrain(drained, promise: promise) }
        return try Self.decode(
            ServerInfo.self,
            from: try await promise.futureResult.get(),
            answer: "INFO",
            "a valid statistics object"
        )
    }

    /// `json` decoded as `Value`; `protocolViolation` when it is not one.
    private static func decode<Value: Decodable>(
        _ type: Value.Type,
        from json: ByteBuffer,
        answer: String,
        _ expected: String
    ) throws -> Value {
        do {
            return try JSONDecoder().decode(type, from: Data(json.readableBytesView))
        } catch {
            throw AiotaskClientError(.protocolViolation, reason: "the server's \(answer) is not \(expected): \(error)")
        }
    }

    // MARK: Closing

    /// Closes the connection. Every pending task and query fails with ``AiotaskClientError/Code/connectionLost``;
    /// the server cancels the connection's unfinished tasks. Closing twice is harmless.
    public func close() async throws {
        onEventLoop { $0.close() }
        try await channel.closeFuture.get()
    }

    // MARK: Event loop access

    private func onEventLoop(_ body: @escaping @Sendable (ClientChannelHandler) -> Void) {
        let handler = self.handler
        if handler.eventLoop.inEventLoop {
            body(handler.value)
        } else {
            handler.eventLoop.execute { body(handler.value) }
        }
    }
}
