import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import Logging
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

/// Clients that hold a connection without using it: slowloris, idle and non-reading clients.
@Suite("Hostile clients", .serialized)
struct HostileClientTests {
    @Test("a task sent one byte per write is served")
    func byteAtATime() async throws {
        let server = try await TestServer.start(workers: 1) { $0.idleTimeout = .seconds(30) }
        try await withTimeout {
            let id = TaskID.random()
            var frame = ByteBuffer()
            try frame.writeFrame(.enqueue(id, payload: ByteBuffer(string: "slowly")))
            let socket = try UnixSocket(path: server.socketPath)
            for byte in frame.readableBytesView { #expect(socket.send([byte])) }
            let answer = try socket.receive(count: 3 + 16 + 6)
            #expect(answer == [3, 0, 22] + id.bytes + Array("slowly".utf8))
        }
        try await server.stop()
    }

    @Test("a client that trickles a frame it never finishes is sent an ERROR and closed at the idle timeout")
    func trickleForever() async throws {
        let server = try await TestServer.start(workers: 1) { $0.idleTimeout = .milliseconds(500) }
        try await withTimeout {
            let socket = try UnixSocket(path: server.socketPath)
            #expect(socket.send(try Self.frame(.hello(Hello(maximumPayloadLength: 1 << 20)))))
            // A SUBMIT announcing 60,000 bytes, sent a byte each 100 ms: it would take well over an hour to finish.
            // Sending stops when the server has closed the connection.
            #expect(socket.send([FrameType.submit.rawValue, 0, 0, 0xea, 0x60]))
            while socket.send([0x61]) { try await Task.sleep(for: .milliseconds(100)) }
            let frames = try Self.decodeFrames(try socket.receiveUntilClosed())
            #expect(frames.map(\.type) == [.hello, .error])
            #expect(frames.last == .error("idle timeout: no request for 0.5 s and no task in flight (idle-timeout)"))
            let entry = await server.logs.first { $0.message.hasPrefix("closing connection: idle timeout") }
            #expect(entry.level == .info)
        }
        try await server.stop()
    }

    @Test("an idle connection is closed at the idle timeout; one waiting for its task is not")
    func idleConnection() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.idleTimeout = .seconds(1)
        }
        try await withTimeout {
            let idle = try await server.client()
            let busy = try await server.client()
            // Longer than the idle timeout: the connection is kept open while its task runs.
            let sleeping = try await busy.enqueue("sleep 3000")

            _ = await server.logs.first { $0.message.hasPrefix("closing connection: idle timeout") }
            do {
                _ = try await idle.submit("too late")
                Issue.record("the idle connection was still served")
            } catch let error as AiotaskClientError {
                #expect(error.code == .serverError)
                #expect(error.reason == "idle timeout: no request for 1 s and no task in flight (idle-timeout)")
            }
            #expect(try await sleeping.text() == "slept 3000")
            try await busy.close()

            // A legacy client is not sent the ERROR, only closed.
            let frames = try await RawConnection.with(server.address) { try await $0.readUntilClosed() }
            #expect(frames.isEmpty)
        }
        try await server.stop()
    }

    @Test("a client that does not read its answers is disconnected after the write timeout, its tasks cancelled")
    func writeTimeout() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 2) {
            $0.writeTimeout = .milliseconds(500)
            $0.idleTimeout = nil
        }
        try await withTimeout(.seconds(60)) {
            let socket = try UnixSocket(path: server.socketPath)
            // One task that would run for a minute, then 300 echoes of 60 KiB, more than the socket buffers hold:
            // the server reads them all, and their answers fill the socket, as the client reads none of them. Then
            // the client neither reads nor sends.
            var running = ByteBuffer()
            try running.writeFrame(.enqueue(.random(), payload: ByteBuffer(string: "sleep 60000")))
            #expect(socket.send(Array(running.readableBytesView)))
            let observer = try await server.client()
            try await observer.waitForInfo { $0.tasks.running == 1 }
            let echo = ByteBuffer(string: "echo " + String(repeating: "a", count: 60 * 1024))
            for _ in 0..<300 {
                try #require(socket.sendWithin(seconds: 2, try Self.frame(.enqueue(.random(), payload: echo))))
            }

            let entry = await server.logs.first { $0.message.contains("(write-timeout)") }
            #expect(entry.level == .warning)
            #expect(
                entry.message == "closing connection: the client has not read its answers for 0.5 s (write-timeout)"
            )
            #expect(Int(entry.metadata["cancelled_tasks"] ?? "") ?? 0 >= 1)
            // Its running task is stopped and its queued ones dropped; the pool is whole again and serves others.
            try await observer.waitForInfo { $0.tasks.running == 0 && $0.queue.length == 0 }
            try await server.waitForFullPool()
            #expect(try await observer.submit("echo served") == Array("served".utf8))
            try await observer.close()
        }
        try await server.stop()
    }

    @Test("a connection closed while its client reads nothing is closed even though its last bytes cannot be sent")
    func closeWhileNotReading() async throws {
        let server = try await TestServer.start(workers: 1) {
            $0.idleTimeout = .milliseconds(300)
            $0.writeTimeout = nil
        }
        try await withTimeout {
            let socket = try UnixSocket(path: server.socketPath)
            // STATUS queries, answered by the connection itself, until the server stops reading because the answers
            // fill the socket (and 1,024 more wait); then the connection is idle, but nothing more can be sent to it.
            let batch = Array(repeating: RawConnection.legacyFrame(type: 4, TaskID.random().bytes), count: 1000)
                .flatMap { $0 }
            var sent = 0
            while !server.logs.entries.contains(where: { $0.message.hasSuffix("pausing reads from it") }) {
                // Bounded waits for room; the server's log entry says when it has stopped reading.
                _ = socket.sendWithin(seconds: 1, batch)
                sent += 1
                try #require(sent < 10_000, "the server kept reading a client that reads nothing")
            }
            let observer = try await server.client()
            _ = await server.logs.first { $0.message.hasPrefix("closing connection: idle timeout") }
            try await observer.waitForInfo { $0.connections == 1 }
            try await observer.close()
        }
        try await server.stop()
    }

    /// The frames of a whole stream the server sent.
    private static func decodeFrames(_ bytes: [UInt8]) throws -> [Frame] {
        let processor = NIOSingleStepByteToMessageProcessor(FrameDecoder(maximumPayloadLength: 1 << 20))
        var frames: [Frame] = []
        try processor.process(buffer: ByteBuffer(bytes: bytes)) { inbound in
            if case .frame(let frame) = inbound { frames.append(frame) }
        }
        try processor.finishProcessing(seenEOF: true) { _ in }
        return frames
    }

    private static func frame(_ frame: Frame) throws -> [UInt8] {
        var buffer = ByteBuffer()
        try buffer.writeFrame(frame)
        return Array(buffer.readableBytesView)
    }
}

extension TestServer {
    /// The path of the server's Unix socket.
    var socketPath: String {
        guard case .unix(let path) = address else { preconditionFailure("not a Unix socket: \(address)") }
        return path
    }
}

extension UnixSocket {
    /// Writes all of `bytes`, waiting at most `seconds` for room each time the socket is full; false if the
    /// peer stopped taking them (or closed the connection).
    func sendWithin(seconds: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            var descriptor = pollfd(fd: self.descriptor, events: Int16(POLLOUT), revents: 0)
            guard poll(&descriptor, 1, seconds * 1000) == 1, descriptor.revents & Int16(POLLOUT) != 0 else {
                return false
            }
            let count = bytes.withUnsafeBytes {
                Glibc.send(
                    self.descriptor,
                    $0.baseAddress! + offset,
                    bytes.count - offset,
                    Int32(MSG_NOSIGNAL | MSG_DONTWAIT)
                )
            }
            if count < 0 && (errno == EAGAIN || errno == EINTR) { continue }
            guard count > 0 else { return false }
            offset += count
        }
        return true
    }
}
