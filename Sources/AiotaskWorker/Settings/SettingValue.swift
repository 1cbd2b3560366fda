import Logging

/// The value of one daemon setting, of the kind its declaration reads (`SettingDeclaration.Kind`).
///
/// Literals make settings easy to write in code: `settings["workers"] = 4`, `settings["task-timeout"] = 2.5`,
/// `settings["handler"] = "sha256"`.
public enum SettingValue: Sendable, Hashable, CustomStringConvertible {
    /// A whole number (`workers`, `max-payload`, …).
    case count(Int)
    /// A number of seconds, fractions allowed (`task-timeout`, …).
    case seconds(Double)
    /// Free text (`handler`).
    case text(String)
    /// Addresses to listen on, in the order given (`listen`).
    case addresses([String])
    /// A swift-log level (`log-level`).
    case logLevel(Logger.Level)
    /// User or group names or numeric ids, in the order given (`allow-users`, `allow-groups`).
    case accounts([String])

    /// The kind of setting that takes this value.
    var kind: SettingDeclaration.Kind {
        switch self {
        case .count: .count
        case .seconds: .seconds
        case .text: .text
        case .addresses: .addresses
        case .logLevel: .logLevel
        case .accounts: .accounts
        }
    }

    public var description: String {
        switch self {
        case .count(let count): "\(count)"
        case .seconds(let seconds): "\(seconds)"
        case .text(let text): text
        case .addresses(let addresses): addresses.joined(separator: " ")
        case .logLevel(let level): level.rawValue
        case .accounts(let accounts): accounts.joined(separator: " ")
        }
    }
}

extension SettingValue: ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral, ExpressibleByStringLiteral {
    public init(integerLiteral value: Int) { self = .count(value) }
    public init(floatLiteral value: Double) { self = .seconds(value) }
    public init(stringLiteral value: String) { self = .text(value) }
}
