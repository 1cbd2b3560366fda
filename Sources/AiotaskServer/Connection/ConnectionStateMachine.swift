import AiotaskProtocol
import Logging
import NIOCore

/// A task as one client connection tracks it.
protocol ConnectionTask {
    /// What a `STATUS` query reports while the task is in flight.
    var status: TaskStatus { get }
}

extension TaskRecord: ConnectionTask {}

/// Everything one client connection on the server decides, as a value: events in, actions out.
///
/// ``ConnectionHandler`` feeds it the channel's events, the frames the client sends, the answers the scheduler
/// gives and the timers' expiries, and carries out the actions it returns (write, submit, hold, pause reading,
/// close…). It holds no channel, timer or scheduler, so every rule here is tested without a socket
/// (`ConnectionStateMachineTests`).
///
/// The rules:
/// - **Dialect.** A connection speaks the original protocol until the client sends an extension frame (normally
///   `HELLO`); only then is it sent extension frames, so a legacy client never sees a frame it cannot parse. A
///   legacy client learns of a failed task as `UPDATE NOT_FOUND`, never as a fake `DONE`.
/// - **Tasks.** A task id is in use from its frame until its answer; reusing one breaks the protocol. A client has
///   at most `max-tasks-per-connection` tasks in flight; more are refused at once.
/// - **Answers the client leaves unread** (``AnswerBacklog``): its tasks are held back until they drain; past
///   ``AnswerBacklog/immediateAnswerLimit`` answers given at once, reading pauses; a client that neither reads nor
///   sends for the write timeout is disconnected.
/// - **Idle.** With nothing in flight and no complete frame for the idle timeout, the connection closes.
/// - **Versions.** A frame of a later protocol version than the client's `HELLO` negotiated is a violation: the
///   server never sees what it did not agree to. `TRACE_CONTEXT` (version 3) must come right before the task frame
///   of the same id; an invalid `traceparent` in it is logged and ignored, and its task runs untraced (W3C: a
///   receiver ignores an invalid `traceparent`).
/// - **Ending.** A connection that is closing (protocol violation, idle, write timeout, refused) ignores every frame
///   from then on; a draining server says `GOODBYE` once to an extended client; at the channel's end, the tasks in
///   flight are abandoned.
struct ConnectionStateMachine<Task: ConnectionTask> {
    enum Lifecycle: Equatable {
        /// The channel is not active yet.
        case connecting
        /// Frames are read and answered.
        case open
        /// The client's user is not let in (`allow-users`, `allow-groups`; the reason says why): nothing it sends
        /// is read as a frame; its first byte only tells whether it gets an `ERROR` before the connection closes.
        case refusing(reason: String)
        /// The connection is being closed: frames are ignored; answers still leave.
        case closing
        /// The channel is inactive.
        case closed
    }

    /// What the protocol is spoken in, learned from the client's frames.
    enum Dialect: Equatable {
        /// The original protocol: no extension frame is sent.
        case legacy
        /// The client sent an extension frame; it accepts results up to this length (from its `HELLO`).
        case extended(resultLimit: Int)
    }

    /// The server's settings in force (a reload may change them while the connection is open).
    struct Limits {
        var maximumPayloadLength: Int
        var maximumTasksPerConnection: Int
        var idleTimeout: Duration?
        var writeTimeout: Duration?
    }

