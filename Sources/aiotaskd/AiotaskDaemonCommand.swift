import AiotaskProtocol
import AiotaskWorker
import ArgumentParser

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// `aiotaskd`: the aiotask worker daemon.
@main
struct AiotaskDaemonCommand: AsyncParsableCommand {
    static let builtinKey = "AIOTASK_BUILTIN"

    static let configuration = CommandConfiguration(
        commandName: "aiotaskd",
        abstract: "The aiotask worker: runs submitted tasks in a supervised pool of processes.",
        discussion: """
            Handlers (--handler):
            \(BuiltinHandler.allCases.map { "  \($0.rawValue): \($0.summary)" }.joined(separator: "\n"))
              exec:/path/to/program [args…]: an external program speaking docs/handler-protocol.md

            Without --listen the worker listens on unix:\(ServerAddressDefaults.unixPath).
            """,
        version: AiotaskVersion.current
    )

    @OptionGroup var options: DaemonOptions

    static func main() async {
        if PoolProcessRole.current == .handler {
            let name = getenv(builtinKey).map { String(cString: $0) } ?? ""
            guard let builtin = BuiltinHandler(rawValue: name) else {
                StandardError.writeLine("aiotaskd: unknown built-in handler '\(name)'")
                Glibc.exit(64)
            }
            await Daemon.runPoolProcessIfRequested(handler: builtin.handler)
        }
        await Daemon.runPoolProcessIfRequested(handler: { $0 })
        do {
            // Not always `Self`: `--help`, `-h` and `help` parse to ArgumentParser's own help command, which
            // prints the help when run.
            var command = try await asyncParseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }

    func run() async throws {
        let status = await Daemon.run(options: options) { settings throws(ConfigurationError) in
            do {
                return try Self.resolve(settings.handler ?? BuiltinHandler.echo.rawValue)
            } catch {
                throw ConfigurationError(setting: "handler", reason: "\(error)")
            }
        }
        // `main` ends the process with it.
        if status != 0 { throw ExitCode(status) }
    }

    /// Turns a `--handler` spec into the command the pool runs.
    static func resolve(_ spec: String) throws(HandlerSpecError) -> ProcessCommand {
        if spec.hasPrefix("exec:") {
            let words = spec.dropFirst("exec:".count).split(whereSeparator: { $0 == " " || $0 == "\t" }).map(
                String.init
            )
            guard let program = words.first, program.hasPrefix("/") else {
                throw HandlerSpecError(
                    spec: spec,
                    reason: "exec: needs an absolute program path, as in exec:/usr/bin/handler"
                )
            }
            guard access(program, X_OK) == 0 else {
                throw HandlerSpecError(spec: spec, reason: "\(program) is not an executable file")
            }
            return .external(program: program, arguments: Array(words.dropFirst()))
        }
        guard let builtin = BuiltinHandler(rawValue: spec) else {
            let names = BuiltinHandler.allCases.map(\.rawValue).joined(separator: ", ")
            throw HandlerSpecError(spec: spec, reason: "not a built-in handler (\(names)) nor exec:/path")
        }
        return .currentExecutable(environment: [builtinKey: builtin.rawValue], displayName: builtin.rawValue)
    }
}

/// A `--handler` value that names no handler.
struct HandlerSpecError: Error, CustomStringConvertible {
    var spec: String
    var reason: String
    var description: String { "--handler \(spec): \(reason)" }
}

enum ServerAddressDefaults {
    static let unixPath = "/run/aiotask/aiotask.sock"
}
