import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOCore
import Testing

@Suite("Status and info queries")
struct QueryTests {
    @Test("concurrent status queries for the same and different tasks are each answered once")
    func concurrentStatus() async throws {
        let server = try await StubServer.start { connection, frame in
            switch frame {
            case .hello:
                connection.send(.hello(Hello(maximumPayloadLength: 1 << 20)))
            case .status(let id):
                // Number the answers, so that each query's answer can be told apart.
                connection.send(.update(id, TaskStatus(rawValue: UInt8(connection.counter))))
                connection.counter += 1
            default:
                break
            }
        }
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            let first = try await client.enqueue(ByteBuffer(string: "one"))
            let second = try await client.enqueue(ByteBuffer(string: "two"))
            let answers = try await withThrowingTaskGroup(of: UInt8.self) { group in
                for index in 0..<30 {
                    let handle = index.isMultiple(of: 3) ? second : first
                    group.addTask { try await handle.status().rawValue }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(answers.sorted() == Array(0..<30))
            try await client.close()
        }
        await server.stop()
    }

    @Test("status reports what the server says")
    func statusValue() async throws {
        let server = try await StubServer.start(behavior: StubBehaviors.standard { _, _, _ in })
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            let handle = try await client.enqueue(ByteBuffer(string: "work"))
            #expect(try await handle.status() == .processing)
            #expect(server.log.frames.last == .status(handle.id))
            try await client.close()
        }
        await server.stop()
    }

    @Test("serverInfo decodes the INFO JSON, and concurrent requests are answered in order")
    func serverInfo() async throws {
        let server = try await StubServer.start()
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            let info = try await client.serverInfo()
            #expect(info.version == "0.1.0-stub")
            #expect(info.pid == 0)
            #expect(info.uptimeSeconds == 12.5)
            #expect(info.workers == ServerInfo.Workers(configured: 4, alive: 4, busy: 1, restarts: 0))
            #expect(info.queue.capacity == 1024)
            #expect(info.tasks.failed == 1)
            #expect(info.tasksPerSecond == 3.5)

            let pids = try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<10 { group.addTask { try await client.serverInfo().pid } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(pids.sorted() == Array(1...10))

            let json = try await client.serverInfoJSON()
            let object = try JSONSerialization.jsonObject(with: Data(json.readableBytesView)) as? [String: Any]
            #expect(object?["uptime_seconds"] as? Double == 12.5)
            try await client.close()
        }
        await server.stop()
    }

    @Test("an INFO that is not a statistics object is a protocol violation")
    func invalidInfo() async throws {
        let server = try await StubServer.start { connection, frame in
            switch frame {
            case .hello: connection.send(.hello(Hello(maximumPayloadLength: 1 << 20)))
            case .infoRequest: connection.send(.info(ByteBuffer(string: "{\"version\": 3}")))
            default: break
            }
        }
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            let error = await #expect(throws: AiotaskClientError.self) { _ = try await client.serverInfo() }
            #expect(error?.code == .protocolViolation)
            try await client.close()
        }
        await server.stop()
    }

    @Test("poolStatus() against a server of protocol version 1 fails at once, sending nothing; INFO still works")
    func poolStatusNeedsVersion2() async throws {
        let server = try await StubServer.start { connection, frame in
            switch frame {
            case .hello: connection.send(.hello(Hello(version: 1, maximumPayloadLength: 1 << 20)))
            case .infoRequest: connection.send(.info(StubBehaviors.infoJSON(pid: 7)))
            case .poolRequest: connection.send(.error("unknown frame type 137"))
            default: break
            }
        }
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            #expect(client.serverProtocolVersion == 1)
            let error = await #expect(throws: AiotaskClientError.self) { _ = try await client.poolStatus() }
            #expect(error?.code == .unsupportedByServer)
            #expect(try await client.serverInfo().pid == 7)
            try await client.close()
        }
        await server.stop()
    }

    @Test("INFO and POOL answers are matched to their requests in order; one out of turn is a protocol violation")
    func poolAndInfoInOrder() async throws {
        let server = try await StubServer.start { connection, frame in
            switch frame {
            case .hello: connection.send(.hello(Hello(version: 2, maximumPayloadLength: 1 << 20)))
            case .infoRequest:
                // Answered as POOL: out of turn.
                connection.send(.pool(ByteBuffer(string: "{}")))
            case .poolRequest:
                let info = StubBehaviors.infoJSON(pid: 9)
                connection.send(
                    .pool(
                        ByteBuffer(
                            string: "{\"server\":\(String(buffer: info)),\"processes\":[],\"processes_omitted\":0}"
                        )
                    )
                )
            default: break
            }
        }
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            let pool = try await client.poolStatus()
            #expect(pool.server.pid == 9 && pool.processes.isEmpty)
            let error = await #expect(throws: AiotaskClientError.self) { _ = try await client.serverInfo() }
            #expect(error?.code == .protocolViolation)
            try await client.close()
        }
        await server.stop()
    }
}
