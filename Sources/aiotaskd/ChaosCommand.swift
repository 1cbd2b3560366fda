import AiotaskWorker
import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A command for the `chaos` handler, which misbehaves on request so failure handling can be tried out.
enum ChaosCommand {
    /// `echo TEXT`: return TEXT.
    case echo(String)
    /// `sleep MS`: sleep, then return `slept MS`.
    case sleep(Int)
    /// `fail MESSAGE`: fail the task with MESSAGE.
    case fail(String)
    /// `exit CODE`: end the process with CODE.
    case exit(Int32)
    /// `signal N`: kill the process with signal N.
    case signal(Int32)
    /// `stderr TEXT`: write TEXT to stderr, then return `logged`.
    case stderr(String)
    /// `pid`: return the process id of the pool process, in decimal.
    case pid
    /// `hang`: ignore SIGTERM and never answer, so only SIGKILL ends it.
    case hang
    /// `orphan`: start a child in the process group that sleeps for an hour, then hang.
    case orphan

    init(parsing text: String) throws {
        let parts = text.split(separator: " ", maxSplits: 1).map(String.init)
        let argument = parts.count > 1 ? parts[1] : ""
        switch parts.first ?? "" {
        case "echo": self = .echo(argument)
        case "sleep": self = .sleep(try Self.number(argument))
        case "fail": self = .fail(argument)
        case "exit": self = .exit(Int32(try Self.number(argument)))
        case "signal": self = .signal(Int32(try Self.number(argument)))
        case "stderr": self = .stderr(argument)
        case "pid": self = .pid
        case "hang": self = .hang
        case "orphan": self = .orphan
        default: throw HandlerFailure(message: "unknown chaos command '\(text.prefix(40))'")
        }
    }

    private static func number(_ text: String) throws -> Int {
        guard let value = Int(text) else {
            throw HandlerFailure(message: "expected a number, got '\(text.prefix(40))'")
        }
        return value
    }

    func perform() async throws -> ByteBuffer {
        switch self {
        case .echo(let text):
            return ByteBuffer(string: text)
        case .sleep(let milliseconds):
            try await Task.sleep(for: .milliseconds(milliseconds))
            return ByteBuffer(string: "slept \(milliseconds)")
        case .fail(let message):
            throw HandlerFailure(message: message)
        case .exit(let code):
            Glibc.exit(code)
        case .signal(let number):
            Glibc.signal(number, SIG_DFL)
            raise(number)
            Glibc.exit(1)
        case .stderr(let text):
            StandardError.writeLine(text)
            return ByteBuffer(string: "logged")
        case .pid:
            return ByteBuffer(string: String(getpid()))
        case .hang:
            Glibc.signal(SIGTERM, SIG_IGN)
            while true { Glibc.sleep(3600) }
        case .orphan:
            var pid: pid_t = 0
            let argv: [UnsafeMutablePointer<CChar>?] = [strdup("sleep"), strdup("3600"), nil]
            _ = posix_spawnp(&pid, "sleep", nil, nil, argv, environ)
            StandardError.writeLine("orphan pid \(pid)")
            while true { Glibc.sleep(3600) }
        }
    }
}
