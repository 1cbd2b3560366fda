import AiotaskWorker
import Logging
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
    /// `orphan`: start a child in the process group that sleeps for an hour, then hang; `orphan exit`: start it,
    /// then exit at once, leaving the child behind.
    case orphan(exitsAfter: Bool)
    /// `escape`: start a child that sleeps for an hour in a session (and process group) of its own, out of reach
    /// of the group kill, and return its pid.
    case escape
    /// `garbage`: write bytes that are no reply into the link to the daemon, then hang.
    case garbage
    /// `flood-stderr BYTES`: write that many bytes to stderr, in lines of 100, then return `flooded BYTES`.
    case floodStandardError(Int)
    /// `leak MB`: allocate that many MiB, touch every page, never free them, then return `leaked MB`.
    case leak(Int)
    /// `hog MB`: allocate and touch that many MiB, then hang without answering.
    case hog(Int)
    /// `context TEXT`: log TEXT through the task context's logger, then return `ID MS`: the task's id and the
    /// milliseconds left until its deadline (`none` without one).
    case context(String)
    /// `trace TEXT`: log TEXT through the task context's logger, then return the task's `traceparent` (`none`
    /// without one).
    case trace(String)
    /// `read PATH`: return the first 64 KiB of the file at PATH, or fail naming why it cannot be read (what a
    /// handler can read: docs/security.md).
    case read(String)

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
        case "orphan":
            guard argument.isEmpty || argument == "exit" else {
                throw HandlerFailure(message: "expected 'orphan' or 'orphan exit', got '\(text.prefix(40))'")
            }
            self = .orphan(exitsAfter: argument == "exit")
        case "escape": self = .escape
        case "garbage": self = .garbage
        case "flood-stderr": self = .floodStandardError(try Self.number(argument))
        case "leak": self = .leak(try Self.number(argument))
        case "hog": self = .hog(try Self.number(argument))
        case "context": self = .context(argument)
        case "trace": self = .trace(argument)
        case "read": self = .read(argument)
        default: throw HandlerFailure(message: "unknown chaos command '\(text.prefix(40))'")
        }
    }

    private static func number(_ text: String) throws -> Int {
        guard let value = Int(text), value >= 0 else {
            throw HandlerFailure(message: "expected a whole number, got '\(text.prefix(40))'")
        }
        return value
    }

    func perform(in context: TaskContext) async throws -> ByteBuffer {
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
        case .orphan(let exitsAfter):
            var pid: pid_t = 0
            let argv: [UnsafeMutablePointer<CChar>?] = [strdup("sleep"), strdup("3600"), nil]
            _ = posix_spawnp(&pid, "sleep", nil, nil, argv, environ)
            StandardError.writeLine("orphan pid \(pid)")
            if exitsAfter { Glibc.exit(0) }
            while true { Glibc.sleep(3600) }
        case .escape:
            var attributes = posix_spawnattr_t()
            posix_spawnattr_init(&attributes)
            defer { posix_spawnattr_destroy(&attributes) }
            var mask = sigset_t()
            sigemptyset(&mask)
            posix_spawnattr_setsigmask(&attributes, &mask)
            // POSIX_SPAWN_SETSID (0x80) is a GNU extension the Swift import does not show.
            posix_spawnattr_setflags(&attributes, Int16(0x80 | POSIX_SPAWN_SETSIGMASK))
            var pid: pid_t = 0
            let argv: [UnsafeMutablePointer<CChar>?] = [strdup("sleep"), strdup("3600"), nil]
            defer { argv.forEach { free($0) } }
            let error = posix_spawnp(&pid, "sleep", nil, &attributes, argv, environ)
            guard error == 0 else {
                throw HandlerFailure(message: "cannot start sleep: \(String(cString: strerror(error)))")
            }
            return ByteBuffer(string: String(pid))
        case .garbage:
            guard let link = Self.replyDescriptor() else {
                throw HandlerFailure(message: "cannot find the link to the daemon")
            }
            // Kind 0xFF is neither a result nor an error: the daemon must take this as a broken link.
            let bytes: [UInt8] = [0xFF, 0xDE, 0xAD, 0xBE, 0xEF, 0x00, 0x01, 0x02]
            _ = bytes.withUnsafeBytes { write(link, $0.baseAddress, $0.count) }
            while true { Glibc.sleep(3600) }
        case .floodStandardError(let count):
            let line = String(repeating: "x", count: 99) + "\n"
            var left = count
            while left > 0 {
                let chunk = line.utf8.prefix(left)
                _ = Array(chunk).withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
                left -= chunk.count
            }
            return ByteBuffer(string: "flooded \(count)")
        case .leak(let megabytes):
            Self.allocateAndTouch(megabytes: megabytes)
            return ByteBuffer(string: "leaked \(megabytes)")
        case .hog(let megabytes):
            Self.allocateAndTouch(megabytes: megabytes)
            while true { Glibc.sleep(3600) }
        case .context(let text):
            context.logger.info("\(text)")
            let left = context.deadline.map { deadline in
                let (seconds, attoseconds) = (deadline - .now).components
                return String(seconds * 1000 + attoseconds / 1_000_000_000_000_000)
            }
            return ByteBuffer(string: "\(context.id) \(left ?? "none")")
        case .trace(let text):
            context.logger.info("\(text)")
            return ByteBuffer(string: context.traceParent.map { "\($0)" } ?? "none")
        case .read(let path):
            let descriptor = open(path, O_RDONLY | O_CLOEXEC)
            guard descriptor >= 0 else {
                throw HandlerFailure(message: "cannot read \(path): \(String(cString: strerror(errno)))")
            }
            defer { close(descriptor) }
            var bytes = [UInt8](repeating: 0, count: 65536)
            let count = bytes.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
            guard count >= 0 else {
                throw HandlerFailure(message: "cannot read \(path): \(String(cString: strerror(errno)))")
            }
            return ByteBuffer(bytes: bytes[0..<count])
        }
    }

    /// Allocates `megabytes` MiB that are never freed, and writes to every page so they count as resident.
    private static func allocateAndTouch(megabytes: Int) {
        let size = megabytes << 20
        guard size > 0, let memory = malloc(size) else { return }
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        let bytes = memory.assumingMemoryBound(to: UInt8.self)
        for offset in stride(from: 0, to: size, by: pageSize) { bytes[offset] = 1 }
    }

    /// The descriptor on which this handler process writes its replies: the one pipe open for writing only,
    /// besides stdout and stderr (which the handler role points at the log).
    private static func replyDescriptor() -> Int32? {
        for descriptor in Int32(3)..<1024 {
            let target = UnsafeMutablePointer<CChar>.allocate(capacity: 256)
            defer { target.deallocate() }
            let length = readlink("/proc/self/fd/\(descriptor)", target, 255)
            guard length > 0 else { continue }
            target[length] = 0
            guard String(cString: target).hasPrefix("pipe:") else { continue }
            let flags = fcntl(descriptor, F_GETFL)
            if flags >= 0, flags & O_ACCMODE == O_WRONLY { return descriptor }
        }
        return nil
    }
}
