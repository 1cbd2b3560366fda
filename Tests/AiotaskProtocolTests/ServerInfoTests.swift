import AiotaskProtocol
import Foundation
import Testing

@Suite("Server info")
struct ServerInfoTests {
    static let sample = ServerInfo(
        version: "0.1.0",
        pid: 1234,
        uptimeSeconds: 12.5,
        handler: "exec:/usr/bin/handler",
        workers: .init(configured: 4, alive: 4, busy: 1, restarts: 2),
        queue: .init(length: 3, capacity: 1000),
        tasks: .init(submitted: 10, succeeded: 6, failed: 1, running: 1),
        connections: 2,
        tasksPerSecond: 0.75
    )

    @Test("JSON uses snake_case keys for the two-word fields")
    func keys() throws {
        let data = try JSONEncoder().encode(Self.sample)
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(
            Set(object.keys) == [
                "version", "pid", "uptime_seconds", "handler", "workers", "queue", "tasks", "connections",
                "tasks_per_second",
            ]
        )
        let workers = try #require(object["workers"] as? [String: Any])
        #expect(Set(workers.keys) == ["configured", "alive", "busy", "restarts"])
        let queue = try #require(object["queue"] as? [String: Any])
        #expect(Set(queue.keys) == ["length", "capacity"])
        let tasks = try #require(object["tasks"] as? [String: Any])
        #expect(Set(tasks.keys) == ["submitted", "succeeded", "failed", "running"])
    }

    @Test("Decodes hand-written JSON and round trips")
    func decodes() throws {
        let json = """
            {"version":"0.1.0","pid":1234,"uptime_seconds":12.5,"handler":"exec:/usr/bin/handler",
             "workers":{"configured":4,"alive":4,"busy":1,"restarts":2},
             "queue":{"length":3,"capacity":1000},
             "tasks":{"submitted":10,"succeeded":6,"failed":1,"running":1},
             "connections":2,"tasks_per_second":0.75}
            """
        #expect(try JSONDecoder().decode(ServerInfo.self, from: Data(json.utf8)) == Self.sample)
        let encoded = try JSONEncoder().encode(Self.sample)
        #expect(try JSONDecoder().decode(ServerInfo.self, from: encoded) == Self.sample)
    }
}
