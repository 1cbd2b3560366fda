import AiotaskProtocol
import Logging

/// One setting of the daemon, declared once in ``DaemonSettings/declarations``: what the config file, the
/// command line, merging, checking, `--help` and the documentation tests need to know about it.
struct SettingDeclaration: Sendable {
    /// The kinds of values a setting takes, each read and checked one way.
    enum Kind: String, Sendable, CustomStringConvertible {
        case count, seconds, text, addresses, logLevel, accounts
        var description: String { rawValue }
    }

    /// The config file's key and the long option without its dashes, such as `max-payload`.
    let name: String
    let kind: Kind
    /// The value's name in `--help`, such as `seconds`.
    let valueName: String
    /// What the setting does, for `--help`; ``helpText`` adds the default.
    let help: String
    /// The default as the docs show it: a value (`65536`, `info`) or a phrase (`the number of CPUs`).
    let defaultValue: String
    /// A valid value other than the default, as text: the tests read it through the config file and the command
    /// line and check that it changes something.
    let example: String
    /// Whether SIGHUP applies a change; otherwise only a restart does.
    let reloadable: Bool
    /// Reads the text of one config file line or option.
    let read: @Sendable (_ text: String) throws(ConfigurationError) -> SettingValue
    /// Checks a value and puts it into the configuration.
    let apply: @Sendable (SettingValue, inout ServerConfiguration) throws(ConfigurationError) -> Void

    /// The help of the command line's option: ``help`` and the default.
    var helpText: String { "\(help) (default: \(defaultValue))" }

    /// A whole number within `range`, put into the configuration by `configure`.
    static func count(
        _ name: String,
        _ range: ClosedRange<Int>,
        unit: String = "",
        valueName: String = "n",
        default defaultValue: String,
        example: String,
        reloadable: Bool = true,
        help: String,
        configure: @escaping @Sendable (Int, inout ServerConfiguration) -> Void
    ) -> Self {
        SettingDeclaration(
            name: name,
            kind: .count,
            valueName: valueName,
            help: help,
            defaultValue: defaultValue,
            example: example,
            reloadable: reloadable,
            read: { text throws(ConfigurationError) in
                guard let number = Int(text) else {
                    throw ConfigurationError(setting: name, reason: "'\(text)' is not a whole number")
                }
                return .count(number)
            },
            apply: { value, configuration throws(ConfigurationError) in
                guard case .count(let value) = value else { preconditionFailure("\(name) takes a count") }
                guard range.contains(value) else {
                    let reason: String =
                        switch (range.lowerBound, range.upperBound) {
                        case (0, .max): "must not be negative"
                        case (let lower, .max): "must be at least \(lower)"
                        case (let lower, let upper): "must be from \(lower) to \(upper)\(unit), not \(value)"
                        }
                    throw ConfigurationError(setting: name, reason: reason)
                }
                configure(value, &configuration)
            }
        )
    }

    /// A number of seconds from 0 to 1e9, fractions allowed, put into the configuration by `configure`.
    static func seconds(
        _ name: String,
        default defaultValue: String,
        example: String,
        reloadable: Bool = true,
        help: String,
        configure: @escaping @Sendable (Duration, inout ServerConfiguration) -> Void
    ) -> Self {
        SettingDeclaration(
            name: name,
            kind: .seconds,
            valueName: "seconds",
            help: help,
            defaultValue: defaultValue,
            example: example,
            reloadable: reloadable,
            read: { text throws(ConfigurationError) in
                guard let number = Double(text), number.isFinite else {
                    throw ConfigurationError(setting: name, reason: "'\(text)' is not a number of seconds")
                }
                return .seconds(number)
            },
            apply: { value, configuration throws(ConfigurationError) in
                guard case .seconds(let seconds) = value else { preconditionFailure("\(name) takes seconds") }
                guard seconds.isFinite, seconds >= 0, seconds <= 1e9 else {
                    throw ConfigurationError(
                        setting: name,
                        reason: "must be a number of seconds from 0 to 1e9, not \(seconds)"
                    )
                }
                configure(.nanoseconds(Int64(seconds * 1e9)), &configuration)
            }
        )
    }

    /// Free text, used by the daemon itself rather than put into the configuration (the handler's spec), or checked
    /// and put into the configuration by `configure`.
    static func text(
        _ name: String,
        valueName: String,
        default defaultValue: String,
        example: String,
        reloadable: Bool = true,
        help: String,
        configure: @escaping @Sendable (String, inout ServerConfiguration) throws(ConfigurationError) -> Void = {
            _,
            _ in
        }
    ) -> Self {
        SettingDeclaration(
            name: name,
            kind: .text,
            valueName: valueName,
            help: help,
            defaultValue: defaultValue,
            example: example,
            reloadable: reloadable,
            read: { text in .text(text) },
            apply: { value, configuration throws(ConfigurationError) in
                guard case .text(let text) = value else { preconditionFailure("\(name) takes text") }
                try configure(text, &configuration)
            }
        )
    }

