import AiotaskProtocol
import AiotaskTransport
import Foundation
import Logging
import NIOCore

/// Serves one client connection: feeds its ``ConnectionStateMachine`` the channel's events, the frames the client
/// sends and the answers the scheduler gives, and carries out what the state machine decides.
///
/// A connection speaks the original protocol until the client sends an extension frame (normally `HELLO`);
/// only then does it receive extension frames, so a legacy client never sees a frame it cannot parse.
///
/// Its stored properties are `@exclusivity(unchecked)`: it lives on one event loop and the state machines it feeds
/// never call back into it, so no two accesses overlap, and the run-time checks Swift would otherwise make on each
/// access of a class's property cost about a tenth of the daemon's CPU per task (docs/performance.md).
final class ConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    typealias StateMachine = ConnectionStateMachine<TaskRecord>

    /// Largest result a legacy client can receive: a `DONE` payload is at most 65,535 bytes, id included.
    static var legacyResultLimit: Int { StateMachine.legacyResultLimit }
    /// Longest failure message sent to a client, in UTF-8 bytes (see ``ConnectionStateMachine``).
    static var failureMessageLimit: Int { StateMachine.failureMessageLimit }

    private let supervisor: Supervisor
    @exclusivity(unchecked) private var logger: Logger
    @exclusivity(unchecked) private var context: ChannelHandlerContext?
    @exclusivity(unchecked) private(set) var peerDescription = "unknown"
    /// The journal fields that name the client in every entry about one of its tasks: `client`, for a Unix
    /// socket `client_uid`, `client_gid` and `client_pid`, and for a TLS client with a certificate `client_cert`.
    /// Made once as the connection opens, so the task path builds nothing to carry them.
    @exclusivity(unchecked) private(set) var clientMetadata: Logger.Metadata = ["client": "unknown"]

    /// What the connection decides; everything else here carries it out.
    @exclusivity(unchecked) private var state: StateMachine
    /// Writes the answers, those of one tick together; set while the channel is active.
    @exclusivity(unchecked) private var writer: CoalescingFrameWriter?
    /// The pending check for an idle connection.
    @exclusivity(unchecked) private var idleCheck: Scheduled<Void>?
    /// The pending check for a client that has stopped reading and sending; set while the channel is not writable.
    @exclusivity(unchecked) private var writeStall: Scheduled<Void>?
    /// Cuts the bytes read into frames.
    private let frames: InboundStream<FrameDecoder>
    /// Task bytes reserved in the supervisor's budget for the task frame being received (see
    /// ``Supervisor/reserve(_:)``); 0 when none is.
    @exclusivity(unchecked) private var reservedBytes = 0
    /// The identity of the client's TLS certificate, if it showed one (``TLSAdmissionHandler``).
    private let clientCertificate: String?

    /// - Parameters:
    ///   - readWindow: The window of the channel's ``DirectFrameReads``.
    ///   - clientCertificate: The identity of the client's TLS certificate, for the journal's `CLIENT_CERT`.
    ///   - readsFromTLS: Whether the bytes come out of TLS, in a buffer NIOSSL reuses (see ``StreamDecoder``).
    init(
        supervisor: Supervisor,
        logger: Logger,
        readWindow: ReadWindow? = nil,
        clientCertificate: String? = nil,
        readsFromTLS: Bool = false
    ) {
        self.supervisor = supervisor
        self.logger = logger
        self.clientCertificate = clientCertificate
        self.frames = InboundStream(
            FrameDecoder(maximumPayloadLength: supervisor.configuration.maximumPayloadLength),
            readWindow: readWindow,
            copiesReads: readsFromTLS
        )
        self.state = StateMachine(
            finishedTasksRemembered: supervisor.configuration.finishedTasksRemembered,
            writeTimeout: supervisor.configuration.writeTimeout,
            now: .now()
        )
        // A task frame that straddles reads holds its bytes until it is whole: they count against the queue's
        // byte limit from its header on, so many slow uploads cannot hold more than the queue may.
        frames.decoder.decoder.admitPartialTask = { [unowned self] length in
            guard self.supervisor.reserve(length) else { return false }
            self.reservedBytes = length
            return true
        }
    }

    /// The settings in force (a reload may change them).
    private var limits: StateMachine.Limits {
        // Field by field: a copy of the whole configuration would retain its arrays and strings, on every frame.
        StateMachine.Limits(
            maximumPayloadLength: supervisor.configuration.maximumPayloadLength,
            maximumTasksPerConnection: supervisor.configuration.maximumTasksPerConnection,
            idleTimeout: supervisor.configuration.idleTimeout,
            writeTimeout: supervisor.configuration.writeTimeout
        )
    }

    // MARK: Channel events

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        writer = CoalescingFrameWriter(channel: context.channel)
        peerDescription = context.channel.remoteAddress.map(Self.describe) ?? "unix"
        clientMetadata = ["client": "\(peerDescription)"]
        if let clientCertificate { clientMetadata["client_cert"] = "\(clientCertificate)" }
        if let refusal = checkPeer(context: context) {
            logger[metadataKey: "client"] = "\(peerDescription)"
            perform(state.channelActive(refusing: refusal, now: .now()))
            context.fireChannelActive()
            return
        }
        for (key, value) in clientMetadata { logger[metadataKey: key] = value }
        let action = state.channelActive(registered: supervisor.register(self), now: .now(), limits: limits)
        if state.isReading { logger.debug("client connected") }
        perform(action)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if state.isReading {
            // Frames that arrived just before the end, and a stream that ends inside a frame.
            frames.end(receive: { receive($0, at: .now()) }) { errorCaught(context: context, error: $0) }
        }
        perform(state.channelInactive())
        self.context = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard state.isReading else {
            if state.isRefusing, let first = unwrapInboundIn(data).readableBytesView.first {
                perform(state.refusedClientSent(firstByte: first))
            }
            return
        }
        // Read once for every task of this read (a read can bring hundreds), as their arrival time.
        let now = NIODeadline.now()
        if frames.read(
            unwrapInboundIn(data),
            receive: { receive($0, at: now) },
            broke: { errorCaught(context: context, error: $0) }
        ) {
            // The idle clock restarts once the read is handled, not when it began: handling a long read (a thousand
            // queries answered, on a slow machine) is not time the client was idle.
            state.framesReceived(now: .now())
        }
    }

    private func receive(_ inbound: InboundFrame, at now: NIODeadline) {
        releaseReservation()
        let supervisor = self.supervisor
        let action = state.frameReceived(inbound, limits: limits, isAccepting: supervisor.isAccepting) {
            TaskRecord(id: $0, connection: self, payload: $1, timeout: $2, trace: $3, acceptedAt: now)
        }
        perform(action)
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
        let writeTimeout = supervisor.configuration.writeTimeout
        perform(
            state.writabilityChanged(isWritable: context.channel.isWritable, now: .now(), writeTimeout: writeTimeout)
        )
        context.fireChannelWritabilityChanged()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        perform(state.readComplete())
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? ProtocolError {
            perform(state.protocolViolated(error.description))
        } else {
            logger.debug("connection error: \(error)")
            context.close(promise: nil)
        }
    }

    /// Reads who the client of a Unix socket is (once, as the connection opens) into ``clientMetadata``, and checks
    /// it against `allow-users` and `allow-groups`; returns why the client is refused, or nil when it is let in.
    /// A TCP client is not checked.
    private func checkPeer(context: ChannelHandlerContext) -> String? {
        let policy = supervisor.configuration.peerPolicy
        let peer: PeerCredentials?
        do {
            peer =
                try context.pipeline.syncOperations.withUnsafeTransportIfAvailable(of: NIOBSDSocket.Handle.self) {
                    descriptor throws(PeerCredentialsError) in try PeerCredentials.read(descriptor: descriptor)
                } ?? nil
        } catch {
            // Fail closed: a client that cannot be named cannot be let in by a list of names.
            if policy.allowsEveryone {
                logger.debug("cannot read the client's credentials: \(error)")
                return nil
            }
            let reason = "\(ErrorMessage.permissionDeniedPrefix)the client's credentials cannot be read (\(error))"
            return reason
        }
        guard let peer else { return nil }
        clientMetadata.merge(peer.metadata) { _, new in new }
        guard !policy.allows(peer) else { return nil }
        for (key, value) in peer.metadata { logger[metadataKey: key] = value }
        let socket = context.channel.localAddress?.pathname.map { "unix:\($0)" } ?? "a Unix socket"
        logger[metadataKey: "socket"] = "\(socket)"
        return "\(ErrorMessage.permissionDeniedPrefix)uid \(peer.uid) (gid \(peer.gid)) is not allowed on \(socket) "
            + "(allow-users, allow-groups)"
    }

    // MARK: The supervisor's side

    /// Whether this connection's tasks wait instead of running, because its answers are not being read.
    var isHoldingTasks: Bool { state.isHoldingTasks }

    /// Keeps `record`, which reached the head of the queue while the connection holds back its tasks, until its
    /// answers drain.
    func hold(_ record: TaskRecord) {
        state.hold(record)
    }

    /// The tasks held back and not finished since, still waiting (for a shutdown that fails them).
    var tasksHeld: [TaskRecord] { state.heldTasks.filter { !$0.isFinished } }

    /// The largest result this client can receive: what its `HELLO` announced, or what fits a legacy `DONE`.
    var resultLimit: Int { state.resultLimit }

    /// Sends the outcome of one of this connection's tasks; `now` is the caller's reading of the clock.
    func complete(_ record: TaskRecord, _ outcome: TaskOutcome, at now: NIODeadline = .now()) {
        switch outcome {
        case .success(let result):
            perform(state.taskSucceeded(record.id, result: result, now: now, limits: limits))
        case .failure(let reason, let message):
            perform(state.taskFailed(record.id, reason: reason, message: message, now: now, limits: limits))
        }
    }

    /// Tells an extended client that the server is stopping: the tasks it sends from now on are refused with
    /// `shuttingDown`, and the connection closes once those already taken are answered. A legacy client cannot
    /// be told; its later tasks are answered `NOT_FOUND`.
    func sayGoodbye() {
        perform(state.serverDraining())
    }

    /// Ends the connection once what was written is sent: closes the output first, so the client reads every
    /// answer and then the end of the stream, and closes the whole connection when the client closes its side
    /// or after `linger`. Closing at once would make the kernel reset the connection if the client had sent
    /// more, and a reset can destroy answers the client has not read yet.
    func close(linger: TimeAmount = .seconds(2)) {
        perform(state.serverClosing(linger: linger))
    }

    /// `message` cut to at most `limit` UTF-8 bytes at a Unicode scalar boundary, ending in a note of how much was
    /// cut; unchanged when it fits.
    static func truncated(_ message: String, toUTF8Count limit: Int) -> String {
        StateMachine.truncated(message, toUTF8Count: limit)
    }

    /// How long a connection being closed may take to send its last answers and `ERROR`.
    static let closingGracePeriod = TimeAmount.seconds(2)

    // MARK: Actions

    private func perform(_ action: StateMachine.Action) {
        guard let context else { return }
        switch action {
        case .none:
            break
        case .refuseConnection:
            let limit = supervisor.configuration.maximumConnections
            logger.warning("refusing connection: \(limit) connections are open already (max-connections)")
            context.close(promise: nil)
        case .refusePeer(let reason, let deadline):
            logger.warning("refusing connection: \(reason)", metadata: ["message_id": "\(LogMessageID.peerRefused)"])
            supervisor.peerRefused()
            idleCheck = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
                idleCheck = nil
                perform(state.refusalWaitDue())
            }
        case .endRefused(let reason, let farewell):
            idleCheck?.cancel()
            idleCheck = nil
            logger.debug("closing refused connection: \(reason)")
            if let farewell { write(farewell) }
            // The output only: closing the whole connection with bytes of the client's unread would reset it, and
            // the reset could destroy the ERROR before the client reads it.
            perform(.closeOutput(linger: Self.closingGracePeriod))
        case .armIdleCheck(let deadline):
            armIdleCheck(at: deadline)
        case .write(let frame, let pauseReading):
            write(frame)
            if pauseReading { perform(.pauseReading) }
        case .greet(let hello, let goodbye, let pauseReading):
            write(hello)
            if let goodbye { write(goodbye) }
            if pauseReading { perform(.pauseReading) }
        case .writeInfo(let pauseReading):
            writeInfo()
            if pauseReading { perform(.pauseReading) }
        case .setDrained(let drained, let pauseReading):
            supervisor.setDrainedByOperator(drained, by: peerDescription)
            writeInfo()
            if pauseReading { perform(.pauseReading) }
        case .writePool(let pauseReading):
            writePool()
            if pauseReading { perform(.pauseReading) }
        case .submit(let record):
            supervisor.accept(record)
            // Refused at once: the queue is full, or the server is stopping.
            perform(state.taskSubmitted(refusedAtOnce: record.isFinished))
        case .refuse(let record, let reason, let message, let pauseReading):
            supervisor.accept(rejected: record, reason, message)
            if pauseReading { perform(.pauseReading) }
        case .refuseUnheld(let record, let length, let pauseReading):
            supervisor.accept(rejected: record, .rejected, supervisor.queueFullMessage(adding: length))
            if pauseReading { perform(.pauseReading) }
        case .cancel(let record):
            supervisor.cancel(record)
        case .ignoreTraceContext(let id, let reason):
            logger.warning(
                "ignoring the trace context of task \(id): \(reason); the task runs without it",
                metadata: ["task_id": "\(id)", "client": "\(peerDescription)"]
            )
        case .close(let reason, let level, let farewell):
            logger.log(level: level, "\(reason)")
            if let farewell { write(farewell) }
            writer?.writeBuffered()
            context.writeAndFlush(wrapOutboundOut(ByteBuffer())).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
            // A client that reads nothing may never take what is still unsent: close regardless after a grace period.
            let channel = context.channel
            context.eventLoop.assumeIsolated().scheduleTask(in: Self.closingGracePeriod) {
                channel.close(promise: nil)
            }
        case .disconnectStalled(let timeout, let tasksInFlight):
            logger.warning(
                "closing connection: the client has not read its answers for \(StateMachine.describe(timeout)) (write-timeout)",
                metadata: ["cancelled_tasks": "\(tasksInFlight)"]
            )
            // Its send buffer is full, so nothing more can reach it: close at once, dropping what is unsent.
            // Closing abandons its tasks in `channelInactive`, which stops the running ones.
            context.close(promise: nil)
        case .holdTasks(let stallCheck):
            logger.debug("the client is not reading its answers; its tasks wait until it does")
            writeStall?.cancel()
            writeStall = stallCheck.flatMap { armStallCheck(at: $0) }
        case .releaseTasks(let released, let resumeReading):
            writeStall?.cancel()
            writeStall = nil
            if resumeReading {
                context.channel.setOption(.autoRead, value: true).whenFailure { _ in }
                context.read()
            }
            supervisor.release(released)
        case .pauseReading:
            logger.debug(
                "the client sends requests but reads none of the answers; pausing reads from it",
                metadata: ["answers_waiting": "\(AnswerBacklog.immediateAnswerLimit)"]
            )
            context.channel.setOption(.autoRead, value: false).whenFailure { _ in }
        case .armStallCheck(let deadline):
            writeStall = armStallCheck(at: deadline)
        case .writeAnswer(let frame, let idleDeadline):
            write(frame)
            if let idleDeadline { armIdleCheck(at: idleDeadline) }
        case .sayGoodbye(let frame):
            write(frame)
        case .closeOutput(let linger):
            writer?.writeBuffered()
            context.writeAndFlush(wrapOutboundOut(ByteBuffer())).assumeIsolated().whenComplete { _ in
                context.close(mode: .output).assumeIsolated().whenComplete { _ in
                    context.eventLoop.assumeIsolated().scheduleTask(in: linger) {
                        context.close(promise: nil)
                    }
                }
            }
        case .flush:
            writer?.flush()
        case .tearDown(let abandoned):
            idleCheck?.cancel()
            writeStall?.cancel()
            releaseReservation()
            supervisor.unregister(self)
            for record in abandoned { supervisor.abandon(record) }
            logger.debug("client disconnected", metadata: ["abandoned_tasks": "\(abandoned.count)"])
        }
    }

    private func armIdleCheck(at deadline: NIODeadline) {
        idleCheck = context?.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            idleCheck = nil
            perform(state.idleCheckDue(now: .now(), limits: limits))
        }
    }

    private func armStallCheck(at deadline: NIODeadline) -> Scheduled<Void>? {
        context?.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            writeStall = nil
            perform(state.stallCheckDue(now: .now()))
        }
    }

    private func write(_ frame: Frame) {
        do {
            try writer?.append(frame)
        } catch {
            logger.error("cannot encode \(frame.type) frame: \(error)")
        }
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

    private func writePool() {
        do {
            let json = try Self.encode(supervisor.poolStatus(), fitting: FrameDecoder.defaultMaximumControlFrameLength)
            write(.pool(ByteBuffer(bytes: json)))
        } catch {
            logger.error("cannot encode the pool's state: \(error)")
        }
    }

    /// `status` as JSON of at most `limit` bytes: the slots at the end are left out (and counted in
    /// ``PoolStatus/processesOmitted``) while it is longer, so that a pool of thousands still fits a control frame.
    static func encode(_ status: PoolStatus, fitting limit: Int) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var status = status
        let total = status.processes.count
        while true {
            let json = try encoder.encode(status)
            guard json.count > limit, !status.processes.isEmpty else { return json }
            // Scaled to the excess, then one more, so that few rounds are needed.
            let excess = Double(json.count - limit) / Double(json.count)
            let cut = min(status.processes.count, Int(Double(status.processes.count) * excess) + 1)
            status.processes.removeLast(cut)
            status.processesOmitted = total - status.processes.count
        }
    }

    /// The client's address as the journal's `CLIENT` gives it: `HOST:PORT`, or `unix`.
    static func describe(_ address: SocketAddress) -> String {
        switch address {
        case .v4, .v6: "\(address.ipAddress ?? "?"):\(address.port ?? 0)"
        case .unixDomainSocket: "unix"
        }
    }
}