    enum Action {
        case none
        /// Close the connection at once: the server has too many.
        case refuseConnection
        /// The client's user is not let in: log `reason`, count the refusal, and end the connection at `deadline` if
        /// the client has sent nothing by then.
        case refusePeer(reason: String, deadline: NIODeadline)
        /// End a refused connection: send `farewell` (an `ERROR`, to a client that speaks the extensions), close the
        /// output once it is sent, and the whole connection when the client closes or after a grace period.
        case endRefused(reason: String, farewell: Frame?)
        /// Check for an idle connection at this deadline.
        case armIdleCheck(at: NIODeadline)
        /// Write this answer now; then, if set, stop reading from the client.
        case write(Frame, pauseReading: Bool)
        /// Answer `HELLO` with this one, followed by `GOODBYE` when the server is draining; then, if set, stop
        /// reading from the client.
        case greet(Frame, goodbye: Frame?, pauseReading: Bool)
        /// Answer `INFO_REQUEST` with the server's statistics; then, if set, stop reading from the client.
        case writeInfo(pauseReading: Bool)
        /// Put the server into drain for the agent check (or take it out), then write `INFO` (an operator's `DRAIN`).
        case setDrained(Bool, pauseReading: Bool)
        /// Answer `POOL_REQUEST` with the pool's state; then, if set, stop reading from the client.
        case writePool(pauseReading: Bool)
        /// Hand the task to the scheduler; report with ``taskSubmitted(refusedAtOnce:)`` whether it answered it at
        /// once.
        case submit(Task)
        /// Answer the task at once with this failure, without queueing it; then, if set, stop reading.
        case refuse(Task, FailureReason, String, pauseReading: Bool)
        /// Refuse a task of `length` bytes whose bytes could not be held while they arrived: the queue is full;
        /// then, if set, stop reading.
        case refuseUnheld(Task, length: Int, pauseReading: Bool)
        /// Cancel the task.
        case cancel(Task)
        /// Log that the trace context of task `TaskID` is ignored, and why: its `traceparent` is invalid. The task
        /// runs without one.
        case ignoreTraceContext(TaskID, reason: String)
        /// Log `reason` at `level`, send `farewell` (an `ERROR`, to an extended client), and close once it is sent.
        case close(reason: String, level: Logger.Level, farewell: Frame?)
        /// The client has not read its answers for `timeout`: close at once, dropping what is unsent (its tasks are
        /// cancelled).
        case disconnectStalled(timeout: Duration, tasksInFlight: Int)
        /// Hold back the connection's tasks from now on; check for a stalled client at the deadline, if any.
        case holdTasks(stallCheck: NIODeadline?)
        /// Run the tasks held back; resume reading if it was paused.
        case releaseTasks([Task], resumeReading: Bool)
        /// Stop reading from the client.
        case pauseReading
        /// Check for a stalled client at this deadline.
        case armStallCheck(at: NIODeadline)
        /// Write the answer to a task, flushed at the end of the tick; arm the idle check if a deadline is given.
        case writeAnswer(Frame, armIdleCheck: NIODeadline?)
        /// Write `GOODBYE`, flushed at the end of the tick.
        case sayGoodbye(Frame)
        /// Close the output once what was written is sent, and the whole connection after `linger`.
        case closeOutput(linger: TimeAmount)
        /// Write and flush what is buffered.
        case flush
        /// The connection is gone: stop timers, give back what it held, and abandon these tasks.
        case tearDown(abandoned: [Task])
    }

    /// Largest result a legacy client can receive: a `DONE` payload is at most 65,535 bytes, id included.
    static var legacyResultLimit: Int { ByteBuffer.legacyFrameLimit - TaskID.byteCount }
    /// Longest failure message sent to a client, in UTF-8 bytes. A handler's error text can be any length, but a
    /// `FAILED` frame is a control frame, which a client refuses past 64 KiB (closing the whole connection).
    static var failureMessageLimit: Int { 4096 }

    private(set) var lifecycle = Lifecycle.connecting
    private(set) var dialect = Dialect.legacy
    /// The protocol version its `HELLO` negotiated: 0 until then (legacy, or extended by another frame).
    private(set) var negotiatedVersion: UInt8 = 0
    /// The `TRACE_CONTEXT` just received: the task frame right after it must have this id, and gets the trace (nil
    /// when its `traceparent` was invalid).
    private var pendingTrace: (id: TaskID, trace: TaskTrace?)?
    /// Whether `GOODBYE` was sent.
    private(set) var saidGoodbye = false
    /// Its tasks not answered yet.
    private(set) var inFlight: [TaskID: Task] = [:]
    /// Its tasks that reached the head of the queue while held back, in order; they run once answers drain.
    private(set) var heldTasks = CircularBuffer<Task>()
    /// What happens while the client leaves its answers unread.
    private(set) var backlog: AnswerBacklog
    /// The statuses of its last answered tasks, for `STATUS` queries.
    private var finished: FinishedTaskLog
    /// When the connection last showed life: a complete frame arrived, or its last task was answered.
    private(set) var lastActivity: NIODeadline
    /// Whether an idle check is armed.
    private(set) var isIdleCheckArmed = false

