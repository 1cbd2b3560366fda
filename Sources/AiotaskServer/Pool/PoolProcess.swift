import AiotaskChildProcess
import AiotaskProtocol
import AiotaskTransport
import Logging
import NIOCore
import NIOPosix

/// What a ``PoolProcess`` reports, always on the server's event loop.
protocol PoolProcessDelegate: AnyObject {
    /// The link is up: the process can take a task.
    func processIsReady(_ process: PoolProcess)
    /// The process answered its current task; `now` is when the read that brought the reply began.
    func process(_ process: PoolProcess, didReply reply: HandlerReply, at now: NIODeadline)
    /// The process broke the handler framing or closed its stdout; it is being killed.
    func process(_ process: PoolProcess, brokeLink reason: String)
    /// The process is gone (and its process group with it).
    func process(_ process: PoolProcess, didExit status: ExitStatus)
}

/// A running pool process: its task link (stdin/stdout), its captured stderr, and the watch on its exit.
///
/// Its stored properties are `@exclusivity(unchecked)`: it lives on one event loop and the state machines it feeds
/// never call back into it, so no two accesses overlap, and the run-time checks Swift would otherwise make on each
/// access of a class's property cost about a tenth of the daemon's CPU per task (docs/performance.md).
final class PoolProcess {
    let child: ChildProcess
    var pid: Int32 { child.pid }
    /// The supervisor's ends of the process's standard streams, until ``attach(maximumReplyLength:logger:)``
    /// hands them to the loop.
    private let pipes: PoolProcessPipes
    /// The pool slot it serves (`AIOTASK_WORKER_INDEX`), which the processes it leaves behind carry too.
    private let slot: Int
    /// Who hears of the replies, the link's failure and the exit: the slot, later the ending processes.
    ///
    /// Strong, and dropped once the exit is reported (the last event), which ends the cycle with the slot. Not
    /// `weak`: a weak reference moves the slot's reference counts to a side table for good, so that every retain and
    /// release of it on the per-task path takes the slow path, and each reply pays a weak load besides.
    @exclusivity(unchecked) var delegate: (any PoolProcessDelegate)?
    @exclusivity(unchecked) private(set) var link: (any Channel)?
    /// Set once the process is reaped: from then on its pid may name another process, so it is never signalled.
    @exclusivity(unchecked) private(set) var hasExited = false
    /// Whether the process can take a task: its link is sound and it has not exited.
    var isSound: Bool { linkFailure == nil && !hasExited }
    /// The exit status, held back until the link has been read to its end (see ``exited(_:)``).
    @exclusivity(unchecked) private var pendingExit: ExitStatus?
    @exclusivity(unchecked) private var drainTimer: Scheduled<Void>?
    @exclusivity(unchecked) private var isLinkEnded = false
    @exclusivity(unchecked) private var hasReportedExit = false
    /// How long an exit is held back waiting for the end of the link; only a process that escaped the group
    /// and still holds the pipe makes it wait that long.
    static let drainLimit: Duration = .seconds(1)
    /// Set once the supervisor closed the link or signalled the process on purpose, so the link's closing is no
    /// fault of the process.
    @exclusivity(unchecked) private var isRetiring = false
    /// Why the link broke (framing error, stdout closed, unexpected reply), once it has; the process is then
    /// being killed.
    @exclusivity(unchecked) private(set) var linkFailure: String?
    @exclusivity(unchecked) private var killTimer: Scheduled<Void>?
    private let loop: any EventLoop
    /// The memory through which the process claims its tasks, for a process running a library handler.
    private let claims: TaskClaims?
    /// Tasks sent so far; the next task's index in the process's stream (wrapping).
    @exclusivity(unchecked) private(set) var sentCount: UInt32 = 0
    /// The memory through which large tasks and results travel, for a process running a library handler; its link
    /// then uses ``SharedPayloadFraming``.
    private let arena: SharedPayloadArena?
    @exclusivity(unchecked) private var arenaSpace: SharedPayloadSpace
    /// With an arena: the arena region of each task sent and not yet answered or withdrawn (nil for one sent
    /// inline), in the order sent.
    @exclusivity(unchecked) private var sentRegions = CircularBuffer<Range<Int>?>()
    /// Tasks sent through the arena so far.
    @exclusivity(unchecked) private(set) var sharedTaskCount = 0
    /// Whether the process was given its task claims, and its payload arena if one was asked for (a library
    /// handler's process normally is).
    func sharesMemory(arenaWanted: Bool) -> Bool { claims != nil && (arena != nil || !arenaWanted) }
    /// Arena regions holding a task now.
    var sharedRegionsInUse: Int { arenaSpace.regions.count }

