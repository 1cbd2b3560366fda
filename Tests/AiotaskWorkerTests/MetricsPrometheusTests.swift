import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOCore
import Testing

@testable import AiotaskServer

#if canImport(Glibc)
    import Glibc
#endif

/// A real Prometheus server (Debian's `prometheus`) scrapes a test worker every 200 ms while `aiotask bench`
/// loads it; the counters read back through Prometheus's HTTP API equal the bench's own count.
@Suite("Metrics scraped by Prometheus", .serialized)
struct MetricsPrometheusTests {
    static let tasks = 3000

    @Test(
        "Prometheus scrapes the worker through a bench: submitted and succeeded equal the bench's tasks",
        .enabled(if: PrometheusTools.serverIsInstalled, "no prometheus (package prometheus)")
    )
    func prometheusReadsTheBench() async throws {
        let (worker, metrics) = try await TestServer.startWithMetrics(handler: .builtin("echo"), workers: 2) {
            $0.metricsListenAddresses = [.tcp(host: "127.0.0.12", port: 0)]
        }
        let directory = worker.directory
        let webPort = try Self.freePort(on: "127.0.0.13")
        let configuration = """
            global:
              scrape_interval: 200ms
              scrape_timeout: 200ms
            scrape_configs:
              - job_name: aiotask
                static_configs:
                  - targets: ["127.0.0.12:\(metrics.port ?? 0)"]
            """
        try configuration.write(toFile: directory + "/prometheus.yml", atomically: true, encoding: .utf8)
        let prometheus = try SpawnedProcess.spawn(
            PrometheusTools.server,
            [
                "--config.file=\(directory)/prometheus.yml", "--storage.tsdb.path=\(directory)/data",
                "--web.listen-address=127.0.0.13:\(webPort)", "--log.level=warn",
            ]
        )
        defer { prometheus.killGroup() }
        let web = try SocketAddress(ipAddress: "127.0.0.13", port: webPort)
        try await withTimeout(.seconds(90)) {
            // Ready once its storage is open and its web listener up.
            while (try? await Self.get(web, "/-/ready").status) != 200 {
                try await Task.sleep(for: .milliseconds(100))
            }
            let bench = try SpawnedProcess.spawn(
                Products.aiotask,
                [
                    "bench", "--server", "\(worker.address)", "--tasks", "\(Self.tasks)", "--concurrency", "32",
                    "--size", "100", "--json",
                ]
            )
            #expect(try await bench.wait(limit: .seconds(60)) == .exited(0), "\(bench.standardError)")
            let report = try JSONSerialization.jsonObject(with: Data(bench.standardOutputBytes)) as? [String: Any]
            let benchTasks = report?["tasks"] as? Int
            #expect(benchTasks == Self.tasks)
            #expect(report?["failed"] as? Int == 0)

            // Scraped every 200 ms: polled until the last scrape has the bench's end.
            var submitted: Double?
            var succeeded: Double?
            while submitted != Double(Self.tasks) || succeeded != Double(Self.tasks) {
                try await Task.sleep(for: .milliseconds(200))
                submitted = try await Self.query(web, "aiotask_tasks_submitted_total")
                succeeded = try await Self.query(web, #"aiotask_tasks_finished_total{outcome="succeeded"}"#)
                // A count past the bench's would never come back down: stop and report it.
                if (submitted ?? 0) > Double(Self.tasks) || (succeeded ?? 0) > Double(Self.tasks) { break }
            }
            #expect(submitted == Double(Self.tasks))
            #expect(succeeded == Double(Self.tasks))
            #expect(try await Self.query(web, #"up{job="aiotask"}"#) == 1)
        }
        try await worker.stop()
    }

    /// `GET path` over HTTP/1.0, so that Prometheus closes the connection after its reply and sends no chunks.
    static func get(_ address: SocketAddress, _ path: String) async throws -> HTTPReply {
        try await Task.detached { try HTTPProbe.exchange(address, "GET \(path) HTTP/1.0\r\nHost: localhost\r\n\r\n") }
            .value
    }

    /// The value of an instant query's single sample, or nil when there is none (yet).
    static func query(_ address: SocketAddress, _ expression: String) async throws -> Double? {
        let encoded = expression.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? expression
        let reply = try await get(address, "/api/v1/query?query=\(encoded)")
        guard reply.status == 200,
            let json = try JSONSerialization.jsonObject(with: Data(reply.body.utf8)) as? [String: Any],
            let data = json["data"] as? [String: Any], let result = data["result"] as? [[String: Any]],
            let sample = result.first?["value"] as? [Any], sample.count == 2, let text = sample[1] as? String
        else { return nil }
        return Double(text)
    }

    /// A port free on `host` now (bound, read, closed): for a program that takes its port on the command line.
    static func freePort(on host: String) throws -> Int {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        inet_pton(AF_INET, host, &address.sin_addr)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
