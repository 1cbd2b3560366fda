import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

@Suite("Backpressure")
struct BackpressureTests {
    @Test(
        "a client that never reads its answers is read up to its limits and no further, instead of filling the server's memory"
    )
    func clientThatNeverReads() async throws {
        let server = try await TestServer.start(workers: 1) { $0.maximumTasksPerConnection = 1000 }
        try await withTimeout(.seconds(60)) {
            guard case .unix(let path) = server.address else { return }
            let socket = try connectNonBlocking(toUnixPath: path)
            defer { close(socket) }

            // 60 KiB echo tasks, written until the server stops taking them, with a ceiling of 256 MiB that a
            // server reading without bound would accept whole. It queues 1,000 of them (the connection's limit) and
            // refuses the next ones at once; once 1,024 refusals wait unread too, it stops reading.
            let payload = ByteBuffer(repeating: 0x61, count: 60 * 1024)
            func frame() throws -> [UInt8] {
                var buffer = ByteBuffer()
                try buffer.writeFrame(.enqueue(.random(), payload: payload))
                return Array(buffer.readableBytesView)
            }
            let ceiling = 256 << 20
            let pausedReading = "the client sends requests but reads none of the answers; pausing reads from it"
            var written = 0
            var bytes = try frame()
            var offset = 0
            while written < ceiling {
                let count = bytes.withUnsafeBytes { write(socket, $0.baseAddress! + offset, bytes.count - offset) }
                if count > 0 {
                    written += count
                    offset += count
                    if offset == bytes.count {
                        bytes = try frame()
                        offset = 0
                    }
                    continue
                }
                let error = errno
                try #require(count < 0 && (error == EAGAIN || error == EWOULDBLOCK), "write failed: errno \(error)")
                // Blocked: done once the server says it stopped reading this client; until then, wait for room.
                if server.logs.entries.contains(where: { $0.message.hasPrefix(pausedReading) }) { break }
                var descriptor = pollfd(fd: socket, events: Int16(POLLOUT), revents: 0)
                _ = poll(&descriptor, 1, 100)
            }
            #expect(written < ceiling, "the server kept reading a client that never reads its answers")
            let taken = (1000 + AnswerBacklog.immediateAnswerLimit + 64) * payload.readableBytes
            #expect(written < taken, "the server read \(written) bytes, past the connection's limits")
            // What it holds of them is the connection's limit, no more.
            let observer = try await server.client()
            #expect(try await observer.serverInfo().queue.length <= 1000)
            try await observer.close()

            // Every other client is still served.
            let client = try await server.client()
            #expect(try await client.submit("still served") == Array("still served".utf8))
            try await client.close()
        }
        try await server.stop()
    }
}

/// A non-blocking stream socket connected to the Unix socket at `path`.
private func connectNonBlocking(toUnixPath path: String) throws -> Int32 {
    let socket = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard socket >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { buffer in
        buffer.copyBytes(from: path.utf8.prefix(buffer.count - 1))
    }
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(socket, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
    }
    guard connected == 0 else {
        close(socket)
        throw POSIXError(.init(rawValue: errno) ?? .EIO)
    }
    _ = fcntl(socket, F_SETFL, fcntl(socket, F_GETFL) | O_NONBLOCK)
    return socket
}
