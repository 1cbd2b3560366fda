import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Logging
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

/// A real server's connection handling fed mutated streams of the frames clients send.
@Suite("Connection fuzzing", .serialized)
struct ConnectionFuzzTests {
    /// A valid stream a client could send: legacy tasks and queries, or (after `HELLO`) extension frames too.
    static func validStream(using generator: inout SplitMix64) throws -> [UInt8] {
        let extended = Bool.random(using: &generator)
        var frames: [Frame] = extended ? [.hello(Hello(maximumPayloadLength: 1 << 20))] : []
        var ids: [TaskID] = []
        for _ in 0..<Int.random(in: 1...6, using: &generator) {
            let id =
                ids.isEmpty || Bool.random(using: &generator)
                ? TaskID(high: generator.next(), low: generator.next()) : ids.randomElement(using: &generator)!
            ids.append(id)
            // Mostly small tasks; now and then one over the server's 256-byte limit.
            let size = Int.random(in: 0..<10, using: &generator) == 0 ? 300 : Int.random(in: 0...24, using: &generator)
            let payload = ByteBuffer(bytes: generator.bytes(count: size))
            let choice = Int.random(in: 0..<(extended ? 6 : 2), using: &generator)
            switch choice {
            case 0: frames.append(.enqueue(id, payload: payload))
            case 1: frames.append(.status(id))
            case 2: frames.append(.submit(id, timeout: .milliseconds(5000), payload: payload))
            case 3: frames.append(.cancel(id))
            case 4: frames.append(.infoRequest)
            default: frames.append(.submit(id, timeout: nil, payload: payload))
            }
        }
        var buffer = ByteBuffer()
        for frame in frames { try buffer.writeFrame(frame) }
        return Array(buffer.readableBytesView)
    }

    @Test("800 mutated client streams: every answer is well-formed, the server stays up and serves a good client")
    func mutatedClientStreams() async throws {
        let server = try await TestServer.start(workers: 2) {
            $0.maximumPayloadLength = 256
            $0.idleTimeout = nil
        }
        try await withTimeout(.seconds(120)) {
            var generator = SplitMix64(seed: 0xc0ff_ee15)
            var mutator = Mutator(generator: SplitMix64(seed: 0xbad_c11e))
            let splices = try (0..<8).map { _ in try Self.validStream(using: &generator) }
            let good = try await server.client()
            var problems: [String] = []
            for iteration in 0..<800 {
                let valid = try Self.validStream(using: &generator)
                let bytes = iteration % 10 == 0 ? valid : mutator.mutate(valid, splices: splices, maximumMutations: 4)
                let socket = try UnixSocket(path: server.socketPath, receiveTimeout: .seconds(10))
                // The server may close the connection before it has read everything: sending then fails.
                socket.send(bytes)
                socket.finishSending()
                let answer: [UInt8]
                do {
                    answer = try socket.receiveUntilClosed()
                } catch {
                    problems.append("the server did not close the connection (\(error)) after \(bytes)")
                    continue
                }
                if let problem = Self.checkWellFormed(answer) { problems.append("\(problem) in answer to \(bytes)") }
                if iteration % 250 == 0 {
                    #expect(
                        try await good.submit("still served \(iteration)") == Array("still served \(iteration)".utf8)
                    )
                }
            }
            #expect(problems.isEmpty, "\(problems.count) problems, the first: \(problems.prefix(3))")
            // Every connection is closed and forgotten, every task answered or abandoned; the pool is whole.
            try await good.waitForInfo { $0.connections == 1 && $0.queue.length == 0 && $0.tasks.running == 0 }
            try await server.waitForFullPool()
            #expect(try await good.submit("after") == Array("after".utf8))
            try await good.close()
        }
        #expect(
            !server.logs.entries.contains { $0.level >= .error },
            "\(server.logs.entries.filter { $0.level >= .error }.prefix(3))"
        )
        try await server.stop()
    }

    /// A description of what is wrong with the bytes the server sent, or nil if they are whole frames. The last
    /// frame may be cut short: the server closes a broken connection with its answers possibly still unsent.
    static func checkWellFormed(_ bytes: [UInt8]) -> String? {
        let processor = NIOSingleStepByteToMessageProcessor(FrameDecoder(maximumPayloadLength: 1 << 20))
        do {
            try processor.process(buffer: ByteBuffer(bytes: bytes)) { inbound in
                guard case .frame = inbound else { throw Malformed(reason: "an oversized frame") }
            }
            try processor.finishProcessing(seenEOF: true) { _ in }
        } catch let error as ProtocolError where error.code == .truncatedStream {
            return nil
        } catch {
            return "\(error)"
        }
        return nil
    }

    struct Malformed: Error {
        var reason: String
    }
}
