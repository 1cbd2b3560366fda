import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

/// Clients that write every task before they read a single answer, as naive clients of the original protocol do:
/// they are served whole, within the documented limits, by the real `aiotaskd`, in bounded memory.
@Suite("Pipelining before reading", .serialized)
struct PipeliningTests {
    struct Load: CustomTestStringConvertible, Sendable {
        var isExtended: Bool
        var overTCP: Bool
        var tasks: Int
        var largestTask: Int

        var testDescription: String {
            "\(isExtended ? "extended" : "legacy") client over \(overTCP ? "TCP" : "a Unix socket"), "
                + "\(tasks) tasks of up to \(largestTask) bytes"
        }
    }

    static let loads: [Load] = [false, true].flatMap { isExtended in
        [true, false].flatMap { overTCP in
            [
                Load(isExtended: isExtended, overTCP: overTCP, tasks: sanitizerScaled(3000), largestTask: 30_000),
                Load(isExtended: isExtended, overTCP: overTCP, tasks: sanitizerScaled(20_000), largestTask: 1024),
            ]
        }
    }

    /// The bytes that may wait in the queue during the test: more than any load sends, and the figure the memory
    /// bound is built on.
    static let queuedBytesLimit = 64 << 20

    @Test("a client that writes all its tasks before reading any answer gets every answer", arguments: loads)
    func writeAllThenRead(load: Load) async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let address =
            load.overTCP
            ? "tcp://127.0.0.1:\(try SystemdTestKit.freePort())" : "unix:\(directory)/aiotask.sock"
        let daemon = try SpawnedProcess.spawn(
            Products.aiotaskd,
            [
                "--handler", "echo", "--workers", "2", "--listen", address,
                "--max-tasks-per-connection", "20000", "--max-queued-bytes", "\(Self.queuedBytesLimit)",
            ]
        )
        defer { daemon.killGroup() }
        try await daemon.waitForStandardError(containing: "ready")
        let baseline = try #require(statusBytes(of: daemon.pid, "VmRSS"))

        let (frames, expected) = try Self.tasks(load)
        let answers = try await withTimeout(.seconds(60)) {
            try await onThread {
                let socket = try BlockingSocket(connectingTo: address, timeout: .seconds(20 * testSlowdown))
                var hello = ByteBuffer()
                if load.isExtended { try hello.writeFrame(.hello(Hello(maximumPayloadLength: 1 << 20))) }
                // Everything first: a server that stops reading makes this write fail at the send timeout.
                try socket.send(Array(hello.readableBytesView) + frames)
                return try socket.receiveFrames(count: load.tasks + (load.isExtended ? 1 : 0))
            }
        }

        var results: [TaskID: ByteBuffer] = [:]
        for frame in answers {
            switch frame {
            case .hello: continue
            case .done(let id, let result), .result(let id, let result):
                #expect(results.updateValue(result, forKey: id) == nil, "task \(id) answered twice")
            default:
                Issue.record("unexpected answer \(frame)")
            }
        }
        #expect(results.count == load.tasks)
        #expect(results == expected, "a result differs from its task")

        // Peak memory: what the queue may hold, plus the answers and buffers of one connection (docs/reliability.md).
        let peak = try #require(statusBytes(of: daemon.pid, "VmHWM"))
        if residentMemoryIsMeaningful {
            #expect(peak <= baseline + Self.queuedBytesLimit + (32 << 20), "peak RSS \(peak >> 20) MiB")
        }

