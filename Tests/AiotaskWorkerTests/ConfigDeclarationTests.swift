import AiotaskProtocol
import AiotaskTestSupport
import ArgumentParser
import Foundation
import Logging
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

/// The settings' declarations (``DaemonSettings/declarations``) against the command line, the defaults of
/// ``ServerConfiguration`` and the texts that document them: the README table, `packaging/aiotaskd.conf` and
/// `aiotaskd(8)`.
extension ConfigTests {
    static var names: [String] { DaemonSettings.declarations.map(\.name) }

    @Test("every declared setting has an option, and the command line and the config file read its example alike")
    func commandLineMatchesFile() async throws {
        // The TLS settings read their files as they are read: theirs are made here, named by absolute paths.
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let pki = try await TestCertificates.make(in: directory)
        let server = try await pki.issue("server", dnsNames: ["localhost"])
        let files = ["tls-certificate": server.certificate, "tls-key": server.key, "tls-client-ca": pki.authority()]
        for declaration in DaemonSettings.declarations {
            let (name, example) = (declaration.name, files[declaration.name] ?? declaration.example)
            #expect(example != declaration.defaultValue, "\(name)'s example is its default")
            let fromFile = try ConfigFile.parse("\(name) = \(example)\n", path: Self.path)
            let fromCommandLine = try DaemonOptions.parse(["--\(name)", example]).settings
            #expect(fromFile != DaemonSettings(), "\(name) = \(example) changed nothing")
            #expect(fromCommandLine == fromFile, "--\(name) \(example)")
            #expect(DaemonSettings().overridden(by: fromCommandLine) == fromFile, "\(name) is not merged")
        }
    }

    @Test("a declared default, set explicitly, gives the configuration that leaving it unset gives")
    func declaredDefaults() throws {
        let unset = try DaemonSettings().configuration(handler: Self.handler)
        // `none` describes an empty list (everyone); as a value it would be a user or group named none.
        let descriptive = [
            "listen", "handler", "workers", "prefetch", "agent-listen", "log-level", "metrics-listen", "allow-users",
            "allow-groups", "tls-certificate", "tls-key", "tls-client-ca",
        ]
        for declaration in DaemonSettings.declarations where !descriptive.contains(declaration.name) {
            let text = "\(declaration.name) = \(declaration.defaultValue)\n"
            let explicit = try ConfigFile.parse(text, path: Self.path).configuration(handler: Self.handler)
            #expect(String(reflecting: explicit) == String(reflecting: unset), "\(text) is not the default")
        }
        #expect(unset.listenAddresses.isEmpty)
        #expect(unset.workers == System.coreCount)
        #expect(unset.prefetch == nil)
    }

    @Test("a reload names the changed settings it cannot apply: listen addresses and the log level")
    func changesNeedingRestart() throws {
        let started = try ConfigFile.parse("listen = unix:/a.sock\nworkers = 2\nlog-level = debug\n", path: Self.path)
        #expect(started.changesNeedingRestart(to: started).isEmpty)
        var next = started
        next["workers"] = 3
        next["max-payload"] = 1024
        next["handler"] = "sha256"
        #expect(started.changesNeedingRestart(to: next).isEmpty)
        next["log-level"] = .logLevel(.info)
        #expect(started.changesNeedingRestart(to: next) == ["log-level"])
        next["listen"] = .addresses(["unix:/b.sock"])
        #expect(started.changesNeedingRestart(to: next) == ["listen", "log-level"])
        next["listen"] = .addresses([])
        next["log-level"] = nil
        #expect(started.changesNeedingRestart(to: next) == ["listen", "log-level"])
    }

    @Test("--help lists every declared setting with its help and its default")
    func help() {
        let lines = DaemonOptions.helpMessage(columns: 10_000).split(separator: "\n")
        for declaration in DaemonSettings.declarations {
            // A long option name puts its help on the next line.
            let index = lines.firstIndex { $0.contains("--\(declaration.name) <\(declaration.valueName)>") }
            let entry = index.map { lines[$0...].prefix(2).joined(separator: " ") } ?? ""
            #expect(entry.contains(declaration.helpText), "--\(declaration.name) in: \(lines)")
        }
    }

