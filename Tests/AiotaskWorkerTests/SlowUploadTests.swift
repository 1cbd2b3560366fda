import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

/// Task frames still arriving hold memory too: they count against `max-queued-bytes` from their header on.
@Suite("Slow uploads", .serialized)
struct SlowUploadTests {
    @Test("32 connections each holding an unfinished 16 MiB task keep aiotaskd within max-queued-bytes")
    func manyUnfinishedUploads() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let address = "unix:\(directory)/aiotask.sock"
        let queuedBytesLimit = 64 << 20
        let daemon = try SpawnedProcess.spawn(
            Products.aiotaskd,
            ["--handler", "echo", "--workers", "2", "--listen", address, "--max-queued-bytes", "\(queuedBytesLimit)"]
        )
        defer { daemon.killGroup() }
        try await daemon.waitForStandardError(containing: "ready")
        let baseline = try #require(statusBytes(of: daemon.pid, "VmRSS"))

        let taskSize = 16 << 20
        let connections = 32
        let answers = try await withTimeout(.seconds(120)) {
            try await onThread {
                let sockets = try (0..<connections).map { _ in
                    try BlockingSocket(connectingTo: address, timeout: .seconds(20 * testSlowdown))
                }
                var frames: [(id: TaskID, bytes: [UInt8])] = []
                for _ in 0..<connections {
                    let id = TaskID.random()
                    var frame = ByteBuffer()
                    try frame.writeFrame(
                        .submit(id, timeout: nil, payload: ByteBuffer(repeating: 0x61, count: taskSize))
                    )
                    frames.append((id, Array(frame.readableBytesView)))
                }
                // Every upload but its last byte, on each connection in turn, none of them read.
                for (socket, frame) in zip(sockets, frames) { try socket.send(Array(frame.bytes.dropLast())) }
                let peak = statusBytes(of: daemon.pid, "VmHWM") ?? .max
                for (socket, frame) in zip(sockets, frames) { try socket.send([frame.bytes.last!]) }
                let answers = try sockets.map { try $0.receiveFrames(count: 1) }
                return (peak, zip(frames.map(\.id), answers.map(\.first)).map { ($0, $1) })
            }
        }

        let (peak, frames) = answers
        if residentMemoryIsMeaningful {
            #expect(peak <= baseline + queuedBytesLimit + (48 << 20), "peak RSS \(peak >> 20) MiB")
        }
        // Those whose bytes fit the limit from their header on ran; the others were refused as they came.
        let admitted = queuedBytesLimit / (taskSize + TaskID.byteCount + 4)
        var results = 0
        for (id, frame) in frames {
            switch frame {
            case .result(id, let result):
                #expect(result.readableBytes == taskSize)
                results += 1
            case .failed(id, let reason, let message):
                #expect(reason == .rejected)
                #expect(message.hasPrefix("queue full: "), "\(message)")
                #expect(message.hasSuffix("arriving (limit \(queuedBytesLimit) bytes)"), "\(message)")
            default:
                Issue.record("unexpected answer \(String(describing: frame)) to task \(id)")
            }
        }
        #expect(results == admitted)

        daemon.signal(SIGTERM)
        #expect(try await daemon.wait() == .exited(0))
    }
}
