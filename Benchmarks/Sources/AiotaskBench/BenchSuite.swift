import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation

/// The benchmark suite: measures every performance figure aiotask aims at, each `repeat` times, against `aiotaskd`
/// processes it starts itself, with `aiotask bench` as the load, and prints one table of min / median / max.
struct BenchSuite {
    /// The path of the `aiotaskd` to start.
    var daemon: String
    /// The path of the `aiotask` whose `bench` generates the load.
    var client: String
    var repeats: Int
    /// Few tasks and connections per measurement: proves the suite works, measures nothing reliably.
    var smoke: Bool

    /// One line of the table.
    struct Figure {
        var name: String
        var unit: String
        /// The target as text, and whether a value meets it.
        var target: String
        var meets: (Double) -> Bool
        var values: [Double] = []
        /// Digits after the decimal point.
        var precision = 0
    }

    /// Runs every measurement and returns the table.
    func run(log: (String) -> Void) async throws -> [Figure] {
        raiseOpenFileLimit()
        let tinyTasks = smoke ? 2_000 : 100_000
        let latencyTasks = smoke ? 500 : 10_000
        let largeTasks = smoke ? 20 : 500
        let shaTasks = smoke ? 20 : 300
        let idleCount = smoke ? 500 : 10_000

        var throughput1 = Figure(
            name: "echo 100 B, 256 in flight, 1 connection",
            unit: "tasks/s",
            target: ">= 100000",
            meets: { $0 >= 100_000 }
        )
        var throughput4 = Figure(
            name: "echo 100 B, 256 in flight, 4 connections",
            unit: "tasks/s",
            target: ">= 100000",
            meets: { $0 >= 100_000 }
        )
        var throughputNoPrefetch = Figure(
            name: "echo 100 B, 256 in flight, 1 connection, --prefetch 0",
            unit: "tasks/s",
            target: "",
            meets: { _ in true }
        )
        var p50 = Figure(name: "echo 100 B, 1 in flight, TCP: p50", unit: "µs", target: "<= 100", meets: { $0 <= 100 })
        var p99 = Figure(name: "echo 100 B, 1 in flight, TCP: p99", unit: "µs", target: "<= 300", meets: { $0 <= 300 })
        var unixP50 = Figure(
            name: "echo 100 B, 1 in flight, Unix socket: p50",
            unit: "µs",
            target: "<= 100",
            meets: { $0 <= 100 }
        )
        var unixP99 = Figure(
            name: "echo 100 B, 1 in flight, Unix socket: p99",
            unit: "µs",
            target: "<= 300",
            meets: { $0 <= 300 }
        )
        var large = Figure(
            name: "echo 1 MiB, 4 in flight: task payload",
            unit: "GB/s",
            target: ">= 1.0",
            meets: { $0 >= 1.0 },
            precision: 2
        )
        var sha1 = Figure(
            name: "sha256 1 MiB, pool of 1, 8 in flight",
            unit: "tasks/s",
            target: "",
            meets: { _ in true }
        )
        var sha2 = Figure(
            name: "sha256 1 MiB, pool of 2, 8 in flight",
            unit: "tasks/s",
            target: "",
            meets: { _ in true }
        )
        var shaRatio = Figure(
            name: "sha256 1 MiB: pool of 2 / pool of 1",
            unit: "×",
            target: ">= 1.8",
            meets: { $0 >= 1.8 },
            precision: 2
        )
        var rssIdle = Figure(name: "aiotaskd RSS, idle", unit: "MB", target: "<= 30", meets: { $0 <= 30 }, precision: 1)
        var rssConnections = Figure(
            name: "aiotaskd RSS, \(idleCount) idle connections",
            unit: "MB",
            target: smoke ? "" : "<= 200",
            meets: { smoke ? true : $0 <= 200 },
            precision: 1
        )
        var stub = Figure(
            name: "client library alone (stub server), 256 in flight",
            unit: "tasks/s",
            target: ">= 100000",
            meets: { $0 >= 100_000 }
        )

        var pooled = Figure(
            name: "echo 100 B, 256 in flight, client pool over 3 daemons, 1 connection each",
            unit: "tasks/s",
            target: "",
            meets: { _ in true }
        )
        var pooledRatio = Figure(
            name: "client pool over 3 daemons / 1 connection to 1 daemon",
            unit: "×",
            target: ">= 0.90",
            meets: { $0 >= 0.9 },
            precision: 2
        )

        var tlsThroughput = Figure(
            name: "TLS: echo 100 B, 256 in flight, 1 connection",
            unit: "tasks/s",
            target: "",
            meets: { _ in true }
        )
        var tlsRatio = Figure(
            name: "TLS / plaintext: echo 100 B, 256 in flight, 1 connection",
            unit: "×",
            target: ">= 0.85",
            meets: { $0 >= 0.85 },
            precision: 2
        )
        var tlsLarge = Figure(
            name: "TLS: echo 1 MiB, 4 in flight: task payload",
            unit: "GB/s",
            target: ">= 0.5",
            meets: { $0 >= 0.5 },
            precision: 2
        )
        var tlsHandshakes = Figure(
            name: "TLS: new connections (handshake, HELLO), 8 at a time",
            unit: "conn/s",
            target: "",
            meets: { _ in true }
        )

        let stubServer = try await StubTaskServer.start()
        defer { Task { await stubServer.stop() } }
        // The certificates of the TLS figures, made with openssl as the tests make theirs: an authority, and a P-256
        // certificate for 127.0.0.1 that the echo daemon serves on a tls:// listener beside its plain one.
        let pkiDirectory = NSTemporaryDirectory() + "aiotask-bench-pki-\(getpid())"
        try FileManager.default.createDirectory(atPath: pkiDirectory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: pkiDirectory) }
        let pki = try await TestCertificates.make(in: pkiDirectory)
        let serverCertificate = try await pki.issue("server", ipAddresses: ["127.0.0.1"])
        let handshakes = smoke ? 40 : 2_000