    init(finishedTasksRemembered: Int, writeTimeout: Duration?, now: NIODeadline) {
        self.finished = FinishedTaskLog(capacity: finishedTasksRemembered)
        self.backlog = AnswerBacklog(writeTimeout: writeTimeout)
        self.lastActivity = now
    }

    /// Whether the client negotiated the extensions.
    var isExtended: Bool {
        if case .extended = dialect { return true }
        return false
    }

    /// The largest result this client can receive: what its `HELLO` announced, or what fits a legacy `DONE`.
    var resultLimit: Int {
        switch dialect {
        case .legacy: Self.legacyResultLimit
        case .extended(let limit): limit
        }
    }

    /// Whether the connection's tasks wait instead of running, because its answers are not being read.
    var isHoldingTasks: Bool { backlog.isHoldingTasks }

    // MARK: The channel

    /// The channel is active; `registered` says whether the server took the connection (it may have too many).
    mutating func channelActive(registered: Bool, now: NIODeadline, limits: Limits) -> Action {
        precondition(lifecycle == .connecting, "a connection became active twice")
        guard registered else {
            lifecycle = .closing
            return .refuseConnection
        }
        lifecycle = .open
        lastActivity = now
        return armIdleCheck(limits)
    }

    /// The channel is active, and the client's user is not let in (`reason`, which starts with
    /// `ErrorMessage.permissionDeniedPrefix`): no frame is read; see ``refusedClientSent(firstByte:)``.
    mutating func channelActive(refusing reason: String, now: NIODeadline) -> Action {
        precondition(lifecycle == .connecting, "a connection became active twice")
        lifecycle = .refusing(reason: reason)
        return .refusePeer(reason: reason, deadline: now + Self.refusalWait)
    }

    /// How long a refused client has to send its first byte (an extended client sends `HELLO` as it connects), so
    /// that it can be told why; then the connection closes regardless.
    static var refusalWait: TimeAmount { .seconds(2) }

    /// Whether the connection is refused and waits for the client's first byte.
    var isRefusing: Bool {
        if case .refusing = lifecycle { return true }
        return false
    }

    /// A refused client sent bytes, starting with `firstByte`. A type byte with the high bit set is an extension
    /// frame's (normally `HELLO`): the client parses extension frames, so it is told why in an `ERROR`. A legacy
    /// client cannot parse one, and the connection just closes. Nothing it sent is read as a frame, let alone a task.
    mutating func refusedClientSent(firstByte: UInt8) -> Action {
        guard case .refusing(let reason) = lifecycle else { return .none }
        lifecycle = .closing
        let speaksExtensions = firstByte & 0x80 != 0
        return .endRefused(reason: reason, farewell: speaksExtensions ? .error(reason) : nil)
    }

    /// The refused client sent nothing within ``refusalWait``: the connection closes without a word.
    mutating func refusalWaitDue() -> Action {
        guard case .refusing(let reason) = lifecycle else { return .none }
        lifecycle = .closing
        return .endRefused(reason: "\(reason); the client sent nothing", farewell: nil)
    }

    /// The channel's writability changed.
    mutating func writabilityChanged(isWritable: Bool, now: NIODeadline, writeTimeout: Duration?) -> Action {
        // The write timeout in force now: a reload may have changed it since the connection opened.
        backlog.writeTimeout = writeTimeout
        switch backlog.writabilityChanged(isWritable: isWritable, now: now) {
        case .holdTasks(let stallCheck):
            return .holdTasks(stallCheck: stallCheck)
        case .releaseTasks(let resumeReading):
            let released = Array(heldTasks)
            heldTasks.removeAll()
            return .releaseTasks(released, resumeReading: resumeReading)
        case .none, .pauseReading, .checkStall, .disconnect:
            return .none
        }
    }

    /// A read completed.
    func readComplete() -> Action {
        lifecycle == .closed ? .none : .flush
    }

    /// Whether bytes read now are decoded: not once the connection is closing.
    var isReading: Bool { lifecycle == .open }

