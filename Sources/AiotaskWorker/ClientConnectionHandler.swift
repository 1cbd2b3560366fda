import AiotaskProtocol
import AiotaskTransport
import Foundation
import Logging
import NIOCore

/// Serves one client connection: decodes its frames, submits its tasks, answers them as they finish.
///
/// A connection speaks the original protocol until the client sends an extension frame (normally `HELLO`);
/// only then does it receive extension frames, so a legacy client never sees a frame it cannot parse.
final class ClientConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Largest result a legacy client can receive: a `DONE` payload is at most 65,535 bytes, id included.
    static let legacyResultLimit = ByteBuffer.legacyFrameLimit - TaskID.byteCount

    private let supervisor: Supervisor
    private var logger: Logger
    private var context: ChannelHandlerContext?
    private(set) var peerDescription = "unknown"

    /// Whether the client negotiated the extensions.
    private var isExtended = false
    /// The largest result the client accepts (learned from its `HELLO`).
    private var clientResultLimit = Int(UInt32.max)
    private var inFlight: [TaskID: TaskRecord] = [:]
    private var finished: FinishedTaskLog
    private var flushPending = false
    /// Frames encoded since the last flush; they leave together in one write.
    private var output = ByteBuffer()
    private var isClosing = false
    private var saidGoodbye = false
    /// When the connection last showed life: a complete frame arrived, or its last task was answered.
    private var lastActivity = NIODeadline.now()
    /// The pending check for an idle connection; nil with no idle timeout, or once a check found tasks in flight
    /// (it is armed again when the last of them is answered).
    private var idleCheck: Scheduled<Void>?
    /// What happens while the client leaves its answers unread (see ``AnswerBacklog``).
    private var backlog: AnswerBacklog
    /// Its tasks that reached the head of the queue while held back, in order; they run once answers drain.
    private var heldTasks = CircularBuffer<TaskRecord>()
    /// The pending check for a client that has stopped reading and sending; set while the channel is not writable.
    private var writeStall: Scheduled<Void>?

    /// Cuts the bytes read into frames.
    private var frames: StreamDecoder<FrameDecoder>
    /// Set while frames are being handled, one of which may close the channel.
    private var isDecoding = false
    /// Task bytes reserved in the supervisor's budget for the task frame being received (see
    /// ``Supervisor/reserve(_:)``); 0 when none is.
    private var reservedBytes = 0

    /// - Parameter readWindow: The window of the channel's ``DirectFrameReads``.
    init(supervisor: Supervisor, logger: Logger, readWindow: ReadWindow? = nil) {
        self.supervisor = supervisor
        self.logger = logger
        self.frames = StreamDecoder(
            FrameDecoder(maximumPayloadLength: supervisor.configuration.maximumPayloadLength),
            readWindow: readWindow
        )
        self.finished = FinishedTaskLog(capacity: supervisor.configuration.finishedTasksRemembered)
        self.backlog = AnswerBacklog(writeTimeout: supervisor.configuration.writeTimeout)
        // A task frame that straddles reads holds its bytes until it is whole: they count against the queue's
        // byte limit from its header on, so many slow uploads cannot hold more than the queue may.
        frames.decoder.admitPartialTask = { [unowned self] length in
            guard self.supervisor.reserve(length) else { return false }
            self.reservedBytes = length
            return true
        }
    }

    // MARK: Channel events

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        peerDescription = context.channel.remoteAddress.map(Self.describe) ?? "unix"
        logger[metadataKey: "client"] = "\(peerDescription)"
        guard supervisor.register(self) else {
            let limit = supervisor.configuration.maximumConnections
            logger.warning("refusing connection: \(limit) connections are open already (max-connections)")
            isClosing = true
            context.close(promise: nil)
            return
        }
        logger.debug("client connected")
        scheduleIdleCheck()
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !isDecoding, !isClosing {
            // Frames that arrived just before the end, and a stream that ends inside a frame.
            do {
                try frames.decodeLast { receive($0) }
            } catch {
                errorCaught(context: context, error: error)
            }
        }
        idleCheck?.cancel()
        writeStall?.cancel()
        heldTasks.removeAll()
        releaseReservation()
        supervisor.unregister(self)
        let abandoned = inFlight.values
        inFlight.removeAll()
        for record in abandoned { supervisor.abandon(record) }
        logger.debug("client disconnected", metadata: ["abandoned_tasks": "\(abandoned.count)"])
        self.context = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !isClosing else { return }
        isDecoding = true
        defer { isDecoding = false }
        var receivedFrame = false
        do {
            try frames.decode(unwrapInboundIn(data)) {
                receivedFrame = true
                receive($0)
            }
        } catch {
            errorCaught(context: context, error: error)
        }
        if receivedFrame {
            lastActivity = .now()
            backlog.frameReceived(now: lastActivity)
        }
    }

    private func receive(_ inbound: InboundFrame) {
        releaseReservation()
        guard !isClosing else { return }
        switch inbound {
        case .frame(let frame):
            if frame.type.isExtension { isExtended = true }
            handle(frame)
        case .oversized(let type, let id, let length):
            if type.isExtension { isExtended = true }
            guard type == .enqueue || type == .submit else {
                return violation("the client sent a \(type) frame, which only a server sends")
            }
            rejectOversized(id, length: length)
        }
    }

    /// Gives back the bytes reserved for the frame being received: it is whole now (and its task is accepted or
    /// refused under the usual limits), or the connection is gone.
    private func releaseReservation() {
        guard reservedBytes > 0 else { return }
        supervisor.unreserve(reservedBytes)
        reservedBytes = 0
    }

    /// A client whose answers pile up unread is still read, but its tasks are held back until they drain
    /// (``AnswerBacklog``), so a client that writes all its tasks before reading is served, in bounded memory.
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        // The write timeout in force now: a reload may have changed it since the connection opened.
        backlog.writeTimeout = supervisor.configuration.writeTimeout
        let action = backlog.writabilityChanged(isWritable: context.channel.isWritable, now: .now())
        perform(action, context: context)
        context.fireChannelWritabilityChanged()
    }

    /// Whether this connection's tasks wait instead of running, because its answers are not being read.
    var isHoldingTasks: Bool { backlog.isHoldingTasks }

    /// Keeps `record`, which reached the head of the queue while the connection holds back its tasks, until its
    /// answers drain.
    func hold(_ record: TaskRecord) {
        heldTasks.append(record)
    }

    /// The tasks held back and not finished since, still waiting (for a shutdown that fails them).
    var tasksHeld: [TaskRecord] { heldTasks.filter { !$0.isFinished } }

    private func perform(_ action: AnswerBacklog.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .holdTasks(let stallCheck):
            logger.debug("the client is not reading its answers; its tasks wait until it does")
            writeStall?.cancel()
            writeStall = stallCheck.flatMap { scheduleStallCheck(at: $0) }
        case .releaseTasks(let resumeReading):
            writeStall?.cancel()
            writeStall = nil
            if resumeReading {
                context.channel.setOption(.autoRead, value: true).whenFailure { _ in }
                context.read()
            }
            let released = Array(heldTasks)
            heldTasks.removeAll()
            supervisor.release(released)
        case .pauseReading:
            logger.debug(
                "the client sends requests but reads none of the answers; pausing reads from it",
                metadata: ["answers_waiting": "\(AnswerBacklog.immediateAnswerLimit)"]
            )
            context.channel.setOption(.autoRead, value: false).whenFailure { _ in }
        case .checkStall(let deadline):
            writeStall = scheduleStallCheck(at: deadline)
        case .disconnect:
            writeTimedOut()
        }
    }

    private func scheduleStallCheck(at deadline: NIODeadline) -> Scheduled<Void>? {
        context?.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            writeStall = nil
            guard let context, !isClosing else { return }
            perform(backlog.stallCheckDue(now: .now()), context: context)
        }
    }

    /// Notes an answer written at once while the client is not reading (a refusal, `STATUS`, `INFO`): too many
    /// of them and the client stops being read.
    private func answeredAtOnce() {
        guard backlog.isHoldingTasks, let context else { return }
        perform(backlog.answeredAtOnce(), context: context)
    }

    // MARK: Timeouts

    /// Arms the idle check, unless it is armed already or the idle timeout is off.
    private func scheduleIdleCheck() {
        guard idleCheck == nil, let context, let timeout = supervisor.configuration.idleTimeout else { return }
        idleCheck = context.eventLoop.assumeIsolated().scheduleTask(deadline: lastActivity + TimeAmount(timeout)) {
            [self] in
            idleCheck = nil
            checkIdle()
        }
    }

    /// Closes the connection if it has had nothing in flight and sent no complete frame for the idle timeout;
    /// otherwise checks again when it next could be idle that long.
    private func checkIdle() {
        // Tasks in flight keep the connection open; the check is armed again when the last is answered.
        guard inFlight.isEmpty, !isClosing, let timeout = supervisor.configuration.idleTimeout else { return }
        guard NIODeadline.now() >= lastActivity + TimeAmount(timeout) else { return scheduleIdleCheck() }
        end(
            "idle timeout: no request for \(Self.describe(timeout)) and no task in flight (idle-timeout)",
            level: .info
        )
    }

    /// Disconnects a client that has neither read an answer nor sent a frame for the write timeout; its tasks are
    /// cancelled.
    private func writeTimedOut() {
        guard let context, !isClosing, !context.channel.isWritable, let timeout = backlog.writeTimeout else { return }
        isClosing = true
        logger.warning(
            "closing connection: the client has not read its answers for \(Self.describe(timeout)) (write-timeout)",
            metadata: ["cancelled_tasks": "\(inFlight.count)"]
        )
        // Its send buffer is full, so nothing more can reach it: close at once, dropping what is unsent.
        // Closing abandons its tasks in `channelInactive`, which stops the running ones.
        context.close(promise: nil)
    }

    private static func describe(_ duration: Duration) -> String {
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        return seconds == seconds.rounded() ? "\(Int(seconds)) s" : "\(seconds) s"
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushPending = false
        flushOutput()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? ProtocolError {
            violation(error.description)
        } else {
            logger.debug("connection error: \(error)")
            context.close(promise: nil)
        }
    }

    // MARK: Frames

    private func handle(_ frame: Frame) {
        switch frame {
        case .hello(let hello):
            clientResultLimit = Int(hello.maximumPayloadLength)
            let limit = UInt32(clamping: supervisor.configuration.maximumPayloadLength)
            write(.hello(Hello(maximumPayloadLength: limit)))
            if !supervisor.isAccepting { sayGoodbye() }
            answeredAtOnce()
        case .enqueue(let id, let payload):
            submit(id, payload: payload, timeout: nil)
        case .submit(let id, let timeout, let payload):
            submit(id, payload: payload, timeout: timeout)
        case .status(let id):
            write(.update(id, status(of: id)))
            answeredAtOnce()
        case .cancel(let id):
            if let record = inFlight[id] { supervisor.cancel(record) }
        case .infoRequest:
            writeInfo()
            answeredAtOnce()
        case .update, .done, .result, .failed, .info, .error, .goodbye:
            violation("the client sent a \(frame.type) frame, which only a server sends")
        }
    }

    private func submit(_ id: TaskID, payload: ByteBuffer, timeout: Duration?) {
        guard let record = track(id, payload: payload, timeout: timeout) else { return }
        let limit = supervisor.configuration.maximumTasksPerConnection
        guard inFlight.count <= limit else {
            let message = "too many tasks in flight on this connection (limit \(limit))"
            supervisor.accept(rejected: record, .rejected, message)
            return answeredAtOnce()
        }
        supervisor.accept(record)
        // Refused at once: the queue is full, or the server is stopping.
        if record.isFinished { answeredAtOnce() }
    }

    private func rejectOversized(_ id: TaskID, length: Int) {
        guard let record = track(id, payload: ByteBuffer(), timeout: nil) else { return }
        let limit = supervisor.configuration.maximumPayloadLength
        if length <= limit {
            // Within the payload limit, but its bytes could not be held while it arrived (``Supervisor/reserve(_:)``).
            supervisor.accept(rejected: record, .rejected, supervisor.queueFullMessage(adding: length))
        } else {
            let message = "task of \(length) bytes exceeds the limit of \(limit) bytes"
            supervisor.accept(rejected: record, .payloadTooLarge, message)
        }
        answeredAtOnce()
    }

    /// A record for a new task of this connection, or nil (and the connection closed) when its id is in use.
    private func track(_ id: TaskID, payload: ByteBuffer, timeout: Duration?) -> TaskRecord? {
        guard inFlight[id] == nil else {
            violation("task id \(id) is already in use on this connection")
            return nil
        }
        let record = TaskRecord(id: id, session: self, payload: payload, timeout: timeout)
        inFlight[id] = record
        return record
    }

    private func status(of id: TaskID) -> TaskStatus {
        let status = inFlight[id]?.status ?? finished.status(of: id) ?? .notFound
        // A legacy client knows no FAILED status: it would ignore the answer and wait forever.
        return status == .failed && !isExtended ? .notFound : status
    }

    private func writeInfo() {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        do {
            let json = try encoder.encode(supervisor.info())
            write(.info(ByteBuffer(bytes: json)))
        } catch {
            logger.error("cannot encode server info: \(error)")
        }
    }

    // MARK: Answers

    /// Sends the outcome of one of this connection's tasks.
    func complete(_ record: TaskRecord, _ outcome: TaskOutcome) {
        guard inFlight.removeValue(forKey: record.id) != nil, context != nil else { return }
        if inFlight.isEmpty {
            lastActivity = .now()
            scheduleIdleCheck()
        }
        defer { scheduleFlush() }
        switch outcome {
        case .success(let result):
            finished.record(record.id, .done)
            write(isExtended ? .result(record.id, result) : .done(record.id, result: result))
        case .failure(let reason, let message):
            sendFailure(record.id, reason, message)
        }
    }

    /// The largest result this client can receive: what its `HELLO` announced, or what fits a legacy `DONE`.
    var resultLimit: Int {
        isExtended ? clientResultLimit : Self.legacyResultLimit
    }

    /// Tells an extended client that the server is stopping: the tasks it sends from now on are refused with
    /// `shuttingDown`, and the connection closes once those already taken are answered. A legacy client cannot
    /// be told; its later tasks are answered `NOT_FOUND`.
    func sayGoodbye() {
        guard isExtended, !saidGoodbye else { return }
        saidGoodbye = true
        write(.goodbye("the server is stopping; submit new tasks on a new connection"))
        scheduleFlush()
    }

    /// Ends the connection once what was written is sent: closes the output first, so the client reads every
    /// answer and then the end of the stream, and closes the whole connection when the client closes its side
    /// or after `linger`. Closing at once would make the kernel reset the connection if the client had sent
    /// more, and a reset can destroy answers the client has not read yet.
    func close(linger: TimeAmount = .seconds(2)) {
        guard let context else { return }
        pushOutput()
        context.writeAndFlush(wrapOutboundOut(ByteBuffer())).assumeIsolated().whenComplete { _ in
            context.close(mode: .output).assumeIsolated().whenComplete { _ in
                context.eventLoop.assumeIsolated().scheduleTask(in: linger) {
                    context.close(promise: nil)
                }
            }
        }
    }

    private func sendFailure(_ id: TaskID, _ reason: FailureReason, _ message: String) {
        finished.record(id, .failed)
        // A legacy client cannot be told why; it learns that the task is gone, and is never sent a fake DONE.
        let message = Self.truncated(message, toUTF8Count: Self.failureMessageLimit)
        write(isExtended ? .failed(id, reason, message: message) : .update(id, .notFound))
    }

    /// Longest failure message sent to a client, in UTF-8 bytes. A handler's error text can be any length, but a
    /// `FAILED` frame is a control frame, which a client refuses past 64 KiB (closing the whole connection).
    static let failureMessageLimit = 4096

    /// `message` cut to at most `limit` UTF-8 bytes at a Unicode scalar boundary, ending in a note of how much was
    /// cut; unchanged when it fits.
    static func truncated(_ message: String, toUTF8Count limit: Int) -> String {
        let utf8 = message.utf8
        guard utf8.count > limit else { return message }
        let note = "… (\(utf8.count) bytes in all)"
        var end = utf8.index(utf8.startIndex, offsetBy: max(0, limit - note.utf8.count))
        // Back off to the start of a Unicode scalar, so no character is cut in two.
        while end > utf8.startIndex, UTF8.isContinuation(utf8[end]) {
            end = utf8.index(before: end)
        }
        return String(decoding: utf8[..<end], as: UTF8.self) + note
    }

    /// Largest result copied into the output buffer; a larger one is written as it is, after its header.
    private static let copyLimit = 16 * 1024

    private func write(_ frame: Frame) {
        guard let context else { return }
        if case .result(let id, let result) = frame, result.readableBytes > Self.copyLimit,
            frame.payloadLength <= UInt32.max
        {
            // The header (whose length covers the result) joins the buffered frames; the result follows as is.
            output.writeMultipleIntegers(frame.type.rawValue, UInt32(frame.payloadLength))
            output.writeTaskID(id)
            pushOutput()
            context.write(wrapOutboundOut(result), promise: nil)
            return
        }
        let start = output.writerIndex
        do {
            try output.writeFrame(frame)
        } catch {
            output.moveWriterIndex(to: start)
            logger.error("cannot encode \(frame.type) frame: \(error)")
        }
    }

    /// Hands the frames encoded so far to the channel, unflushed.
    private func pushOutput() {
        guard output.readableBytes > 0, let context else { return }
        let bytes = output
        output = context.channel.allocator.buffer(capacity: 0)
        context.write(wrapOutboundOut(bytes), promise: nil)
    }

    private func flushOutput() {
        pushOutput()
        context?.flush()
    }

    /// Flushes once at the end of the current event loop tick, so answers finished together go out together.
    private func scheduleFlush() {
        guard !flushPending, let context else { return }
        flushPending = true
        context.eventLoop.assumeIsolated().execute { [self] in
            guard flushPending else { return }
            flushPending = false
            flushOutput()
        }
    }

    /// Ends the connection because the client broke the protocol.
    private func violation(_ reason: String) {
        end("protocol violation: \(reason)", level: .warning)
    }

    /// Ends the connection for `reason`, which is logged and, to an extended client, sent in an `ERROR` first.
    private func end(_ reason: String, level: Logger.Level) {
        guard !isClosing, let context else { return }
        isClosing = true
        logger.log(level: level, "closing connection: \(reason)")
        if isExtended { write(.error(reason)) }
        pushOutput()
        context.writeAndFlush(wrapOutboundOut(ByteBuffer())).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
        // A client that reads nothing may never take what is still unsent: close regardless after a grace period.
        let channel = context.channel
        context.eventLoop.assumeIsolated().scheduleTask(in: Self.closingGracePeriod) {
            channel.close(promise: nil)
        }
    }

    /// How long a connection being closed may take to send its last answers and `ERROR`.
    static let closingGracePeriod = TimeAmount.seconds(2)

    private static func describe(_ address: SocketAddress) -> String {
        switch address {
        case .v4, .v6: "\(address.ipAddress ?? "?"):\(address.port ?? 0)"
        case .unixDomainSocket: "unix"
        }
    }
}