    @Test("the README's aiotaskd table and synopsis list every setting with its declared default")
    func readme() throws {
        let text = try Self.repositoryFile("README.md")
        let section =
            try #require(text.components(separatedBy: "\n## aiotaskd\n").dropFirst().first)
            .components(separatedBy: "\n## ").first ?? ""
        var documented: [String] = []
        for line in section.split(separator: "\n") where line.hasPrefix("| `--") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            let name = cells[0].trimmingCharacters(in: CharacterSet(charactersIn: "`-"))
            documented.append(name)
            guard let declaration = DaemonSettings.declaration(named: name) else { continue }
            let shown = cells[1].replacingOccurrences(of: "`", with: "")
            #expect(shown.hasPrefix(declaration.defaultValue), "README: --\(name) default \(shown)")
        }
        #expect(documented == Self.names, "README table")
        let synopsis = section.components(separatedBy: "```")[1]
        let options = synopsis.matches(of: #/\[--([a-z-]+)/#).map { String($0.1) }
        #expect(options == ["listen", "handler", "workers", "config"] + Self.names.dropFirst(3), "README synopsis")
    }

    @Test("packaging/aiotaskd.conf describes every setting with its declared default, and no other key")
    func packagedConfigFile() throws {
        let text = try Self.repositoryFile("packaging/aiotaskd.conf")
        // A key's description starts with "# key:" and runs to the next blank line.
        var described: [String: String] = [:]
        for block in text.components(separatedBy: "\n\n") {
            guard let match = block.firstMatch(of: #/^# ([a-z-]+): /#) else { continue }
            described[String(match.1)] = block.split(separator: "\n")
                .map { $0.drop { $0 == "#" || $0 == " " } }.joined(separator: " ")
        }
        #expect(Set(described.keys) == Set(Self.names), "aiotaskd.conf descriptions")
        for declaration in DaemonSettings.declarations {
            let description = described[declaration.name] ?? ""
            #expect(
                description.contains("Default: \(declaration.defaultValue)"),
                "aiotaskd.conf: \(declaration.name): \(description)"
            )
        }
        let keys = text.matches(of: #/(?m)^#?([a-z-]+) = /#).map { String($0.1) }
        #expect(Set(keys).isSubset(of: Set(Self.names)), "aiotaskd.conf keys \(keys)")
        // The file as shipped must parse.
        _ = try ConfigFile.parse(text, path: "packaging/aiotaskd.conf")
    }

    @Test("aiotaskd(8) describes every setting with its declared default")
    func manPage() throws {
        let text = try Self.repositoryFile("packaging/man/aiotaskd.8")
        let options =
            try #require(text.components(separatedBy: ".SH OPTIONS\n").dropFirst().first)
            .components(separatedBy: "\n.SH ").first ?? ""
        var described: [String: String] = [:]
        var order: [String] = []
        for entry in options.components(separatedBy: "\n.TP\n").dropFirst() {
            guard let match = entry.firstMatch(of: #/^\.BI? \\-\\-((?:[a-z]|\\-)+)/#) else { continue }
            let name = match.1.replacingOccurrences(of: "\\-", with: "-")
            order.append(name)
            // The text without the macros that start lines, as a reader sees it.
            described[name] = entry.split(separator: "\n").dropFirst()
                .map { $0.replacing(#/^\.[A-Z]+ /#, with: "") }.joined(separator: " ")
                .replacingOccurrences(of: "\\-", with: "-").replacingOccurrences(of: "\"", with: "")
        }
        #expect(order.filter { $0 != "config" && $0 != "version" } == Self.names, "aiotaskd(8) options")
        for declaration in DaemonSettings.declarations {
            let description = described[declaration.name] ?? ""
            #expect(
                description.contains("(default: \(declaration.defaultValue)"),
                "aiotaskd(8): --\(declaration.name): \(description)"
            )
        }
    }

    static func repositoryFile(_ path: String) throws -> String {
        try String(contentsOfFile: Products.repositoryRoot + "/" + path, encoding: .utf8)
    }
}
