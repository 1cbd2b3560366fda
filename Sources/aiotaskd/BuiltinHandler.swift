import AiotaskWorker
import CLibcrypto
import Foundation
import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The handlers that ship inside aiotaskd, for demos, tests and benchmarks.
enum BuiltinHandler: String, CaseIterable {
    /// Returns the task unchanged.
    case echo
    /// Returns the lower-case hex SHA-256 digest of the task.
    case sha256
    /// Sleeps for the number of milliseconds given as the task's text, then returns the task.
    case sleep
    /// Keeps a CPU busy for the number of milliseconds given as the task's text.
    case burn
    /// Fails every task, with the task's text as the error message.
    case fail
    /// Obeys a command in the task — for trying out failure handling (see ``ChaosCommand``).
    case chaos

    var summary: String {
        switch self {
        case .echo: "returns the task unchanged"
        case .sha256: "returns the hex SHA-256 digest of the task"
        case .sleep: "sleeps for the milliseconds given as the task text, then echoes it"
        case .burn: "keeps a CPU busy for the milliseconds given as the task text"
        case .fail: "fails every task, with the task text as the error message"
        case .chaos:
            "obeys the command in the task: echo TEXT, sleep MS, fail MESSAGE, exit CODE, signal N, stderr TEXT, pid, hang, orphan [exit], escape, garbage, flood-stderr BYTES, leak MB, hog MB, context TEXT, trace TEXT, read PATH"
        }
    }

    var handler: TaskContextHandler {
        switch self {
        case .echo:
            return { task, _ in task }
        case .sha256:
            return { task, _ in
                var digest = [UInt8](repeating: 0, count: 32)
                let digested = task.withUnsafeReadableBytes { bytes in
                    digest.withUnsafeMutableBufferPointer { output in
                        EVP_Digest(bytes.baseAddress, bytes.count, output.baseAddress, nil, EVP_sha256(), nil)
                    }
                }
                // Fails only when libcrypto cannot allocate its context: the task fails, the process goes on.
                guard digested == 1 else { throw HandlerFailure(message: "sha256: libcrypto's EVP_Digest failed") }
                return ByteBuffer(
                    string: digest.map { byte in (byte < 16 ? "0" : "") + String(byte, radix: 16) }.joined()
                )
            }
        case .sleep:
            return { task, _ in
                try await Task.sleep(for: .milliseconds(try Self.milliseconds(in: task)))
                return task
            }
        case .burn:
            return { task, _ in
                let milliseconds = try Self.milliseconds(in: task)
                let end = ContinuousClock.now + .milliseconds(milliseconds)
                var spins: UInt64 = 0
                while ContinuousClock.now < end { spins &+= 1 }
                return ByteBuffer(string: "burned \(milliseconds) ms (\(spins) spins)")
            }
        case .fail:
            return { task, _ in throw HandlerFailure(message: String(buffer: task)) }
        case .chaos:
            return { task, context in try await ChaosCommand(parsing: String(buffer: task)).perform(in: context) }
        }
    }

    static func milliseconds(in task: ByteBuffer) throws -> Int {
        let text = String(buffer: task).trimmingCharacters(in: " \n")
        guard let value = Int(text), value >= 0 else {
            throw HandlerFailure(message: "expected a whole number of milliseconds, got '\(text.prefix(40))'")
        }
        return value
    }
}

/// An error a built-in handler reports as the task's failure message.
struct HandlerFailure: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

extension String {
    fileprivate func trimmingCharacters(in characters: String) -> String {
        var slice = Substring(self)
        while let first = slice.first, characters.contains(first) { slice.removeFirst() }
        while let last = slice.last, characters.contains(last) { slice.removeLast() }
        return String(slice)
    }
}
