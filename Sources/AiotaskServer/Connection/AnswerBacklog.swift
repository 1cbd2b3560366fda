import NIOCore

/// What one connection does while its client leaves answers unread: events in, actions out.
///
/// A client may write all its tasks before it reads a single answer — naive clients do, and the original server
/// serves them. So a connection whose answers pile up (its channel stops being writable) is still **read**: its
/// tasks are queued, within the usual limits (`max-tasks-per-connection`, `max-queued-bytes`, `queue-capacity`).
/// What stops is **running** them: each of its tasks that reaches the head of the queue is held back until the
/// answers drain, so the answers waiting for it grow no further than those of the tasks already in processes.
///
/// Reading pauses only when the client goes on sending requests that are answered at once — tasks refused past
/// the limits, `STATUS`, `INFO` — for more than ``immediateAnswerLimit`` of them while blocked: those answers
/// would otherwise pile up without bound. And a client that neither takes an answer nor sends a complete frame
/// for the write timeout has truly stopped: it is disconnected.
///
/// The caller (``ConnectionHandler``) feeds it the channel's events and carries out the actions; it holds
/// no reference to the channel, so every rule here is tested without one.
struct AnswerBacklog {
    enum State: Equatable {
        /// Answers leave as they come.
        case flowing
        /// The channel is not writable: the client's tasks are held back.
        case blocked(Blocked)
    }

    struct Blocked: Equatable {
        /// When the client last showed life: the channel became unwritable, or a complete frame arrived since.
        var lastProgress: NIODeadline
        /// Answers written at once (not by a process) since the channel became unwritable.
        var immediateAnswers: Int
        /// Whether reading was paused because ``immediateAnswers`` passed the limit.
        var isReadingPaused: Bool
    }

    enum Action: Equatable {
        case none
        /// Hold back the connection's tasks from now on; check for a stalled client at the deadline, if any.
        case holdTasks(stallCheck: NIODeadline?)
        /// Run the tasks held back; resume reading if it was paused.
        case releaseTasks(resumeReading: Bool)
        /// Stop reading from the client.
        case pauseReading
        /// Check again at this deadline.
        case checkStall(at: NIODeadline)
        /// The client has neither read an answer nor sent a frame for the write timeout: disconnect it.
        case disconnect
    }

    /// Answers a blocked connection may accumulate from requests answered at once before it stops being read.
    static let immediateAnswerLimit = 1024

    /// How long a blocked client may go without reading an answer or sending a complete frame; nil for ever.
    var writeTimeout: Duration?
    private(set) var state = State.flowing

    init(writeTimeout: Duration?) {
        self.writeTimeout = writeTimeout
    }

    /// Whether the connection's tasks are held back.
    var isHoldingTasks: Bool {
        if case .blocked = state { return true }
        return false
    }

    mutating func writabilityChanged(isWritable: Bool, now: NIODeadline) -> Action {
        switch (state, isWritable) {
        case (.flowing, false):
            state = .blocked(Blocked(lastProgress: now, immediateAnswers: 0, isReadingPaused: false))
            return .holdTasks(stallCheck: writeTimeout.map { now + TimeAmount($0) })
        case (.blocked(let blocked), true):
            state = .flowing
            return .releaseTasks(resumeReading: blocked.isReadingPaused)
        case (.flowing, true), (.blocked, false):
            return .none
        }
    }

    /// A complete frame arrived from the client.
    mutating func frameReceived(now: NIODeadline) {
        guard case .blocked(var blocked) = state else { return }
        blocked.lastProgress = now
        state = .blocked(blocked)
    }

    /// The connection answered a request at once (a refused task, `STATUS`, `INFO`, `HELLO`).
    mutating func answeredAtOnce() -> Action {
        guard case .blocked(var blocked) = state else { return .none }
        blocked.immediateAnswers += 1
        let pause = !blocked.isReadingPaused && blocked.immediateAnswers > Self.immediateAnswerLimit
        if pause { blocked.isReadingPaused = true }
        state = .blocked(blocked)
        return pause ? .pauseReading : .none
    }

    /// The stall check armed by an earlier action is due.
    func stallCheckDue(now: NIODeadline) -> Action {
        guard case .blocked(let blocked) = state, let writeTimeout else { return .none }
        let deadline = blocked.lastProgress + TimeAmount(writeTimeout)
        return now >= deadline ? .disconnect : .checkStall(at: deadline)
    }
}
