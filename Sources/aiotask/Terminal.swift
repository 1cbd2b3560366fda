import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Small helpers for the command's output.
enum Terminal {
    /// Writes `line` and a newline to stderr.
    static func writeError(_ line: String) {
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }

    /// Writes `text` to stderr as it is.
    static func writeErrorRaw(_ text: String) {
        FileHandle.standardError.write(Data(text.utf8))
    }

    /// Whether stderr is a terminal, so that progress lines make sense there.
    static var stderrIsTerminal: Bool {
        isatty(STDERR_FILENO) != 0
    }

    /// A monotonic clock reading in nanoseconds, cheap enough to take twice per task.
    static func monotonicNanoseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    /// Whether stdin is a terminal, from which `aiotask top` reads its keys.
    static var stdinIsTerminal: Bool {
        isatty(STDIN_FILENO) != 0
    }

    /// Writes `text` to stdout at once, unbuffered.
    static func writeOutput(_ text: String) {
        FileHandle.standardOutput.write(Data(text.utf8))
    }

    /// A monotonic clock reading in seconds.
    static func monotonicSeconds() -> Double {
        Double(monotonicNanoseconds()) / 1e9
    }

    /// The terminal's size from stdout, else `$COLUMNS` and `$LINES`, else 80 by 24.
    static func size() -> (columns: Int, rows: Int) {
        var size = winsize()
        if ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0, size.ws_row > 0 {
            return (Int(size.ws_col), Int(size.ws_row))
        }
        let environment = ProcessInfo.processInfo.environment
        return (environment["COLUMNS"].flatMap(Int.init) ?? 80, environment["LINES"].flatMap(Int.init) ?? 24)
    }

    /// The terminal in the mode of a full-screen view: keys read one at a time without echo, Ctrl-C read as a key
    /// (not a signal, so the way out is always through ``restore()``), the alternate screen, the cursor hidden.
    /// ``restore()`` puts back the settings found, and is also run for SIGTERM and SIGHUP.
    final class RawMode: @unchecked Sendable {
        /// The settings found, restored on the way out (also by the signal handler: hence global).
        ///
        /// On the heap rather than a global `termios`: the compiler emits such a global with the imported
        /// struct's unpadded size (57 bytes), so `tcgetattr`'s 60-byte write overflows it under AddressSanitizer.
        nonisolated(unsafe) private static let saved: UnsafeMutablePointer<termios> = {
            let pointer = UnsafeMutablePointer<termios>.allocate(capacity: 1)
            pointer.initialize(to: termios())
            return pointer
        }()
        private static let leave = "\u{1B}[?25h\u{1B}[?1049l"
        private var restored = false
        private var signalSources: [any DispatchSourceSignal] = []

        struct NotATerminal: Error, CustomStringConvertible {
            var description: String { "stdin is not a terminal (use --once or --json)" }
        }

        init() throws {
            guard tcgetattr(STDIN_FILENO, Self.saved) == 0 else { throw NotATerminal() }
            var raw = Self.saved.pointee
            raw.c_lflag &= ~tcflag_t(ICANON | ECHO | ISIG | IEXTEN)
            raw.c_iflag &= ~tcflag_t(IXON | ICRNL)
            withUnsafeMutableBytes(of: &raw.c_cc) { cc in
                cc[Int(VMIN)] = 1
                cc[Int(VTIME)] = 0
            }
            tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw)
            Terminal.writeOutput("\u{1B}[?1049h\u{1B}[?25l\u{1B}[H\u{1B}[2J")
            for number in [SIGTERM, SIGHUP, SIGINT] {
                signal(number, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
                source.setEventHandler {
                    tcsetattr(STDIN_FILENO, TCSAFLUSH, RawMode.saved)
                    Terminal.writeOutput(RawMode.leave)
                    exit(128 + number)
                }
                source.resume()
                signalSources.append(source)
            }
        }

        /// Waits up to `seconds` for a key; true when it is `q`, `Q` or Ctrl-C (or stdin ended).
        func waitForQuit(seconds: Double) async -> Bool {
            await withCheckedContinuation { continuation in
                DispatchQueue.global().async {
                    continuation.resume(returning: Self.readQuitKey(within: seconds))
                }
            }
        }

        private static func readQuitKey(within seconds: Double) -> Bool {
            let deadline = Terminal.monotonicSeconds() + seconds
            while true {
                let left = deadline - Terminal.monotonicSeconds()
                guard left > 0 else { return false }
                var descriptor = pollfd(fd: STDIN_FILENO, events: Int16(POLLIN), revents: 0)
                let ready = poll(&descriptor, 1, Int32((left * 1000).rounded(.up)))
                guard ready > 0 else { continue }
                var byte: UInt8 = 0
                let count = read(STDIN_FILENO, &byte, 1)
                if count == 0 { return true }
                if count < 0 { continue }
                if byte == UInt8(ascii: "q") || byte == UInt8(ascii: "Q") || byte == 3 { return true }
            }
        }

        /// Puts the terminal back as it was found; once.
        func restore() {
            guard !restored else { return }
            restored = true
            for source in signalSources { source.cancel() }
            tcsetattr(STDIN_FILENO, TCSAFLUSH, Self.saved)
            Terminal.writeOutput(Self.leave)
        }
    }
}