    /// A file the daemon reads as the settings are read, at start and at each reload (a PEM certificate or key). A
    /// relative path is taken in `$CREDENTIALS_DIRECTORY`, where systemd's `LoadCredential=` puts files, and is an
    /// error without it. `load` reads the file at the resolved path into the configuration; what it throws names
    /// the setting and the file.
    static func file(
        _ name: String,
        default defaultValue: String,
        example: String,
        help: String,
        load: @escaping @Sendable (_ path: String, inout ServerConfiguration) throws(ConfigurationError) -> Void
    ) -> Self {
        .text(name, valueName: "file", default: defaultValue, example: example, help: help) {
            text,
            configuration throws(ConfigurationError) in
            try load(try CredentialFile.resolve(text, setting: name), &configuration)
        }
    }

    /// Addresses to listen on, repeatable; a list given on the command line replaces the file's. Listening
    /// sockets stay open across reloads, so a change needs a restart.
    static func addresses(
        _ name: String,
        default defaultValue: String,
        example: String,
        help: String,
        configure: @escaping @Sendable ([ServerAddress], inout ServerConfiguration) throws(ConfigurationError) -> Void
    ) -> Self {
        SettingDeclaration(
            name: name,
            kind: .addresses,
            valueName: "address",
            help: help,
            defaultValue: defaultValue,
            example: example,
            reloadable: false,
            read: { text throws(ConfigurationError) in
                do throws(AddressError) {
                    _ = try ServerAddress(parsing: text)
                } catch {
                    throw ConfigurationError(setting: name, reason: error.description)
                }
                return .addresses([text])
            },
            apply: { value, configuration throws(ConfigurationError) in
                guard case .addresses(let addresses) = value else { preconditionFailure("\(name) takes addresses") }
                let parsed: [ServerAddress]
                do throws(AddressError) {
                    parsed = try addresses.map(ServerAddress.init(parsing:))
                } catch {
                    throw ConfigurationError(setting: name, reason: error.description)
                }
                try configure(parsed, &configuration)
            }
        )
    }

    /// A swift-log level, used by the daemon when it sets up logging, at start only.
    static func logLevel(
        _ name: String,
        default defaultValue: String,
        example: String,
        help: String
    ) -> Self {
        SettingDeclaration(
            name: name,
            kind: .logLevel,
            valueName: "log-level",
            help: help,
            defaultValue: defaultValue,
            example: example,
            reloadable: false,
            read: { text throws(ConfigurationError) in
                guard let level = Logger.Level(rawValue: text) else {
                    let levels = Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")
                    throw ConfigurationError(setting: name, reason: "'\(text)' is not one of \(levels)")
                }
                return .logLevel(level)
            },
            apply: { _, _ in }
        )
    }

    /// Users or groups, by name or numeric id, repeatable, several to a value separated by commas or blanks; a list
    /// given on the command line replaces the file's. Names are looked up in the user or group database when the
    /// settings are read (at start and at each reload): an unknown name is an error of its line. A reload applies
    /// a change to the connections made from then on.
    static func accounts(
        _ name: String,
        _ database: AccountDatabase,
        default defaultValue: String,
        example: String,
        help: String,
        configure: @escaping @Sendable ([UInt32], inout ServerConfiguration) -> Void
    ) -> Self {
        SettingDeclaration(
            name: name,
            kind: .accounts,
            valueName: database.valueName,
            help: help,
            defaultValue: defaultValue,
            example: example,
            reloadable: true,
            read: { text throws(ConfigurationError) in
                let accounts = AccountDatabase.split(text)
                guard !accounts.isEmpty else {
                    throw ConfigurationError(setting: name, reason: "no \(database.valueName) in '\(text)'")
                }
                // Looked up here too, so that the error names the line of an unknown name.
                for account in accounts { _ = try database.id(of: account, setting: name) }
                return .accounts(accounts)
            },
            apply: { value, configuration throws(ConfigurationError) in
                guard case .accounts(let accounts) = value else { preconditionFailure("\(name) takes accounts") }
                var ids: [UInt32] = []
                for account in accounts {
                    let id = try database.id(of: account, setting: name)
                    if !ids.contains(id) { ids.append(id) }
                }
                configure(ids, &configuration)
            }
        )
    }
}
