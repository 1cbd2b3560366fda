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

/// Hostile and broken clients of the metrics listener: each gets a clear status within bounded time, and the
/// task path goes on.
@Suite("Metrics listener under hostile input", .serialized)
struct MetricsHostileTests {
    @Test("an unknown path is answered 404, another method 405 with Allow, a malformed request 400")
    func pathsAndMethods() async throws {
        let (worker, address) = try await TestServer.startWithMetrics(handler: .builtin("echo"), workers: 1)
        try await withTimeout {
            let (notFound, post, head, garbage) = try await Task.detached {
                (
                    try HTTPProbe.exchange(address, "GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"),
                    try HTTPProbe.exchange(address, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
                    try HTTPProbe.exchange(address, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
                    try HTTPProbe.exchange(address, "\u{1}\u{2} NOT HTTP\r\n\r\n")
                )
            }.value
            #expect(notFound.status == 404)
            #expect(post.status == 405)
            #expect(post.headers["allow"] == "GET, HEAD")
            #expect(head.status == 200 && head.body.isEmpty)
            #expect(garbage.status == 400)
            #expect(try await worker.client().submit("still served") == Array("still served".utf8))
        }
        try await worker.stop()
    }

    @Test("headers over 8 KiB are answered 431 without reading the rest, endless ones too")
    func hugeHeaders() async throws {
        let (worker, address) = try await TestServer.startWithMetrics(handler: .builtin("echo"), workers: 1)
        try await withTimeout {
            let reply = try await Task.detached {
                let descriptor = try HTTPProbe.connect(address)
                defer { close(descriptor) }
                try HTTPProbe.send(descriptor, "GET /metrics HTTP/1.1\r\nHost: x\r\n")
                // An endless header: the listener answers and closes long before 1 MiB, and the write then fails.
                let line = "X-Filler: " + String(repeating: "a", count: 1000) + "\r\n"
                for _ in 0..<1024 {
                    do { try HTTPProbe.send(descriptor, line) } catch { break }
                }
                return try HTTPProbe.readReply(descriptor)
            }.value
            #expect(reply.status == 431)
        }
        try await worker.stop()
    }

    @Test("a client that does not finish its request in time is answered 408 and closed")
    func slowClient() async throws {
        let (worker, address) = try await TestServer.startWithMetrics(handler: .builtin("echo"), workers: 1) {
            $0.metricsLimits.requestTimeout = .milliseconds(300)
        }
        try await withTimeout {
            let started = ContinuousClock.now
            let reply = try await Task.detached {
                let descriptor = try HTTPProbe.connect(address)
                defer { close(descriptor) }
                // A header trickled, never ended.
                try HTTPProbe.send(descriptor, "GET /metrics HTTP/1.1\r\nHos")
                return try HTTPProbe.readReply(descriptor)
            }.value
            #expect(reply.status == 408)
            #expect(ContinuousClock.now - started < .seconds(5) * testSlowdown)
        }
        try await worker.stop()
    }

    @Test("1,000 scrapes at once are all answered, and tasks submitted meanwhile all complete")
    func thousandScrapes() async throws {
        raiseOpenFileSoftLimit(to: 8192)
        let (worker, address) = try await TestServer.startWithMetrics(handler: .builtin("echo"), workers: 2)
        try await withTimeout(.seconds(60)) {
            let client = try await worker.client()
            let load = Task {
                var done = 0
                for index in 0..<500 where try await client.submit("task \(index)") == Array("task \(index)".utf8) {
                    done += 1
                }
                return done
            }
            let statuses = try await Task.detached {
                // All connected and sent before any reply is read: 1,000 scrapes in flight at once.
                var descriptors: [Int32] = []
                defer { for descriptor in descriptors { close(descriptor) } }
                for _ in 0..<1000 {
                    let descriptor = try HTTPProbe.connect(address)
                    descriptors.append(descriptor)
                    try HTTPProbe.send(descriptor, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                }
                return try descriptors.map { try HTTPProbe.readReply($0).status }
            }.value
            #expect(statuses.count == 1000)
            #expect(statuses.allSatisfy { $0 == 200 }, "\(Dictionary(grouping: statuses) { $0 }.mapValues(\.count))")
            #expect(try await load.value == 500)
            let samples = try await TestServer.samples(at: address)
            #expect(samples[#"aiotask_tasks_finished_total{outcome="succeeded"}"#] == 500)
        }
        try await worker.stop()
    }

    @Test("past the connection limit, a scrape is answered 503")
    func connectionLimit() async throws {
        let (worker, address) = try await TestServer.startWithMetrics(handler: .builtin("echo"), workers: 1) {
            $0.metricsLimits.maximumConnections = 2
            $0.metricsLimits.requestTimeout = .seconds(30)
        }
        try await withTimeout {
            let reply = try await Task.detached {
                // Two idle connections hold the limit; the third, accepted after them, is refused with a status.
                let idle = try (0..<2).map { _ in try HTTPProbe.connect(address) }
                defer { for descriptor in idle { close(descriptor) } }
                return try HTTPProbe.scrape(address)
            }.value
            #expect(reply.status == 503)
        }
        try await worker.stop()
    }
}

/// Raises the test process's soft limit of open files (up to its hard limit): the thousand-scrape test holds
/// both ends of its connections in this process.
func raiseOpenFileSoftLimit(to wanted: rlim_t) {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < wanted else { return }
    limit.rlim_cur = min(wanted, limit.rlim_max)
    setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}
