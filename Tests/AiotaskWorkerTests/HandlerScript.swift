import Foundation

@testable import AiotaskServer
@testable import AiotaskWorker

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A handler program written by a test: a Python 3 script in a fresh temporary directory.
///
/// The pool runs it as an argument of the interpreter (``command``) rather than executing the file itself: a
/// file just written can still be open for writing in a process another test is spawning at that moment, and
/// executing it would then fail with `ETXTBSY`.
struct HandlerScript {
    let path: String
    let directory: String

    /// The pool command that runs the script.
    var command: ProcessCommand { .program(Self.python, [path]) }

    /// The absolute path of `python3`, found in `PATH` (the handler trampoline does not search it).
    static let python: String = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for directory in path.split(separator: ":") where access("\(directory)/python3", X_OK) == 0 {
            return "\(directory)/python3"
        }
        return "/usr/bin/python3"
    }()

    /// Writes `body` after a prelude that defines `read_exactly(n)` (None at end of input) and
    /// `reply(kind, data)` (writes one framed reply to stdout and flushes), then makes the file executable.
    init(_ body: String) throws {
        directory = try makeTemporaryDirectory()
        path = directory + "/handler.py"
        let source = """
            #!/usr/bin/env python3
            import struct
            import sys

            stdin, stdout = sys.stdin.buffer, sys.stdout.buffer


            def read_exactly(n):
                data = bytearray()
                while len(data) < n:
                    chunk = stdin.read(n - len(data))
                    if not chunk:
                        return None
                    data += chunk
                return bytes(data)


            def reply(kind, data):
                stdout.write(struct.pack(">BI", kind, len(data)) + data)
                stdout.flush()


            def tasks():
                while (header := read_exactly(4)) is not None:
                    task = read_exactly(struct.unpack(">I", header)[0])
                    if task is None:
                        return
                    yield task


            \(body)

            """
        try source.write(toFile: path, atomically: true, encoding: .utf8)
        guard chmod(path, 0o755) == 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
    }

    /// Deletes the script's directory.
    func remove() {
        try? FileManager.default.removeItem(atPath: directory)
    }
}
