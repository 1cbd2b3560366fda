import AiotaskProtocol
import AiotaskTransport
import NIOCore

/// All per-connection state of an ``AiotaskClient``, owned by the channel's event loop.
///
/// The client calls the request methods (``submit(_:timeout:payload:promise:)``, ``status(of:promise:)``, …) on
/// the event loop; each registers its promise and appends a frame to an output buffer. The buffer is written and
/// flushed once per event-loop tick, so requests made together leave in one `write` call. Inbound frames complete
/// the promises: results and failures by task id, status answers per id in order, info answers in order. When the
/// connection ends for any reason, every pending promise fails with the same ``AiotaskClientError``.
final class ClientChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum State {
        /// The channel is connected but the handshake has not started.
        case connected
        /// `HELLO` was sent; the promise is completed by the server's `HELLO` or the timer.
        case handshaking(EventLoopPromise<Hello>, timer: Scheduled<Void>)
        /// The handshake is done; requests are accepted.
        case ready
        /// The connection is over; every request fails with this error.
        case closed(AiotaskClientError)
    }

    /// The largest result accepted, as announced in the client's `HELLO`.
    private let maximumResultLength: Int
    /// Whether the connection speaks only the frames of aiotask 0.0.2 (``WireProtocol/legacy``): no `HELLO`,
    /// tasks as `ENQUEUE`, results as `DONE`, and a failure seen only as `UPDATE NOT_FOUND`.
    let isLegacy: Bool
    private var state = State.connected
    private var context: ChannelHandlerContext?
    /// Tasks awaiting a `RESULT` or `FAILED`.
    private var tasks: [TaskID: PendingTask] = [:]
    /// Status queries awaiting an `UPDATE`, oldest first per task.
    private var statusQueries: [TaskID: CircularBuffer<EventLoopPromise<TaskStatus>>] = [:]
    /// Info and pool requests awaiting their `INFO` or `POOL`, oldest first, with the answer's type: the server
    /// answers them in order.
    private var infoQueries = CircularBuffer<(answer: FrameType, promise: EventLoopPromise<ByteBuffer>)>()
    /// Writes the requests, those of one tick together; set while the handler is in the pipeline.
    private var writer: CoalescingFrameWriter?
    /// The server's `GOODBYE` message, once it said it is stopping.
    private var goodbye: String?
    /// Cuts the bytes read into frames.
    private let frames: InboundStream<FrameDecoder>
    /// Completed when the connection stops taking tasks (see ``endOfTasks``); nil once completed.
    private var endOfTasksPromise: EventLoopPromise<EndOfTasks>?
    /// Completed when the connection stops taking tasks: the server said `GOODBYE`, or the connection ended. An
    /// ``AiotaskClientPool`` watches it to send no more tasks there. Set while the handler is in the pipeline.
    private(set) var endOfTasks: EventLoopFuture<EndOfTasks>?

    /// Why a connection stopped taking tasks.
    enum EndOfTasks: Sendable {
        /// The server said `GOODBYE` with this message: the tasks it took finish, then it closes the connection.
        case goodbye(String)
        /// The connection ended with this error.
        case closed(AiotaskClientError)
    }

    /// - Parameters:
    ///   - readWindow: The window of the channel's ``DirectFrameReads``.
    ///   - readsFromTLS: Whether the bytes come out of TLS, in a buffer NIOSSL reuses (see ``StreamDecoder``).
    init(maximumResultLength: Int, readWindow: ReadWindow? = nil, readsFromTLS: Bool = false, legacy: Bool = false) {
        self.maximumResultLength = maximumResultLength
        self.isLegacy = legacy
        self.frames = InboundStream(
            FrameDecoder(maximumPayloadLength: maximumResultLength),
            readWindow: readWindow,
            copiesReads: readsFromTLS
        )
    }

    /// ``endOfTasks``, or `ChannelPipelineError.notFound` once the handler has left the pipeline (the connection
    /// closed at once).
    func endOfTasksOrThrow() throws -> EventLoopFuture<EndOfTasks> {
        guard let endOfTasks else { throw ChannelPipelineError.notFound }
        return endOfTasks
    }

    // MARK: Requests (called on the event loop)

    /// Sends `HELLO` and arranges for `promise` to receive the server's answer, or to fail after `timeout`.
    func startHandshake(
        _ hello: Hello,
        timeout: TimeAmount,
        describedTimeout: Duration,
        promise: EventLoopPromise<Hello>
    ) {
        guard case .connected = state, let context else {
            let error = currentError
            promise.fail(
                error.code == .connectionLost
                    ? AiotaskClientError(.closedBeforeHandshake, reason: "\(error.reason) before answering HELLO")
                    : error
            )
            return
        }
        let timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
            self.shutDown(
                AiotaskClientError(
                    .handshakeFailed,
                    reason: "the server did not answer HELLO within \(describedTimeout) "
                        + "(is it an aiotask server that speaks protocol version \(Hello.currentVersion)? "
                        + "An original 0.0.2 server never answers: speak the legacy protocol to it)"
                )
            )
        }
        state = .handshaking(promise, timer: timer)
        append(.hello(hello))
        writer?.flush()
    }

    /// Makes a legacy connection ready at once: the original protocol has no handshake.
    ///
    /// - Throws: ``AiotaskClientError/Code/closedBeforeHandshake`` when the server closed the connection already.
    func startLegacy() throws(AiotaskClientError) {
        guard case .connected = state, context != nil else {
            let error = currentError
            throw error.code == .connectionLost
                ? AiotaskClientError(.closedBeforeHandshake, reason: "\(error.reason) before the first task")
                : error
        }
        state = .ready
    }

    /// Whether a task submitted now is sent: the handshake is done, and the server has not said `GOODBYE` nor the
    /// connection ended.
    var acceptsTasks: Bool {
        guard case .ready = state else { return false }
        return goodbye == nil
    }

    /// What task `id` fails with, unsent, when submitted now; nil while tasks are sent (``acceptsTasks``).
    func refusal(of id: TaskID) -> (any Error)? {
        if let goodbye {
            // Also once the connection is gone: the task was never sent, and the server said why.
            return TaskFailure(taskID: id, reason: .shuttingDown, message: "not sent: \(goodbye)")
        }
        guard case .ready = state else { return currentError }
        return nil
    }

    /// Sends a task, after its `TRACE_CONTEXT` when it has one (the caller checked that the server speaks version 3);
    /// `promise` receives its result or fails with a ``TaskFailure``.
    func submit(_ id: TaskID, timeout: Duration?, trace: OutboundTrace?, payload: ByteBuffer, promise: PendingTask) {
        if let refusal = refusal(of: id) {
            promise.fail(refusal)
            return
        }
        if let previous = tasks.updateValue(promise, forKey: id) {
            // Random 122-bit ids do not collide in practice; keep both callers' promises completed anyway.
            previous.fail(TaskFailure(taskID: id, reason: .rejected, message: "task id reused on this connection"))
        }
        // Right before its task, in the same write: the server applies it to the next task frame, which must be this.
        if let trace {
            append(.traceContext(id, traceParent: "\(trace.parent)", traceState: trace.state))
        }
        // A legacy server knows only ENQUEUE; the client refuses a timeout before it gets here. A large task is not
        // copied (``CoalescingFrameWriter``).
        append(isLegacy ? Frame.enqueue(id, payload: payload) : Frame.submit(id, timeout: timeout, payload: payload))
    }

    /// Asks for the status of a task; `promise` receives the server's `UPDATE` answer.
    func status(of id: TaskID, promise: EventLoopPromise<TaskStatus>) {
        guard case .ready = state else {
            promise.fail(currentError)
            return
        }
        statusQueries[id, default: []].append(promise)
        append(.status(id))
    }

    /// Sends `CANCEL` for a pending task. With `failingLocally`, the task's promise fails at once with a
    /// cancelled ``TaskFailure`` instead of waiting for the server's `FAILED` answer (which is then ignored).
    ///
    /// On a legacy connection, which has no `CANCEL`, the server carries on with the task and its `DONE` is
    /// ignored: the promise fails at once, with a cancelled ``TaskFailure`` that says so (`failingLocally`), or
    /// with ``AiotaskClientError/Code/legacyProtocol`` (an explicit ``TaskHandle/cancel()``).
    func cancel(_ id: TaskID, failingLocally: Bool) {
        guard case .ready = state, let promise = tasks[id] else { return }
        if isLegacy {
            tasks[id] = nil
            promise.fail(
                failingLocally
                    ? TaskFailure(
                        taskID: id,
                        reason: .cancelled,
                        message: "abandoned by the client; the legacy protocol cannot stop it on the server"
                    )
                    : AiotaskClientError(
                        .legacyProtocol,
                        reason: "task \(id) cannot be cancelled (the legacy protocol has no CANCEL); "
                            + "the server carries on with it, and its result is ignored"
                    )
            )
            return
        }
        if failingLocally {
            tasks[id] = nil
            promise.fail(TaskFailure.cancelledByClient(id))
        }
        append(.cancel(id))
    }

    /// Asks for the server's statistics (`INFO_REQUEST`) or the pool's state (`POOL_REQUEST`); `promise` receives
    /// the JSON of the answer.
    func requestInfo(_ request: Frame, promise: EventLoopPromise<ByteBuffer>) {
        guard case .ready = state else {
            promise.fail(currentError)
            return
        }
        infoQueries.append((request == .poolRequest ? .pool : .info, promise))
        append(request)
    }

    /// Puts the server into drain for HAProxy's agent check, or takes it out; `promise` receives the JSON of the
    /// `INFO` the server answers with.
    func requestDrain(_ drained: Bool, promise: EventLoopPromise<ByteBuffer>) {
        guard case .ready = state else {
            promise.fail(currentError)
            return
        }
        infoQueries.append((.info, promise))
        append(.drain(drained))
    }

    /// Closes the connection on the client's behalf.
    func close() {
        shutDown(AiotaskClientError(.connectionLost, reason: "the client closed the connection"))
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        writer = CoalescingFrameWriter(channel: context.channel)
        let promise = context.eventLoop.makePromise(of: EndOfTasks.self)
        endOfTasksPromise = promise
        endOfTasks = promise.futureResult
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        shutDown(AiotaskClientError(.connectionLost, reason: "the connection's handler was removed"))
        self.context = nil
        writer = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Frames that arrived just before the end, and a stream that ends inside a frame.
        frames.end(receive: { receive($0) }) { errorCaught(context: context, error: $0) }
        if case .ready = state, goodbye != nil {
            // After GOODBYE the server answers every task it took before it closes; the others it never started.
            let untaken = tasks
            tasks = [:]
            for (id, promise) in untaken {
                promise.fail(
                    TaskFailure(
                        taskID: id,
                        reason: .shuttingDown,
                        message: "the server stopped without taking the task"
                    )
                )
            }
        }
        shutDown(AiotaskClientError(.connectionLost, reason: "the server closed the connection"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? ProtocolError {
            shutDown(AiotaskClientError(.protocolViolation, reason: error.description))
        } else {
            shutDown(AiotaskClientError(.connectionLost, reason: AiotaskClientError.describe(error)))
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .closed = state { return }
        frames.read(unwrapInboundIn(data), receive: { receive($0) }) { errorCaught(context: context, error: $0) }
    }

    private func receive(_ inbound: InboundFrame) {
        switch inbound {
        case .frame(let frame):
            receive(frame)
        case .oversized(let type, let id, let length):
            guard case .ready = state else { return violation("an oversized \(type) frame before HELLO") }
            guard type == .result || type == .done else { return violation("an oversized \(type) frame") }
            let failure = TaskFailure(
                taskID: id,
                reason: .payloadTooLarge,
                message: "the result of \(length) bytes exceeds this client's limit of \(maximumResultLength) bytes"
            )
            tasks.removeValue(forKey: id)?.fail(failure)
        }
    }

    private func receive(_ frame: Frame) {
        if isLegacy && frame.type.isExtension, case .ready = state {
            return violation("a \(frame.type) frame on a legacy connection, which only knows UPDATE and DONE")
        }
        switch (frame, state) {
        case (_, .closed):
            return
        case (.error(let message), _):
            shutDown(AiotaskClientError.serverClosed(saying: message))
        case (.hello(let hello), .handshaking(let promise, let timer)):
            guard hello.version >= 1 else {
                return shutDown(
                    AiotaskClientError(.handshakeFailed, reason: "the server speaks protocol version \(hello.version)")
                )
            }
            timer.cancel()
            state = .ready
            promise.succeed(hello)
        case (_, .connected), (_, .handshaking):
            violation("a \(frame.type) frame before HELLO")
        case (.result(let id, let result), .ready), (.done(let id, let result), .ready):
            // Ids not pending are tasks the client gave up on (cancelled locally): ignore them.
            tasks.removeValue(forKey: id)?.succeed(result)
        case (.failed(let id, let reason, let message), .ready):
            tasks.removeValue(forKey: id)?.fail(TaskFailure(taskID: id, reason: reason, message: message))
        case (.goodbye(let message), .ready):
            let message = message.isEmpty ? "the server is stopping" : message
            goodbye = message
            endOfTasksPromise?.succeed(.goodbye(message))
            endOfTasksPromise = nil
        case (.update(let id, let status), .ready):
            if isLegacy && status == .notFound, let task = tasks.removeValue(forKey: id) {
                // The only failure report of the original protocol, sent by aiotaskd when the task fails (or, to
                // a STATUS, when the task is gone): the result will never come.
                task.fail(
                    TaskFailure(
                        taskID: id,
                        reason: .unknown,
                        message: "the server no longer knows the task (NOT_FOUND): it failed, and the legacy "
                            + "protocol does not say why (the server's log does)"
                    )
                )
            }
            guard var queue = statusQueries.removeValue(forKey: id) else { return }
            let promise = queue.removeFirst()
            if !queue.isEmpty { statusQueries[id] = queue }
            promise.succeed(status)
        case (.info(let json), .ready), (.pool(let json), .ready):
            guard infoQueries.first?.answer == frame.type, let query = infoQueries.popFirst() else {
                return violation("an \(frame.type) frame nobody asked for")
            }
            query.promise.succeed(json)
        case (.hello, .ready):
            violation("a second HELLO frame")
        case (.enqueue, .ready), (.status, .ready), (.submit, .ready), (.cancel, .ready), (.infoRequest, .ready),
            (.drain, .ready),
            (.poolRequest, .ready), (.traceContext, .ready):
            violation("a \(frame.type) frame, which only clients send")
        }
    }

    // MARK: Output

    /// Appends `frame` to the requests leaving at the end of this tick, so that requests made together share one
    /// write.
    private func append(_ frame: Frame) {
        do {
            try writer?.append(frame)
        } catch {
            // Only frames of the original protocol can fail to encode, and the client sends none longer than 16 bytes.
            preconditionFailure("cannot encode \(frame.type): \(error)")
        }
    }

    // MARK: Ending the connection

    private var currentError: AiotaskClientError {
        switch state {
        case .closed(let error): error
        case .connected, .handshaking: AiotaskClientError(.connectionLost, reason: "the handshake has not completed")
        case .ready: AiotaskClientError(.connectionLost, reason: "the connection is open")
        }
    }

    private func violation(_ what: String) {
        shutDown(AiotaskClientError(.protocolViolation, reason: "the server sent \(what)"))
    }

    /// Fails everything pending with `error`, closes the channel, and makes every later request fail with it too.
    private func shutDown(_ error: AiotaskClientError) {
        let previous = state
        if case .closed = previous { return }
        state = .closed(error)
        writer?.discard()
        endOfTasksPromise?.succeed(.closed(error))
        endOfTasksPromise = nil

        if case .handshaking(let promise, let timer) = previous {
            timer.cancel()
            if error.code == .connectionLost {
                promise.fail(
                    AiotaskClientError(.closedBeforeHandshake, reason: "\(error.reason) before answering HELLO")
                )
            } else {
                promise.fail(error)
            }
        }
        let tasks = self.tasks
        let statusQueries = self.statusQueries
        let infoQueries = self.infoQueries
        self.tasks = [:]
        self.statusQueries = [:]
        self.infoQueries = []
        for promise in tasks.values { promise.fail(error) }
        for queue in statusQueries.values {
            for promise in queue { promise.fail(error) }
        }
        for query in infoQueries { query.promise.fail(error) }

        context?.close(promise: nil)
    }
}