    /// The channel is inactive: every task in flight is abandoned.
    mutating func channelInactive() -> Action {
        lifecycle = .closed
        heldTasks.removeAll()
        let abandoned = Array(inFlight.values)
        inFlight.removeAll()
        return .tearDown(abandoned: abandoned)
    }

    // MARK: Frames

    /// One frame (or an oversized task) arrived from the client. `makeTask` makes the record of a task it submits.
    mutating func frameReceived(
        _ inbound: InboundFrame,
        limits: Limits,
        isAccepting: Bool,
        makeTask: (TaskID, ByteBuffer, Duration?, TaskTrace?) -> Task
    ) -> Action {
        guard lifecycle == .open else { return .none }
        switch inbound {
        case .frame(let frame):
            if frame.type.isExtension { negotiated(resultLimit: nil) }
            var trace: TaskTrace?
            if let pending = pendingTrace {
                pendingTrace = nil
                switch frame {
                case .submit(let id, _, _) where id == pending.id, .enqueue(let id, _) where id == pending.id:
                    trace = pending.trace
                default:
                    return violation(Self.misplacedTraceContext(pending.id, before: frame.type))
                }
            }
            return received(frame, trace: trace, limits: limits, isAccepting: isAccepting, makeTask: makeTask)
        case .oversized(let type, let id, let length):
            if type.isExtension { negotiated(resultLimit: nil) }
            guard type == .enqueue || type == .submit else {
                return violation("the client sent a \(type) frame, which only a server sends")
            }
            if let pending = pendingTrace {
                pendingTrace = nil
                guard pending.id == id else { return violation(Self.misplacedTraceContext(pending.id, before: type)) }
            }
            guard let task = track(id, makeTask(id, ByteBuffer(), nil, nil)) else {
                return violation("task id \(id) is already in use on this connection")
            }
            let pause = answeredAtOnce()
            guard length > limits.maximumPayloadLength else {
                // Within the payload limit, but its bytes could not be held while it arrived.
                return .refuseUnheld(task, length: length, pauseReading: pause)
            }
            let message = "task of \(length) bytes exceeds the limit of \(limits.maximumPayloadLength) bytes"
            return .refuse(task, .payloadTooLarge, message, pauseReading: pause)
        }
    }

    /// Frames were received in a read: the client shows life.
    mutating func framesReceived(now: NIODeadline) {
        lastActivity = now
        backlog.frameReceived(now: now)
    }

    /// The scheduler took the task of a ``Action/submit(_:)``, or (`refusedAtOnce`) answered it at once.
    mutating func taskSubmitted(refusedAtOnce: Bool) -> Action {
        refusedAtOnce && answeredAtOnce() ? .pauseReading : .none
    }

    /// The bytes read broke the protocol.
    mutating func protocolViolated(_ description: String) -> Action {
        violation(description)
    }

    private static func misplacedTraceContext(_ id: TaskID, before type: FrameType) -> String {
        "the TRACE_CONTEXT of task \(id) must come right before that task's SUBMIT or ENQUEUE, not before a \(type)"
    }

    private mutating func received(
        _ frame: Frame,
        trace: TaskTrace?,
        limits: Limits,
        isAccepting: Bool,
        makeTask: (TaskID, ByteBuffer, Duration?, TaskTrace?) -> Task
    ) -> Action {
        switch frame {
        case .hello(let hello):
            negotiated(resultLimit: Int(hello.maximumPayloadLength))
            // The lower version of the two: a client answers to what it knows.
            let version = min(hello.version, Hello.currentVersion)
            negotiatedVersion = version
            let answer = Frame.hello(
                Hello(version: version, maximumPayloadLength: UInt32(clamping: limits.maximumPayloadLength))
            )
            let goodbye = isAccepting ? nil : goodbyeIfDue()
            return .greet(answer, goodbye: goodbye, pauseReading: answeredAtOnce())
        case .enqueue(let id, let payload):
            return submit(id, makeTask(id, payload, nil, trace), limits: limits)
        case .submit(let id, let timeout, let payload):
            return submit(id, makeTask(id, payload, timeout, trace), limits: limits)
        case .traceContext(let id, let text, _):
            guard negotiatedVersion >= Hello.traceContextVersion else {
                return violation(
                    "TRACE_CONTEXT needs protocol version \(Hello.traceContextVersion); "
                        + "this connection's HELLO negotiated version \(negotiatedVersion)"
                )
            }
            do {
                let parent = try TraceParent(parsing: text)
                pendingTrace = (id, TaskTrace(parent: parent))
                return .none
            } catch {
                // W3C: a receiver ignores an invalid traceparent. The task runs; the operator learns why it is untraced.
                pendingTrace = (id, nil)
                return .ignoreTraceContext(id, reason: "\(error) (\(Self.quoted(text)))")
            }
        case .status(let id):
            return .write(.update(id, status(of: id)), pauseReading: answeredAtOnce())
        case .cancel(let id):
            return inFlight[id].map { .cancel($0) } ?? .none
        case .infoRequest:
            return .writeInfo(pauseReading: answeredAtOnce())
        case .drain(let drained):
            // An extension frame: the connection is extended from here on, as for any other.
            return .setDrained(drained, pauseReading: answeredAtOnce())
        case .poolRequest:
            return .writePool(pauseReading: answeredAtOnce())
        case .update, .done, .result, .failed, .info, .error, .goodbye, .pool:
            return violation("the client sent a \(frame.type) frame, which only a server sends")
        }
    }