        for round in 1...repeats {
            log("round \(round) of \(repeats)")
            let echo = try await DaemonUnderTest.start(
                executable: daemon,
                arguments: ["--handler", "echo", "--workers", "2", "--log-level", "warning"],
                tls: serverCertificate
            )
            do {
                let address = echo.address
                // Memory first, before any task has grown the buffers.
                try await Task.sleep(for: .milliseconds(200))
                rssIdle.values.append(Double(try echo.residentBytes()) / 1e6)

                throughput1.values.append(
                    try await BenchLoad(tasks: tinyTasks, concurrency: 256, size: 100, connections: 1)
                        .checkedRun(client: client, against: address).tasksPerSecond
                )
                // TLS right after the plaintext figure it is compared with, in the same state of the same daemon.
                guard let tlsAddress = echo.tlsAddress else { throw DaemonUnderTest.Failure(description: "no TLS") }
                let tlsRate = try await BenchLoad(
                    tasks: tinyTasks,
                    concurrency: 256,
                    size: 100,
                    connections: 1,
                    tlsAuthority: pki.authority()
                ).checkedRun(client: client, against: tlsAddress).tasksPerSecond
                tlsThroughput.values.append(tlsRate)
                if let plain = throughput1.values.last, plain > 0 { tlsRatio.values.append(tlsRate / plain) }
                throughput4.values.append(
                    try await BenchLoad(tasks: tinyTasks, concurrency: 256, size: 100, connections: 4)
                        .checkedRun(client: client, against: address).tasksPerSecond
                )
                let latency = try await BenchLoad(tasks: latencyTasks, concurrency: 1, size: 100, connections: 1)
                    .checkedRun(client: client, against: address)
                p50.values.append(latency.latencyUs.p50)
                p99.values.append(latency.latencyUs.p99)
                let unixLatency = try await BenchLoad(tasks: latencyTasks, concurrency: 1, size: 100, connections: 1)
                    .checkedRun(client: client, against: echo.unixAddress)
                unixP50.values.append(unixLatency.latencyUs.p50)
                unixP99.values.append(unixLatency.latencyUs.p99)
                let largeRun = try await BenchLoad(tasks: largeTasks, concurrency: 4, size: 1 << 20, connections: 1)
                    .checkedRun(client: client, against: address)
                large.values.append(largeRun.tasksPerSecond * Double(1 << 20) / 1e9)

                rssConnections.values.append(try await residentBytes(of: echo, withIdleConnections: idleCount) / 1e6)

                // TLS: the same loads on the same daemon, through its tls:// listener.
                let tlsLargeRun = try await BenchLoad(
                    tasks: largeTasks,
                    concurrency: 4,
                    size: 1 << 20,
                    connections: 1,
                    tlsAuthority: pki.authority()
                ).checkedRun(client: client, against: tlsAddress)
                tlsLarge.values.append(tlsLargeRun.tasksPerSecond * Double(1 << 20) / 1e9)
                tlsHandshakes.values.append(
                    try await newConnectionsPerSecond(to: tlsAddress, authority: pki.authority(), count: handshakes)
                )
                await echo.stop()
            } catch {
                await echo.stop()
                throw error
            }

            // Client-side balancing: the same load spread by `aiotask bench`'s AiotaskClientPool over three daemons
            // on 127.0.0.11, .12 and .13, against the one connection to one daemon measured above this round.
            var hosts: [DaemonUnderTest] = []
            do {
                for host in ["127.0.0.11", "127.0.0.12", "127.0.0.13"] {
                    hosts.append(
                        try await DaemonUnderTest.start(
                            executable: daemon,
                            arguments: ["--handler", "echo", "--workers", "2", "--log-level", "warning"],
                            host: host
                        )
                    )
                }
                let rate = try await BenchLoad(tasks: tinyTasks, concurrency: 256, size: 100, connections: 1)
                    .checkedRun(client: client, against: hosts.map(\.address)).tasksPerSecond
                pooled.values.append(rate)
                if let single = throughput1.values.last, single > 0 { pooledRatio.values.append(rate / single) }
                for host in hosts { await host.stop() }
            } catch {
                for host in hosts { await host.stop() }
                throw error
            }

            let unprefetched = try await DaemonUnderTest.start(
                executable: daemon,
                arguments: ["--handler", "echo", "--workers", "2", "--prefetch", "0", "--log-level", "warning"]
            )
            do {
                throughputNoPrefetch.values.append(
                    try await BenchLoad(tasks: tinyTasks, concurrency: 256, size: 100, connections: 1)
                        .checkedRun(client: client, against: unprefetched.address)
                        .tasksPerSecond
                )
                await unprefetched.stop()
            } catch {
                await unprefetched.stop()
                throw error
            }

            var shaRates: [Double] = []
            for workers in [1, 2] {
                let sha = try await DaemonUnderTest.start(
                    executable: daemon,
                    arguments: ["--handler", "sha256", "--workers", "\(workers)", "--log-level", "warning"]
                )
                do {
                    let report = try await BenchLoad(
                        tasks: shaTasks,
                        concurrency: 8,
                        size: 1 << 20,
                        connections: 1,
                        verify: false
                    ).checkedRun(client: client, against: sha.address)
                    shaRates.append(report.tasksPerSecond)
                    await sha.stop()
                } catch {
                    await sha.stop()
                    throw error
                }
            }
            sha1.values.append(shaRates[0])
            sha2.values.append(shaRates[1])
            shaRatio.values.append(shaRates[0] > 0 ? shaRates[1] / shaRates[0] : 0)

            stub.values.append(
                try await BenchLoad(tasks: tinyTasks, concurrency: 256, size: 100, connections: 1)
                    .checkedRun(client: client, against: .tcp(host: "127.0.0.1", port: stubServer.port))
                    .tasksPerSecond
            )
        }
        return [
            throughput1, throughput4, pooled, pooledRatio, throughputNoPrefetch, p50, p99, unixP50, unixP99, large,
            tlsThroughput, tlsRatio, tlsLarge, tlsHandshakes,
            sha1, sha2, shaRatio,
            rssIdle,
            rssConnections, stub,
        ]
    }

    /// How many new connections a second the client library opens to `address`, 8 at a time, each through its TLS
    /// handshake and the `HELLO` exchange, then closed: what a client that does not keep its connections pays.
    private func newConnectionsPerSecond(
        to address: ServerAddress,
        authority: String,
        count: Int
    ) async throws
        -> Double
    {
        let tls = ClientTLSConfiguration(trustRoots: .file(authority))
        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for lane in 0..<8 {
                group.addTask {
                    for _ in stride(from: lane, to: count, by: 8) {
                        let client = try await AiotaskClient.connect(to: address, tls: tls)
                        try await client.close()
                    }
                }
            }
            try await group.waitForAll()
        }
        let elapsed = ContinuousClock.now - start
        return Double(count) / (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
    }

    /// The daemon's RSS once `count` idle connections are open to it (and it has accepted all of them).
    private func residentBytes(of daemon: DaemonUnderTest, withIdleConnections count: Int) async throws -> Double {
        let idle = try IdleConnections(count: count, port: daemon.port)
        let client = try await daemon.connect()
        defer { Task { try? await client.close() } }
        let deadline = ContinuousClock.now + .seconds(60)
        while try await client.serverInfo().connections < idle.count + 1 {
            guard ContinuousClock.now < deadline else {
                throw DaemonUnderTest.Failure(description: "aiotaskd did not accept \(count) connections within 60 s")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        let bytes = try daemon.residentBytes()
        withExtendedLifetime(idle) {}
        return Double(bytes)
    }

    /// The table as text: one line per figure with its target, min, median, max over the rounds, and whether the
    /// median meets the target.
    static func table(_ figures: [Figure], repeats: Int) -> String {
        func format(_ value: Double, _ precision: Int) -> String { String(format: "%.\(precision)f", value) }
        var rows: [[String]] = [["figure", "unit", "target", "min", "median", "max", "met"]]
        for figure in figures {
            let sorted = figure.values.sorted()
            guard !sorted.isEmpty else { continue }
            let median =
                sorted.count % 2 == 1
                ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
            let met = figure.target.isEmpty ? "" : (figure.meets(median) ? "yes" : "NO")
            rows.append([
                figure.name, figure.unit, figure.target.isEmpty ? "-" : figure.target,
                format(sorted.first!, figure.precision), format(median, figure.precision),
                format(sorted.last!, figure.precision), met,
            ])
        }
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        let lines = rows.map { row in
            row.enumerated().map { column, cell in
                let padding = String(repeating: " ", count: widths[column] - cell.count)
                return column == 0 || column == 1 || column == 2 ? cell + padding : padding + cell
            }.joined(separator: "  ")
        }
        return (lines + ["(\(repeats) round\(repeats == 1 ? "" : "s"); met = the median meets the target)"])
            .joined(separator: "\n")
    }
}