    /// When the process was started.
    let startedAt = NIODeadline.now()

    private init(
        child: ChildProcess,
        pipes: PoolProcessPipes,
        slot: Int,
        claims: TaskClaims?,
        arena: SharedPayloadArena?,
        loop: any EventLoop
    ) {
        self.child = child
        self.pipes = pipes
        self.slot = slot
        self.claims = claims
        self.arena = arena
        self.arenaSpace = SharedPayloadSpace(capacity: arena?.capacity ?? 0)
        self.loop = loop
    }

    /// Starts a process running `command`. Call ``attach(maximumReplyLength:logger:)`` next.
    ///
    /// - Parameters:
    ///   - sharedPayloadBytes: the payload arena of a process running a library handler; 0 for none.
    ///   - programTaskContext: whether a handler program gets each task's ``TaskContextHeader``, as a library
    ///     handler always does (`handler-task-context`).
    ///   - confinement: the Landlock ruleset the process enters before it executes its program (``HiddenPaths``).
    static func spawn(
        _ command: ProcessCommand,
        slot: Int,
        sharedPayloadBytes: Int = SharedPayloadArena.defaultCapacity,
        programTaskContext: Bool = false,
        confinement: LandlockRuleset? = nil,
        loop: any EventLoop
    ) throws -> PoolProcess {
        let sendsTaskContext = command.runsSwiftHandler || programTaskContext
        var environment = [
            PoolProcessEnvironment.daemonPIDKey: String(getpid()),
            PoolProcessEnvironment.workerIndexKey: String(slot),
        ]
        if let limit = OpenFileLimit.softLimitForChildren {
            environment[OpenFileLimit.childSoftLimitKey] = String(limit)
        }
        // Without the shared memory (memfd unavailable) the process simply takes no withdrawable prefetch.
        let claims = command.runsSwiftHandler ? TaskClaims.create() : nil
        if claims != nil { environment[TaskClaims.descriptorKey] = String(TaskClaims.childDescriptor) }
        defer { if let claims { close(claims.descriptor) } }
        // Likewise, without the arena every task and result simply travels through the link.
        let arena =
            sharedPayloadBytes > 0
            ? claims.flatMap { SharedPayloadArena.create(on: $0.descriptor, capacity: sharedPayloadBytes) } : nil
        if let arena { environment[SharedPayloadArena.capacityKey] = String(arena.capacity) }
        if sendsTaskContext { environment[TaskContextHeader.environmentKey] = "1" }
        let (child, pipes) = try ChildProcess.spawnPoolProcess(
            command,
            extraEnvironment: environment,
            claimsDescriptor: claims?.descriptor,
            confinement: confinement
        )
        let process = PoolProcess(
            child: child,
            pipes: pipes,
            slot: slot,
            claims: claims?.claims,
            arena: arena,
            loop: loop
        )
        process.sendsTaskContext = sendsTaskContext
        return process
    }

    /// Whether tasks sent to the process can be withdrawn until it starts them: it announced that it claims them.
    var claimsTasks: Bool { claims?.isAnnounced ?? false }

    /// Withdraws every task sent that the process has not claimed yet, and returns the stream index of the first
    /// one withdrawn (tasks before it were claimed); nil when the process does not claim its tasks, or has not
    /// claimed every task before index `from` yet.
    func withdrawUnclaimed(from: UInt32) -> UInt32? {
        guard let claims, claims.isAnnounced, let first = claims.withdraw(from: from, sent: sentCount) else {
            return nil
        }
        // Tasks before `withdrawnBelow` that were not claimed went at an earlier withdrawal, with their regions.
        let firstHeld = TaskClaims.index(first, isAtOrAfter: withdrawnBelow) ? first : withdrawnBelow
        withdrawnBelow = sentCount
        // The process never reads a withdrawn task, so its region is free at once.
        if arena != nil {
            for _ in 0..<Int(sentCount &- firstHeld) {
                if let region = sentRegions.popLast() ?? nil { arenaSpace.release(region) }
            }
        }
        return first
    }

    /// Withdraws every task sent that the process has not claimed, the one the supervisor awaits an answer to
    /// included, and returns the stream index of the first one withdrawn (tasks before it were claimed: the process
    /// may have started them); nil when the process does not claim its tasks. For a process being stopped, or dead.
    func withdrawAllUnclaimed() -> UInt32? {
        // Any index at or before the last task claimed passes the check; a process never has 2^30 tasks in flight.
        withdrawUnclaimed(from: sentCount &- (1 << 30))
    }

    /// Stream index below which every task not claimed has been withdrawn.
    @exclusivity(unchecked) private var withdrawnBelow: UInt32 = 0