    private mutating func negotiated(resultLimit: Int?) {
        if let resultLimit {
            dialect = .extended(resultLimit: resultLimit)
        } else if case .legacy = dialect {
            dialect = .extended(resultLimit: Int(UInt32.max))
        }
    }

    private mutating func submit(_ id: TaskID, _ task: Task, limits: Limits) -> Action {
        guard let task = track(id, task) else {
            return violation("task id \(id) is already in use on this connection")
        }
        let limit = limits.maximumTasksPerConnection
        guard inFlight.count <= limit else {
            let message = "too many tasks in flight on this connection (limit \(limit))"
            return .refuse(task, .rejected, message, pauseReading: answeredAtOnce())
        }
        return .submit(task)
    }

    /// Adds `task` to those in flight, unless its id is in use.
    private mutating func track(_ id: TaskID, _ task: Task) -> Task? {
        guard inFlight[id] == nil else { return nil }
        inFlight[id] = task
        return task
    }

    private func status(of id: TaskID) -> TaskStatus {
        let status = inFlight[id]?.status ?? finished.status(of: id) ?? .notFound
        // A legacy client knows no FAILED status: it would ignore the answer and wait forever.
        return status == .failed && !isExtended ? .notFound : status
    }

    /// Counts an answer given at once (not by a process); returns whether reading must pause.
    private mutating func answeredAtOnce() -> Bool {
        backlog.isHoldingTasks && backlog.answeredAtOnce() == .pauseReading
    }

    private mutating func violation(_ reason: String) -> Action {
        end("protocol violation: \(reason)", level: .warning)
    }

    /// Closes the connection for `reason`, which is logged and, to an extended client, sent in an `ERROR` first.
    private mutating func end(_ reason: String, level: Logger.Level) -> Action {
        guard lifecycle == .open else { return .none }
        lifecycle = .closing
        return .close(
            reason: "closing connection: \(reason)",
            level: level,
            farewell: isExtended ? .error(reason) : nil
        )
    }

    // MARK: The scheduler

    /// The scheduler reached one of this connection's tasks while it holds them back: it waits for the answers to
    /// drain.
    mutating func hold(_ task: Task) {
        heldTasks.append(task)
    }

    /// One of this connection's tasks succeeded.
    mutating func taskSucceeded(_ id: TaskID, result: ByteBuffer, now: NIODeadline, limits: Limits) -> Action {
        guard lifecycle != .closed, inFlight.removeValue(forKey: id) != nil else { return .none }
        finished.record(id, .done)
        let answer = isExtended ? Frame.result(id, result) : .done(id, result: result)
        return .writeAnswer(answer, armIdleCheck: answered(now: now, limits: limits))
    }

