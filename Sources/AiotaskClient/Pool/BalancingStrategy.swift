/// How an ``AiotaskClientPool`` chooses the endpoint of each task.
///
/// Only endpoints that take tasks are chosen: connected, not ejected after a failure, not stopping (`GOODBYE`).
/// Within the chosen endpoint the task goes to its connection with the fewest tasks outstanding.
public struct BalancingStrategy: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The strategy's name: `least-outstanding`, `round-robin` or `first-available` (as `aiotask --balance` takes it).
    public let rawValue: String

    /// The strategy of this name; nil for a name that is none of ``all``.
    public init?(rawValue: String) {
        guard Self.all.contains(where: { $0.rawValue == rawValue }) else { return nil }
        self.rawValue = rawValue
    }

    private init(known rawValue: String) {
        self.rawValue = rawValue
    }

    /// Two endpoints chosen at random, the task goes to the one with fewer tasks outstanding (Envoy's least
    /// request, "the power of two choices"): load follows each server's speed, without every client herding onto
    /// the one that looks least loaded. The default.
    public static let leastOutstanding = BalancingStrategy(known: "least-outstanding")
    /// Endpoints in turn, in the order given: an even spread of tasks when the servers and tasks are alike.
    public static let roundRobin = BalancingStrategy(known: "round-robin")
    /// The first endpoint in the order given that takes tasks; the next ones only while it does not (fail-over to
    /// a standby, as gearman clients do).
    public static let firstAvailable = BalancingStrategy(known: "first-available")

    /// Every strategy, for command-line help and parsing.
    public static let all: [BalancingStrategy] = [.leastOutstanding, .roundRobin, .firstAvailable]

    public var description: String { rawValue }
}