        daemon.signal(SIGTERM)
        #expect(try await daemon.wait() == .exited(0))
    }

    @Test(
        "a client that pipelines past max-tasks-per-connection before reading gets one answer per task: its result, or a refusal",
        arguments: [false, true]
    )
    func pastTheLimit(isExtended: Bool) async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let address = "unix:\(directory)/aiotask.sock"
        let daemon = try SpawnedProcess.spawn(
            Products.aiotaskd,
            ["--handler", "echo", "--workers", "2", "--listen", address, "--max-tasks-per-connection", "1000"]
        )
        defer { daemon.killGroup() }
        try await daemon.waitForStandardError(containing: "ready")

        let load = Load(isExtended: isExtended, overTCP: false, tasks: 1300, largestTask: 30_000)
        let (frames, expected) = try Self.tasks(load)
        let answers = try await withTimeout(.seconds(60)) {
            try await onThread {
                let socket = try BlockingSocket(connectingTo: address, timeout: .seconds(20 * testSlowdown))
                var hello = ByteBuffer()
                if isExtended { try hello.writeFrame(.hello(Hello(maximumPayloadLength: 1 << 20))) }
                try socket.send(Array(hello.readableBytesView) + frames)
                return try socket.receiveFrames(count: load.tasks + (isExtended ? 1 : 0))
            }
        }

        var answered: [TaskID: Int] = [:]
        var results = 0
        for frame in answers {
            switch frame {
            case .hello:
                continue
            case .done(let id, let result), .result(let id, let result):
                #expect(result == expected[id])
                answered[id, default: 0] += 1
                results += 1
            case .failed(let id, let reason, let message):
                // An extended client is told why.
                #expect(isExtended)
                #expect(reason == .rejected)
                #expect(message == "too many tasks in flight on this connection (limit 1000)")
                answered[id, default: 0] += 1
            case .update(let id, let status):
                // A legacy client has no failure frame: a refused task is one the server does not know.
                #expect(!isExtended)
                #expect(status == .notFound)
                answered[id, default: 0] += 1
            default:
                Issue.record("unexpected answer \(frame)")
            }
        }
        #expect(Set(answered.keys) == Set(expected.keys))
        #expect(answered.values.allSatisfy { $0 == 1 })
        #expect(results >= 1000, "only \(results) of the tasks within the limit ran")
        #expect(results < load.tasks, "no task was refused past the limit")

        daemon.signal(SIGTERM)
        #expect(try await daemon.wait() == .exited(0))
    }

    /// The frames of `load`'s tasks, one after another, and the result each task id should get (echo).
    private static func tasks(_ load: Load) throws -> ([UInt8], [TaskID: ByteBuffer]) {
        var frames = ByteBuffer()
        var expected: [TaskID: ByteBuffer] = [:]
        for index in 0..<load.tasks {
            let id = TaskID.random()
            let size = 1 + (index &* 7919) % load.largestTask
            let payload = ByteBuffer(repeating: UInt8(truncatingIfNeeded: index % 251), count: size)
            try frames.writeFrame(.enqueue(id, payload: payload))
            expected[id] = payload
        }
        return (Array(frames.readableBytesView), expected)
    }
}

/// A size field of `/proc/PID/status` (`VmRSS`, `VmHWM`, …) in bytes.
func statusBytes(of pid: pid_t, _ field: String) -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    let line = status.split(separator: "\n").first { $0.hasPrefix(field + ":") }
    return line?.split(separator: " ").dropFirst().first.flatMap { Int($0) }.map { $0 * 1024 }
}

/// Runs blocking `body` on a thread of its own, off the concurrency pool.
func onThread<Value: Sendable>(_ body: @escaping @Sendable () throws -> Value) async throws -> Value {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread { continuation.resume(with: Result(catching: body)) }
    }
}

/// A blocking stream socket to a `tcp://127.0.0.1:PORT` or `unix:/path` address, whose sends and receives each
/// give up after `timeout`: a peer that stops reading or answering fails the test instead of hanging it.
final class BlockingSocket {
    let descriptor: Int32

    init(connectingTo address: String, timeout: Duration) throws {
        if address.hasPrefix("unix:") {
            descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var unixAddress = sockaddr_un()
            unixAddress.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &unixAddress.sun_path) { buffer in
                buffer.copyBytes(from: address.dropFirst("unix:".count).utf8.prefix(buffer.count - 1))
            }
            try Self.check(
                withUnsafePointer(to: &unixAddress) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                    }
                }
            )
        } else {
            let port = try #require(address.split(separator: ":").last.flatMap { UInt16($0) })
            descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var inetAddress = sockaddr_in()
            inetAddress.sin_family = sa_family_t(AF_INET)
            inetAddress.sin_port = port.bigEndian
            inet_pton(AF_INET, "127.0.0.1", &inetAddress.sin_addr)
            try Self.check(
                withUnsafePointer(to: &inetAddress) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                    }
                }
            )
        }
        var limit = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit {
        close(descriptor)
    }

    private static func check(_ result: Int32) throws {
        guard result == 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
    }

    /// Writes all of `bytes`.
    ///
    /// - Throws: ``SocketWriteError`` when the peer takes nothing for the timeout, or the connection fails.
    func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes {
                Glibc.send(descriptor, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { throw SocketWriteError(errno: errno, sent: offset, of: bytes.count) }
            offset += count
        }
    }

    /// Reads until `count` frames have arrived.
    func receiveFrames(count: Int) throws -> [Frame] {
        let processor = NIOSingleStepByteToMessageProcessor(FrameDecoder(maximumPayloadLength: 64 << 20))
        var frames: [Frame] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while frames.count < count {
            let received = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress!, $0.count, 0) }
            if received < 0 && errno == EINTR { continue }
            guard received > 0 else {
                throw SocketReadError(errno: received == 0 ? 0 : errno, received: frames.count)
            }
            try processor.process(buffer: ByteBuffer(bytes: chunk[..<received])) { inbound in
                if case .frame(let frame) = inbound { frames.append(frame) }
            }
        }
        return frames
    }
}

/// A write that could not finish.
struct SocketWriteError: Error, CustomStringConvertible {
    var errno: Int32
    var sent: Int
    var of: Int

    var description: String {
        let reason = errno == EAGAIN ? "the peer took nothing for the send timeout" : String(cString: strerror(errno))
        return "send failed after \(sent) of \(of) bytes: \(reason)"
    }
}