    /// One of this connection's tasks failed.
    mutating func taskFailed(
        _ id: TaskID,
        reason: FailureReason,
        message: String,
        now: NIODeadline,
        limits: Limits
    ) -> Action {
        guard lifecycle != .closed, inFlight.removeValue(forKey: id) != nil else { return .none }
        finished.record(id, .failed)
        // A legacy client cannot be told why; it learns that the task is gone, and is never sent a fake DONE.
        let answer =
            isExtended
            ? Frame.failed(id, reason, message: Self.truncated(message, toUTF8Count: Self.failureMessageLimit))
            : .update(id, .notFound)
        return .writeAnswer(answer, armIdleCheck: answered(now: now, limits: limits))
    }

    /// A task was answered: the last one in flight makes the connection possibly idle from now.
    private mutating func answered(now: NIODeadline, limits: Limits) -> NIODeadline? {
        guard inFlight.isEmpty else { return nil }
        lastActivity = now
        guard case .armIdleCheck(let deadline) = armIdleCheck(limits) else { return nil }
        return deadline
    }

    /// The server is draining: an extended client is told that the tasks it sends from now on are refused, and that
    /// the connection closes once those already taken are answered. A legacy client cannot be told; its later tasks
    /// are answered `NOT_FOUND`.
    mutating func serverDraining() -> Action {
        guard lifecycle == .open || lifecycle == .closing, let goodbye = goodbyeIfDue() else { return .none }
        return .sayGoodbye(goodbye)
    }

    private mutating func goodbyeIfDue() -> Frame? {
        guard isExtended, !saidGoodbye else { return nil }
        saidGoodbye = true
        return .goodbye("the server is stopping; submit new tasks on a new connection")
    }

    /// The server is stopping and closes its connections.
    func serverClosing(linger: TimeAmount) -> Action {
        lifecycle == .open || lifecycle == .closing || isRefusing ? .closeOutput(linger: linger) : .none
    }

    // MARK: Timers

    /// Arms the idle check, unless it is armed already or the idle timeout is off.
    private mutating func armIdleCheck(_ limits: Limits) -> Action {
        guard !isIdleCheckArmed, lifecycle != .closed, let timeout = limits.idleTimeout else { return .none }
        isIdleCheckArmed = true
        return .armIdleCheck(at: lastActivity + TimeAmount(timeout))
    }

    /// The idle check is due: closes the connection if it has had nothing in flight and sent no complete frame for
    /// the idle timeout; otherwise checks again when it next could be idle that long. Tasks in flight keep the
    /// connection open; the check is armed again when the last is answered.
    mutating func idleCheckDue(now: NIODeadline, limits: Limits) -> Action {
        isIdleCheckArmed = false
        guard inFlight.isEmpty, lifecycle == .open, let timeout = limits.idleTimeout else { return .none }
        guard now >= lastActivity + TimeAmount(timeout) else { return armIdleCheck(limits) }
        return end(
            "idle timeout: no request for \(Self.describe(timeout)) and no task in flight (idle-timeout)",
            level: .info
        )
    }

    /// The stall check armed by ``Action/holdTasks(stallCheck:)`` or ``Action/armStallCheck(at:)`` is due: a client
    /// that has neither read an answer nor sent a frame for the write timeout is disconnected.
    mutating func stallCheckDue(now: NIODeadline) -> Action {
        guard lifecycle == .open else { return .none }
        switch backlog.stallCheckDue(now: now) {
        case .checkStall(let deadline):
            return .armStallCheck(at: deadline)
        case .disconnect:
            guard let timeout = backlog.writeTimeout else { return .none }
            lifecycle = .closing
            return .disconnectStalled(timeout: timeout, tasksInFlight: inFlight.count)
        case .none, .holdTasks, .releaseTasks, .pauseReading:
            return .none
        }
    }

    // MARK: Texts

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

    /// A client's text for a log line: quoted, at most 80 characters, control characters escaped.
    static func quoted(_ text: String) -> String {
        let shown = text.unicodeScalars.prefix(80).map {
            $0.properties.generalCategory == .control ? $0.escaped(asASCII: true) : String($0)
        }.joined()
        return "\"\(shown)\"" + (text.unicodeScalars.count > 80 ? "…" : "")
    }

    static func describe(_ duration: Duration) -> String {
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        return seconds == seconds.rounded() ? "\(Int(seconds)) s" : "\(seconds) s"
    }
}

extension ConnectionStateMachine.Action: Equatable where Task: Equatable {}