    /// Whether everything the process wrote to its stdout has been read: its link reached its end, unbroken and not
    /// closed by the supervisor. Once the process has exited, a task sent to it whose reply is not among those read
    /// was then never finished by it.
    var repliesAreAllRead: Bool { isLinkEnded && linkFailure == nil && !isLinkClosedEarly }
    /// Set when the supervisor closed the link (``retire(gracePeriod:)``): replies written after that are lost.
    @exclusivity(unchecked) private var isLinkClosedEarly = false

    /// Wires the process's link, stderr and exit to the loop; events then reach the delegate.
    func attach(maximumReplyLength: Int, logger: Logger) {
        let child = self.child
        let pipes = self.pipes
        let loop = self.loop
        let bound = NIOLoopBound(self, eventLoop: loop)

        NIOPipeBootstrap(group: loop)
            .channelOption(.allocator, value: FastCopyBuffers.allocator)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let reads = DirectFrameReads()
                    try reads.install(on: channel)
                    try channel.pipeline.syncOperations.addHandler(
                        ProcessLinkHandler(
                            process: bound.value,
                            replies: PoolReplyDecoder(
                                maximumLength: maximumReplyLength,
                                acceptsSharedResults: bound.value.arena != nil
                            ),
                            readWindow: reads.window
                        )
                    )
                }
            }
            .takingOwnershipOfDescriptors(input: pipes.stdoutReader, output: pipes.stdinWriter)
            .assumeIsolated()
            .whenComplete { result in
                let process = bound.value
                switch result {
                case .success(let channel):
                    process.link = channel
                    process.writer = CoalescingFrameWriter(channel: channel)
                    // Retired before its link was up (a reload while it started): the closing is its cue to exit.
                    if process.hasExited || process.isLinkClosedEarly {
                        channel.close(promise: nil)
                    } else {
                        process.delegate?.processIsReady(process)
                    }
                case .failure(let error):
                    process.breakLink("cannot attach to the process: \(error)")
                }
            }

        var stderrLogger = logger
        stderrLogger[metadataKey: "worker_pid"] = "\(child.pid)"
        let processLogger = stderrLogger
        NIOPipeBootstrap(group: loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(StderrLineReader(logger: processLogger))
                }
            }
            .takingOwnershipOfDescriptor(input: pipes.stderrReader)
            .whenFailure { error in
                processLogger.warning("cannot capture the stderr of pool process \(child.pid): \(error)")
            }

        // Noticed without a thread of its own, and handed to the loop.
        child.watchPoolProcessExit(slot: String(slot)) { status in
            loop.execute {
                bound.value.exited(status)
            }
        }
    }

    /// Whether each task goes with its ``TaskContextHeader``: the process runs a library handler, which reads it.
    @exclusivity(unchecked) private(set) var sendsTaskContext = false

    /// Sends a task down the link, after its `context` if the process takes one, and returns its index in the
    /// process's stream of tasks. Tasks sent in the same event-loop tick leave in one write, at its end.
    @discardableResult
    func send(_ task: ByteBuffer, context: TaskContextHeader) -> UInt32 {
        let index = sentCount
        guard let writer else { return index }
        sentCount &+= 1
        if sendsTaskContext { writer.append { $0.writeTaskContextHeader(context) } }
        if let arena {
            sendWithKind(task, arena: arena, writer: writer)
        } else {
            writer.appendRequest(task, hasKinds: false)
        }
        return index
    }

    /// Sends `task` in ``SharedPayloadFraming``: through the arena if it is large, the process mapped the arena and
    /// a region is free; inline otherwise.
    private func sendWithKind(_ task: ByteBuffer, arena: SharedPayloadArena, writer: CoalescingFrameWriter) {
        let length = task.readableBytes
        if length >= SharedPayloadArena.threshold, arena.isAnnounced, let region = arenaSpace.allocate(length) {
            arena.write(task, at: region.lowerBound)
            writer.appendSharedRequest(offset: region.lowerBound, length: length)
            sentRegions.append(region)
            sharedTaskCount += 1
            return
        }
        sentRegions.append(nil)
        writer.appendRequest(task, hasKinds: true)
    }

    /// Writes the tasks to the link, those of one tick together.
    @exclusivity(unchecked) private var writer: CoalescingFrameWriter?

    /// Asks the process group to stop: SIGTERM now, SIGKILL after `gracePeriod`.
    func terminate(gracePeriod: Duration) {
        guard !hasExited else { return }
        isRetiring = true
        child.signalGroup(SIGTERM)
        scheduleKill(after: gracePeriod)
    }

    /// Kills the process group at once.
    func kill() {
        guard !hasExited else { return }
        isRetiring = true
        child.signalGroup(SIGKILL)
    }

    /// The process's resident set in bytes, or nil once it has exited.
    var residentBytes: Int? {
        hasExited ? nil : ProcessMemory.residentBytes(of: pid)
    }

    /// The resident sets of the process and of the live processes it started, and how many of those there are; nil
    /// once it has exited.
    var treeResidentBytes: (bytes: Int, descendants: Int)? {
        hasExited ? nil : ProcessMemory.treeResidentBytes(of: pid)
    }

    /// Closes the link, which a well-behaved handler takes as its cue to exit; kills it if it is still there
    /// after `gracePeriod`.
    func retire(gracePeriod: Duration) {
        guard !hasExited else { return }
        isRetiring = true
        isLinkClosedEarly = true
        link?.close(promise: nil)
        scheduleKill(after: gracePeriod)
    }

    private func scheduleKill(after gracePeriod: Duration) {
        guard killTimer == nil else { return }
        killTimer = loop.assumeIsolated().scheduleTask(in: .init(gracePeriod)) { [weak self] in
            self?.kill()
        }
    }

    fileprivate func received(_ reply: PoolReply, at now: NIODeadline) {
        guard arena != nil else {
            if case .handler(let reply) = reply { delegate?.process(self, didReply: reply, at: now) }
            return
        }
        // Replies answer the tasks in the order sent (withdrawn ones aside, which get none).
        let region = sentRegions.popFirst() ?? nil
        switch reply {
        case .handler(let reply):
            if let region { arenaSpace.release(region) }
            delegate?.process(self, didReply: reply, at: now)
        case .sharedResult(let offset, let length):
            guard let arena, let region, region.lowerBound == offset, length <= region.count else {
                let given = region.map { "\($0.count) bytes at offset \($0.lowerBound)" } ?? "no region"
                breakLink(
                    "handler placed a result of \(length) bytes at offset \(offset) of shared memory; its task has \(given)"
                )
                return
            }
            let bytes = arena.read(offset: offset, length: length)
            arenaSpace.release(region)
            delegate?.process(self, didReply: .result(bytes), at: now)
        }
    }

    /// Kills the process because its link failed for `reason`; the delegate learns of it now, and of the exit
    /// later.
    func breakLink(_ reason: String) {
        guard !hasExited, !isRetiring, linkFailure == nil else { return }
        linkFailure = reason
        kill()
        delegate?.process(self, brokeLink: reason)
    }

    /// The process is reaped. Its last replies may still be in the pipe, unread: the exit is reported once the
    /// link has been read to its end, so a task answered just before the process died counts as answered, and
    /// only the task it was running fails.
    private func exited(_ status: ExitStatus) {
        hasExited = true
        killTimer?.cancel()
        guard let link, link.isActive, !isLinkEnded else { return reportExit(status) }
        pendingExit = status
        drainTimer = loop.assumeIsolated().scheduleTask(in: .init(Self.drainLimit)) { [weak self] in
            self?.reportExit(status)
        }
    }

    /// The link reached its end (or failed): an exit held back is reported now; otherwise the process closed its
    /// stdout while alive, which breaks the link.
    fileprivate func linkEnded() {
        isLinkEnded = true
        if let pendingExit {
            reportExit(pendingExit)
        } else {
            breakLink("handler closed its stdout")
        }
    }

    private func reportExit(_ status: ExitStatus) {
        guard !hasReportedExit else { return }
        hasReportedExit = true
        pendingExit = nil
        drainTimer?.cancel()
        link?.close(promise: nil)
        let delegate = self.delegate
        self.delegate = nil
        delegate?.process(self, didExit: status)
    }
}

/// Decodes a process's replies and passes them, and link failures, to its ``PoolProcess``.
private final class ProcessLinkHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let process: PoolProcess
    private let replies: InboundStream<PoolReplyDecoder>

    init(process: PoolProcess, replies: PoolReplyDecoder, readWindow: ReadWindow) {
        self.process = process
        self.replies = InboundStream(replies, readWindow: readWindow)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Read once for every reply of this read: with tasks sent ahead, a read brings several.
        let now = NIODeadline.now()
        replies.read(unwrapInboundIn(data), receive: { process.received($0, at: now) }) {
            brokeFraming($0, context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Replies written just before the process closed its stdout (or died) are still answers.
        replies.end(receive: { process.received($0, at: .now()) }) { brokeFraming($0, context: context) }
        process.linkEnded()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        brokeFraming(error, context: context)
    }

    private func brokeFraming(_ error: any Error, context: ChannelHandlerContext) {
        replies.stop()
        process.breakLink("handler broke the reply framing: \(error)")
        context.close(promise: nil)
    }
}
