import AiotaskProtocol
import ArgumentParser
import Dispatch
import Foundation
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Runs a complete worker daemon: settings, logging, the server, and signal handling.
public enum Daemon {
    /// The entry point of an executable whose tasks are handled by a Swift closure.
    ///
    /// In a pool process it serves tasks with `handler`; otherwise it is the supervisor: it reads the
    /// command line (the same options as `aiotaskd`, without `--handler`) and runs until SIGTERM or SIGINT,
    /// its pool made of re-executions of this same binary.
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
        let options = DaemonOptions.parseOrExit()
        let settings = loadSettings(options)
        if let spec = settings.handler {
            exitWithError("--handler \(spec): this program runs its own Swift handler; remove the option")
        }
        let name = URL(fileURLWithPath: CommandLine.arguments[0]).lastPathComponent
        await run(settings: settings, handler: .currentExecutable(displayName: "swift:\(name)"))
    }

    /// In a pool process, serves tasks (role `handler`) or becomes the external handler (role `exec`), and
    /// never returns; in the supervisor, returns at once.
    public static func runPoolProcessIfRequested(handler: @escaping TaskHandler) async {
        switch WorkerRole.current {
        case .handler: await WorkerRole.serveTasks(with: handler)
        case .exec: WorkerRole.execExternalHandler(arguments: Array(CommandLine.arguments.dropFirst()))
        case nil: return
        }
    }

    /// The config file's settings (if `--config` names one) overridden by the command line's; exits with a
    /// clear message when either is invalid.
    public static func loadSettings(_ options: DaemonOptions) -> DaemonSettings {
        guard let path = options.config else { return options.settings }
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            exitWithError("cannot read config file \(path): \(error.localizedDescription)")
        }
        do {
            return try ConfigFile.parse(text, path: path).overridden(by: options.settings)
        } catch {
            exitWithError("invalid config: \(error)")
        }
    }

    /// Runs the worker with `settings`, its pool running `handler`, until SIGTERM or SIGINT; then drains and exits 0.
    public static func run(settings: DaemonSettings, handler: ProcessCommand) async -> Never {
        let level = settings.logLevel ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "aiotaskd")

        var configuration: WorkerConfiguration
        do {
            configuration = try settings.configuration(handler: handler)
        } catch {
            logger.critical("invalid configuration: \(error)")
            exitWithError("invalid configuration: \(error)")
        }
        if configuration.listenAddresses.isEmpty {
            configuration.listenAddresses = [.unix(path: ServerAddress.defaultUnixPath)]
        }

        signal(SIGPIPE, SIG_IGN)
        let stopSignals = StopSignals()
        let server: AiotaskServer
        do {
            server = try await AiotaskServer.start(configuration: configuration, logger: logger)
        } catch {
            logger.critical("cannot start: \(error)")
            exitWithError("cannot start: \(error)")
        }
        logger.info(
            "ready",
            metadata: ["workers": "\(configuration.workers)", "handler": "\(configuration.handler.displayName)"]
        )
        let signalNumber = await stopSignals.next()
        logger.info("received \(signalName(signalNumber)); draining tasks in flight")
        do {
            try await server.shutdown()
        } catch {
            logger.error("shutdown failed: \(error)")
            exit(1)
        }
        exit(0)
    }

    static func exitWithError(_ message: String) -> Never {
        StandardError.writeLine("aiotaskd: \(message)")
        exit(78)  // EX_CONFIG
    }
}

/// Delivers SIGTERM and SIGINT as an async event instead of letting them kill the process.
final class StopSignals {
    private let sources: [any DispatchSourceSignal]
    private let stream: AsyncStream<Int32>
    private let continuation: AsyncStream<Int32>.Continuation

    init() {
        (stream, continuation) = AsyncStream.makeStream(of: Int32.self)
        var sources: [any DispatchSourceSignal] = []
        for signalNumber in [SIGTERM, SIGINT] {
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
            source.setEventHandler { [continuation] in continuation.yield(signalNumber) }
            source.resume()
            sources.append(source)
        }
        self.sources = sources
    }

    /// Waits for the next stop signal.
    func next() async -> Int32 {
        for await signalNumber in stream { return signalNumber }
        return SIGTERM
    }
}
