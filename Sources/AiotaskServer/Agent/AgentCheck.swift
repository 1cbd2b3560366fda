/// What a server tells HAProxy's `agent-check`, decided from a few figures of its scheduler and pool.
///
/// HAProxy connects to the agent port every `agent-inter`, reads one ASCII line and closes; the words of the line
/// set the server's state in HAProxy (docs/deployment.md, "Many hosts behind HAProxy"). The answer is a pure
/// function of ``AgentCheck/Figures`` so that every rule is tested without a socket (`AgentCheckTests`);
/// `AgentCheckHandler` only reads the figures and writes the line.
enum AgentCheck {
    /// What the answer is made from: the server's state at the moment HAProxy asks.
    struct Figures: Hashable, Sendable {
        /// The server is stopping: it drains, and takes no new task.
        var isStopping: Bool
        /// An operator put the server into drain (`aiotask drain`, the `DRAIN` frame).
        var isDrainedByOperator: Bool
        /// A reload is rolling the pool over: some pool process is still to be replaced once its task is answered.
        var isRollingOver: Bool
        /// No slot of the pool keeps a process alive: each keeps dying young, or waits out a restart backoff.
        var isPoolFailing: Bool
        /// The pool size (`workers`).
        var poolSize: Int
        /// Slots with an idle process.
        var idleSlots: Int
        /// Tasks waiting: queued, held back, or sent ahead and not started.
        var queuedTasks: Int
        /// Above this many waiting tasks the server asks to be drained (`agent-high-water`); nil never.
        var highWaterMark: Int?

        init(
            isStopping: Bool = false,
            isDrainedByOperator: Bool = false,
            isRollingOver: Bool = false,
            isPoolFailing: Bool = false,
            poolSize: Int,
            idleSlots: Int,
            queuedTasks: Int = 0,
            highWaterMark: Int? = nil
        ) {
            self.isStopping = isStopping
            self.isDrainedByOperator = isDrainedByOperator
            self.isRollingOver = isRollingOver
            self.isPoolFailing = isPoolFailing
            self.poolSize = poolSize
            self.idleSlots = idleSlots
            self.queuedTasks = queuedTasks
            self.highWaterMark = highWaterMark
        }
    }

    /// One answer to the agent check.
    enum Answer: Hashable, Sendable {
        /// Take new connections, with this share (1 to 100) of the server's configured weight.
        case ready(weightPercent: Int)
        /// Send no new connection; the ones open carry on.
        case drain(Reason)
        /// Mark the server down: it cannot run tasks.
        case down(Reason)

        /// The line sent to HAProxy, newline included.
        ///
        /// `up` comes with `ready` and `drain` because an agent's `down` stays until the agent says `up`: without
        /// it a server that recovered would stay down. The reason of `drain` is not sent (HAProxy takes a
        /// description only after `down`, `fail` or `stopped`); the server logs it.
        var line: String {
            switch self {
            case .ready(let weightPercent): "up ready \(weightPercent)%\n"
            case .drain: "up drain\n"
            case .down(let reason): "down #\(reason.text)\n"
            }
        }
    }

    /// Why a server is not plainly ready.
    struct Reason: RawRepresentable, Hashable, Sendable {
        let rawValue: UInt8

        init(rawValue: UInt8) {
            self.rawValue = rawValue
        }

        /// The server is stopping (SIGTERM, `systemctl stop`, an upgrade).
        static let stopping = Reason(rawValue: 1)
        /// An operator put the server into drain.
        static let drainedByOperator = Reason(rawValue: 2)
        /// A reload rolls the pool over.
        static let reloading = Reason(rawValue: 3)
        /// More tasks wait than the high-water mark.
        static let queueAboveHighWater = Reason(rawValue: 4)
        /// The pool cannot keep a process alive.
        static let poolFailing = Reason(rawValue: 5)

        /// Words for HAProxy's stats page and the log: ASCII, no newline.
        var text: String {
            switch self {
            case .stopping: "aiotaskd is stopping"
            case .drainedByOperator: "drained by the operator"
            case .reloading: "aiotaskd is reloading"
            case .queueAboveHighWater: "queue above its high-water mark"
            case .poolFailing: "no pool process stays alive"
            default: "reason \(rawValue)"
            }
        }
    }

    /// The answer for `figures`, the first rule that applies:
    ///
    /// 1. stopping: `drain` — the connections open finish their tasks (a stopping pool is no failing one);
    /// 2. the pool failing: `down` — tasks sent there would wait for a process that keeps dying;
    /// 3. drained by the operator, reloading, or more tasks waiting than the high-water mark: `drain`;
    /// 4. otherwise `ready`, weighted by the pool's idle share, at least 1 % so that a busy server still gets
    ///    connections when every server is busy (HAProxy weighs servers against each other).
    static func answer(_ figures: Figures) -> Answer {
        if figures.isStopping { return .drain(.stopping) }
        if figures.isPoolFailing { return .down(.poolFailing) }
        if figures.isDrainedByOperator { return .drain(.drainedByOperator) }
        if figures.isRollingOver { return .drain(.reloading) }
        if let highWaterMark = figures.highWaterMark, figures.queuedTasks > highWaterMark {
            return .drain(.queueAboveHighWater)
        }
        let size = max(1, figures.poolSize)
        let idle = min(max(0, figures.idleSlots), size)
        return .ready(weightPercent: max(1, idle * 100 / size))
    }
}
