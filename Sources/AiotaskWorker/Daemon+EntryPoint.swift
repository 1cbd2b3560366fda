import AiotaskProtocol
import ArgumentParser
import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

// The entry points of the executables built on this library, and the only place in it that ends the process: the
// rest returns an exit status (``Daemon/run(options:resolveHandler:)``, ``PoolProcessRole``) or throws, and what that
// means for the process is decided here.

extension Daemon {
    /// The entry point of an executable whose tasks are handled by a Swift closure.
    ///
    /// In a pool process it serves tasks with `handler`; otherwise it is the daemon: it reads the
    /// command line (the same options as `aiotaskd`, without `--handler`) and runs until SIGTERM or SIGINT,
    /// its pool made of re-executions of this same binary. Ends the process with the daemon's exit status.
    ///
    /// ```swift
    /// @main struct Uppercase {
    ///     static func main() async {
    ///         await Daemon.main { task in ByteBuffer(bytes: task.readableBytesView.map { … }) }
    ///     }
    /// }
    /// ```
    public static func main(handler: @escaping TaskHandler) async -> Never {
        await runPoolProcessIfRequested(handler: handler)
        let options = DaemonMainCommand.parseOptionsOrExit()
        let name = DaemonMainCommand.programName
        let status = await run(options: options) { settings throws(ConfigurationError) in
            if let spec = settings.handler {
                throw ConfigurationError(setting: "handler", reason: "\(spec): this program runs its own Swift handler")
            }
            return .currentExecutable(displayName: "swift:\(name)")
        }
        exit(status)
    }

    /// In a pool process, serves tasks (role `handler`) or becomes the external handler (role `exec`), then ends
    /// the process; in the daemon, returns at once. Call it first thing in `main`.
    public static func runPoolProcessIfRequested(handler: @escaping TaskHandler) async {
        switch PoolProcessRole.current {
        case .handler: exit(await PoolProcessRole.serveTasks(with: handler))
        case .exec: exit(PoolProcessRole.execExternalHandler(arguments: Array(CommandLine.arguments.dropFirst())))
        case nil: return
        }
    }
}

extension Daemon {
    /// The entry point of an executable whose tasks are handled by a Swift closure that also takes each task's
    /// ``TaskContext``: its id, its deadline and a logger.
    ///
    /// It runs like the closure form, ``main(handler:)-(TaskHandler)``: the same options as `aiotaskd`, without
    /// `--handler`, and a pool made of re-executions of this same binary.
    ///
    /// ```swift
    /// @main struct Thumbnails {
    ///     static func main() async {
    ///         await Daemon.main { task, context in
    ///             context.logger.info("resizing \(task.readableBytes) bytes")
    ///             return try resize(task, before: context.deadline)
    ///         }
    ///     }
    /// }
    /// ```
    public static func main(handler: @escaping TaskContextHandler) async -> Never {
        await runPoolProcessIfRequested(handler: handler)
        // From here on this process is the daemon, which never runs the handler itself: its pool processes are
        // re-executions of this binary, which stay in the call above. The closure form's daemon serves as is.
        await main(handler: { _ in preconditionFailure("the daemon of the pool ran a handler") } as TaskHandler)
    }

    /// In a pool process, serves tasks with `handler`, which also takes each task's ``TaskContext`` (role `handler`),
    /// or becomes the external handler (role `exec`), then ends the process; in the daemon, returns at once.
    public static func runPoolProcessIfRequested(handler: @escaping TaskContextHandler) async {
        switch PoolProcessRole.current {
        case .handler: exit(await PoolProcessRole.serveTasks(with: handler))
        case .exec: exit(PoolProcessRole.execExternalHandler(arguments: Array(CommandLine.arguments.dropFirst())))
        case nil: return
        }
    }
}

/// The command line of a program built on ``Daemon/main(handler:)``: the daemon's options, plus `--help`, `-h` and
/// `--version` named after the program.
struct DaemonMainCommand: ParsableCommand {
    /// The name the program was started by, for its help text and its pool's display name.
    static var programName: String { URL(fileURLWithPath: CommandLine.arguments[0]).lastPathComponent }

    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: programName,
            abstract: "An aiotask worker: runs submitted tasks with this program's own handler, in a supervised pool.",
            discussion: "Without --listen the worker listens on unix:\(ServerAddress.defaultUnixPath).",
            version: AiotaskVersion.current
        )
    }

    @OptionGroup var options: DaemonOptions

    /// The parsed options; on `--help`, `-h` or `--version` prints the text and exits 0, on a usage error
    /// prints it and exits 64.
    static func parseOptionsOrExit() -> DaemonOptions {
        do {
            var command = try parseAsRoot()
            // `--help` and `-h` parse to ArgumentParser's own help command, not to this one.
            guard let parsed = command as? Self else {
                try command.run()
                Foundation.exit(0)
            }
            return parsed.options
        } catch {
            exit(withError: error)
        }
    }
}
