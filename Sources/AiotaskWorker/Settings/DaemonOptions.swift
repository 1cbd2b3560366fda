import ArgumentParser
import Logging

/// The daemon's command-line options, shared by `aiotaskd` and every executable built on ``Daemon``.
///
/// Each option is a setting declared in `DaemonSettings.declarations`, which gives its name, its value's
/// name and its help with the default; ArgumentParser needs a stored property for each, so here each has one
/// line, which ``settings`` reads by reflection. `ConfigDeclarationTests` checks that every declared setting has
/// one.
public struct DaemonOptions: ParsableArguments {
    @Option(setting: "listen") public var listen: [String] = []
    @Option(setting: "handler") public var handler: String?
    @Option(setting: "workers") public var workers: Int?

    @Option(
        help: ArgumentHelp(
            "Read settings from this file (key = value lines, keys named like these options).",
            valueName: "file"
        )
    )
    public var config: String?

    @Option(setting: "queue-capacity") public var queueCapacity: Int?
    @Option(setting: "max-queued-bytes") public var maxQueuedBytes: Int?
    @Option(setting: "max-tasks-per-connection") public var maxTasksPerConnection: Int?
    @Option(setting: "max-connections") public var maxConnections: Int?
    @Option(setting: "allow-users") public var allowUsers: [String] = []
    @Option(setting: "allow-groups") public var allowGroups: [String] = []
    @Option(setting: "tls-certificate") public var tlsCertificate: String?
    @Option(setting: "tls-key") public var tlsKey: String?
    @Option(setting: "tls-minimum-version") public var tlsMinimumVersion: String?
    @Option(setting: "tls-client-ca") public var tlsClientCa: String?
    @Option(setting: "tls-allowed-clients") public var tlsAllowedClients: String?
    @Option(setting: "tls-handshake-timeout") public var tlsHandshakeTimeout: Double?
    @Option(setting: "idle-timeout") public var idleTimeout: Double?
    @Option(setting: "write-timeout") public var writeTimeout: Double?
    @Option(setting: "prefetch") public var prefetch: Int?
    @Option(setting: "max-payload") public var maxPayload: Int?
    @Option(setting: "task-timeout") public var taskTimeout: Double?
    @Option(setting: "slow-task-threshold") public var slowTaskThreshold: Double?
    @Option(setting: "kill-grace") public var killGrace: Double?
    @Option(setting: "max-tasks-per-worker") public var maxTasksPerWorker: Int?
    @Option(setting: "max-tasks-jitter") public var maxTasksJitter: Int?
    @Option(setting: "max-worker-rss") public var maxWorkerRss: Int?
    @Option(setting: "worker-shared-memory") public var workerSharedMemory: Int?
    @Option(setting: "handler-task-context") public var handlerTaskContext: Int?
    @Option(setting: "hide-credentials") public var hideCredentials: Int?
    @Option(setting: "drain-timeout") public var drainTimeout: Double?
    @Option(setting: "agent-listen") public var agentListen: [String] = []
    @Option(setting: "agent-high-water") public var agentHighWater: Int?
    @Option(setting: "log-level") public var logLevel: Logger.Level?
    @Option(setting: "metrics-listen") public var metricsListen: [String] = []

    public init() {}

    /// The command line's settings: the value of each option of a declared setting that was given.
    ///
    /// ArgumentParser finds the options above by reflection, and so does this: each `@Option(setting:)` property
    /// is read under its declared name (its Swift name in kebab case), so no setting is listed a third time.
    public var settings: DaemonSettings {
        var settings = DaemonSettings()
        for child in Mirror(reflecting: self).children {
            // `--config` names the file, and is no setting.
            guard let label = child.label, label != "_config" else { continue }
            let name = Self.settingName(ofProperty: label)
            precondition(
                DaemonSettings.declaration(named: name) != nil,
                "DaemonOptions.\(label.dropFirst()) reads as --\(name), which DaemonSettings.declarations lacks"
            )
            if let value = Self.settingValue(of: child.value, kind: DaemonSettings.declaration(named: name)?.kind) {
                settings[name] = value
            }
        }
        return settings
    }

    /// The declared name of the setting an option property holds: `_maxWorkerRss` holds `max-worker-rss`.
    static func settingName(ofProperty label: String) -> String {
        var name = ""
        for character in label.drop(while: { $0 == "_" }) {
            if character.isUppercase {
                name += "-" + character.lowercased()
            } else {
                name.append(character)
            }
        }
        return name
    }

    /// The value an option property was given, if it is a setting's option and was given.
    private static func settingValue(of option: Any, kind: SettingDeclaration.Kind?) -> SettingValue? {
        switch option {
        case let option as Option<[String]> where kind == .accounts:
            // Each as the config file reads it: `--allow-users alice,bob` is two.
            .accounts(option.wrappedValue.flatMap(AccountDatabase.split))
        case let option as Option<[String]>: .addresses(option.wrappedValue)
        case let option as Option<Int?>: option.wrappedValue.map(SettingValue.count)
        case let option as Option<Double?>: option.wrappedValue.map(SettingValue.seconds)
        case let option as Option<Logger.Level?>: option.wrappedValue.map(SettingValue.logLevel)
        case let option as Option<String?>: option.wrappedValue.map(SettingValue.text)
        default: nil
        }
    }
}

extension ArgumentHelp {
    /// The help of the declared setting `name`: its text with the default, and its value's name.
    fileprivate static func setting(_ name: String) -> ArgumentHelp {
        guard let declaration = DaemonSettings.declaration(named: name) else {
            preconditionFailure("--\(name) is not declared in DaemonSettings.declarations")
        }
        return ArgumentHelp(declaration.helpText, valueName: declaration.valueName)
    }
}

extension Option {
    /// The option of the setting `name` declared in ``DaemonSettings/declarations``, which gives its help.
    fileprivate init<T: ExpressibleByArgument>(setting name: String) where Value == T? {
        self.init(name: .customLong(name), help: .setting(name))
    }

    /// The repeatable option of the setting `name` declared in ``DaemonSettings/declarations``.
    fileprivate init<T: ExpressibleByArgument>(wrappedValue: [T], setting name: String) where Value == [T] {
        self.init(wrappedValue: wrappedValue, name: .customLong(name), help: .setting(name))
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
