import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOCore
import Testing

@testable import AiotaskServer

#if canImport(Glibc)
    import Glibc
#endif

/// `POOL_REQUEST`/`POOL` (protocol version 2): the pool process by process, negotiated in `HELLO`.
@Suite("Pool status")
struct PoolStatusTests {
    static let helloVersion1: [UInt8] = [0x80, 0, 0, 0, 5, 1, 0x04, 0, 0, 0]
    static let helloVersion2: [UInt8] = [0x80, 0, 0, 0, 5, 2, 0x04, 0, 0, 0]

    @Test("a version 1 client gets HELLO version 1 back, byte for byte as before; a version 2 client version 2")
    func negotiation() async throws {
        let server = try await TestServer.start()
        try await withTimeout {
            for (hello, version) in [
                (Self.helloVersion1, UInt8(1)), (Self.helloVersion2, 2),
                ([0x80, 0, 0, 0, 5, 9, 0x04, 0, 0, 0], Hello.currentVersion),
            ] {
                try await RawConnection.with(server.address) { connection in
                    try await connection.send(hello)
                    let answer = try #require(try await connection.readFrame())
                    #expect(answer.type == FrameType.hello.rawValue)
                    #expect(answer.payload == [version, 0x04, 0, 0, 0], "client version \(hello[5])")
                }
            }
        }
        try await server.stop()
    }

    @Test("POOL names each pool process by its real pid, with its state, its running task and counts")
    func poolFrame() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 2)
        try await withTimeout {
            let client = try await server.client()
            #expect(client.serverProtocolVersion == Hello.currentVersion)
            #expect(try await client.submit("echo one") == Array("one".utf8))
            let task = try await client.enqueue("sleep 20000")
            let pool = try await client.waitForPool { $0.processes.contains { $0.taskID == task.id } }
            #expect(pool.processes.map(\.slot) == [0, 1])
            #expect(pool.processesOmitted == 0)
            let children = childProcesses(of: getpid())
            for process in pool.processes {
                let pid = try #require(process.pid)
                #expect(children.contains(pid_t(pid)), "pid \(pid) is not a child of the server")
                #expect((process.residentBytes ?? 0) > 0)
                #expect(process.restarts == 0)
            }
            let busy = try #require(pool.processes.first { $0.state == .busy })
            #expect(busy.taskID == task.id)
            #expect((busy.taskSeconds ?? -1) >= 0)
            let idle = try #require(pool.processes.first { $0.state == .idle })
            #expect(idle.taskID == nil && idle.taskSeconds == nil)
            #expect(pool.processes.map(\.tasksDone).reduce(0, +) == 1)
            #expect(pool.server.workers.busy == 1)

            // The task is cancelled: its process is stopped and replaced, a restart of its slot.
            task.cancel()
            let after = try await client.waitForPool { status in
                status.processes.contains { $0.slot == busy.slot && $0.restarts == 1 && $0.state == .idle }
            }
            let renewed = try #require(after.processes.first { $0.slot == busy.slot })
            #expect(renewed.pid != busy.pid)
            #expect(renewed.tasksDone == 0)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a pool too large for one control frame is cut at the end, the omitted slots counted")
    func omitted() throws {
        let info = ServerInfo(
            version: "0",
            pid: 1,
            uptimeSeconds: 0,
            handler: "echo",
            workers: .init(configured: 4096, alive: 4096, busy: 0, restarts: 0),
            queue: .init(length: 0, capacity: 1),
            tasks: .init(submitted: 0, succeeded: 0, failed: 0, running: 0),
            connections: 0,
            tasksPerSecond: 0
        )
        let processes = (0..<4096).map {
            PoolProcessStatus(
                slot: $0,
                pid: 100_000 + $0,
                state: .busy,
                taskID: .random(),
                taskSeconds: 12345.678,
                residentBytes: 123_456_789,
                tasksDone: 123_456,
                restarts: 12
            )
        }
        let limit = FrameDecoder.defaultMaximumControlFrameLength
        let json = try ConnectionHandler.encode(PoolStatus(server: info, processes: processes), fitting: limit)
        #expect(json.count <= limit)
        let decoded = try JSONDecoder().decode(PoolStatus.self, from: json)
        #expect(decoded.processes.count > 200)
        #expect(decoded.processes.count + decoded.processesOmitted == 4096)
        #expect(decoded.processes == Array(processes.prefix(decoded.processes.count)))
    }

    @Test("a POOL_REQUEST after HELLO version 2 is answered with POOL, the frame of docs/protocol.md")
    func rawRequest() async throws {
        let server = try await TestServer.start()
        try await withTimeout {
            try await RawConnection.with(server.address) { connection in
                try await connection.send(Self.helloVersion2 + [0x8A, 0, 0, 0, 0])
                #expect(try await connection.readFrame()?.type == FrameType.hello.rawValue)
                let pool = try #require(try await connection.readFrame())
                #expect(pool.type == FrameType.pool.rawValue)
                let status = try JSONDecoder().decode(PoolStatus.self, from: Data(pool.payload))
                #expect(status.processes.count == 2)
            }
        }
        try await server.stop()
    }
}
