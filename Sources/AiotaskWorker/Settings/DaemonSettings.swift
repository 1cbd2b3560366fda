import AiotaskProtocol
import Logging

/// The daemon's settings as given by a config file or the command line; unset values keep their defaults.
///
/// The config file uses the long option names as keys, one `key = value` per line, `#` for comments;
/// `listen` may be repeated. The command line overrides the file (its `--listen`s replace the file's).
///
/// Each setting is declared once, in `DaemonSettings.declarations`: its name, its value's kind and range, its default, its
/// help, an example and whether a reload applies it. Values are kept by that name, so a new setting needs no
/// field here: its declaration drives the config file (``ConfigFile``), the command line (``DaemonOptions``),
/// merging (``overridden(by:)``), checking and converting (``configuration(handler:)``) and `--help`; tests hold
/// the README table, `packaging/aiotaskd.conf` and `aiotaskd(8)` to it.
public struct DaemonSettings: Sendable, Equatable {
    /// The values set, by setting name; each is of the kind its declaration reads.
    private var values: [String: SettingValue] = [:]

    public init() {}

    /// The value of the setting `name`, if set; `nil` clears it.
    ///
    /// - Precondition: `name` is declared in `DaemonSettings.declarations` and the value is of its kind.
    public subscript(name: String) -> SettingValue? {
        get {
            precondition(Self.declaration(named: name) != nil, "\(name) is not declared in DaemonSettings.declarations")
            return values[name]
        }
        set {
            guard let declaration = Self.declaration(named: name) else {
                preconditionFailure("\(name) is not declared in DaemonSettings.declarations")
            }
            if let newValue {
                precondition(
                    newValue.kind == declaration.kind,
                    "\(name) takes \(declaration.kind), not \(newValue.kind) (\(newValue))"
                )
            }
            // An empty list of addresses is no list: the command line's `--listen`s replace the file's only when
            // there are some.
            values[name] = newValue == .addresses([]) || newValue == .accounts([]) ? nil : newValue
        }
    }

    /// Sets the setting `name` from its text, as the config file and the command line give it.
    public mutating func set(_ name: String, from text: String) throws(ConfigurationError) {
        guard let declaration = Self.declaration(named: name) else {
            throw ConfigurationError(setting: name, reason: "unknown setting")
        }
        let value = try declaration.read(text)
        if case .addresses(let added) = value, case .addresses(let earlier)? = values[name] {
            values[name] = .addresses(earlier + added)
        } else if case .accounts(let added) = value, case .accounts(let earlier)? = values[name] {
            values[name] = .accounts(earlier + added)
        } else {
            values[name] = value
        }
    }

    /// The addresses to listen on, as given (`unix:/PATH`, `tcp://HOST:PORT`); empty for the default.
    public var listen: [String] {
        if case .addresses(let addresses)? = values["listen"] { return addresses }
        return []
    }

    /// The handler's spec (a built-in's name or `exec:PROGRAM ARGS`), if given.
    public var handler: String? {
        if case .text(let spec)? = values["handler"] { return spec }
        return nil
    }

    /// The log level, if given.
    public var logLevel: Logger.Level? {
        if case .logLevel(let level)? = values["log-level"] { return level }
        return nil
    }

    /// The declaration of the setting named `name` (as in the config file), if there is one.
    static func declaration(named name: String) -> SettingDeclaration? {
        declarationsByName[name]
    }

    private static let declarationsByName = Dictionary(
        uniqueKeysWithValues: declarations.map { ($0.name, $0) }
    )

    /// These settings with every value set in `other` taking precedence.
    public func overridden(by other: DaemonSettings) -> DaemonSettings {
        var merged = self
        merged.values.merge(other.values) { _, new in new }
        return merged
    }

    /// A worker configuration running `handler`, with every value checked.
    public func configuration(handler: ProcessCommand) throws(ConfigurationError) -> ServerConfiguration {
        var configuration = ServerConfiguration(handler: handler)
        for declaration in Self.declarations {
            guard let value = values[declaration.name] else { continue }
            try declaration.apply(value, &configuration)
        }
        try checkTLS(of: configuration)
        return configuration
    }

    /// Checks that the TLS settings make a context that can serve, when a `tls://` listener needs one or both a
    /// certificate and a key are set: the key must be the certificate's. Each file was read by its own declaration;
    /// this is what no one of them can see alone.
    private func checkTLS(of configuration: ServerConfiguration) throws(ConfigurationError) {
        let tlsListener = configuration.listenAddresses.first { if case .tls = $0 { true } else { false } }
        let tls = configuration.tls
        guard tlsListener != nil || (!tls.certificateChain.isEmpty && tls.privateKey != nil) else { return }
        let need = tlsListener.map { "\($0) needs a certificate and its key (tls-certificate, tls-key)" }
        do {
            _ = try tls.makeContext()
        } catch {
            let file = { (name: String) in
                if case .text(let path)? = values[name] { return path }
                return "(none)"
            }
            switch error.code {
            case .missingCertificate:
                throw ConfigurationError(
                    setting: "tls-certificate",
                    reason: need ?? "tls-key is set without a certificate"
                )
            case .missingKey:
                throw ConfigurationError(setting: "tls-key", reason: need ?? "tls-certificate is set without its key")
            case .keyMismatch:
                throw ConfigurationError(
                    setting: "tls-key",
                    reason: "\(file("tls-key")) is not the private key of the certificate in \(file("tls-certificate"))"
                )
            default:
                throw ConfigurationError(
                    setting: "tls-certificate",
                    reason: "\(file("tls-certificate")) and \(file("tls-key")) cannot serve: \(error.reason)"
                )
            }
        }
    }

    /// The names of the settings that `next` gives another value than these, but that a reload cannot apply
    /// (``SettingDeclaration/reloadable``): the listening sockets stay open, and logging is set up once.
    func changesNeedingRestart(to next: DaemonSettings) -> [String] {
        Self.declarations.filter { !$0.reloadable && values[$0.name] != next.values[$0.name] }.map(\.name)
    }
}
