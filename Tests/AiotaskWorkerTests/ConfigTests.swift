import AiotaskProtocol
import Logging
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

/// The config file's syntax, how the command line overrides it, and how settings are checked.
@Suite("Configuration")
struct ConfigTests {
    static let path = "/etc/aiotask/aiotaskd.conf"
    static let handler = ProcessCommand(executable: "/bin/true", displayName: "test")

    @Test("key = value lines, comments, blank lines, repeated listen and underscores in keys are understood")
    func parse() throws {
        let settings = try ConfigFile.parse(
            """
            # aiotaskd settings

            listen = unix:/run/aiotask/aiotask.sock
            listen=tcp://127.0.0.1:4242   # and TCP too
            \thandler = exec:/usr/bin/handler --fast
            workers = 8
            queue_capacity = 100
            max-payload = 1048576
            task_timeout = 2.5
            kill-grace = 1
            max_tasks_per_worker = 1000
            max-tasks-jitter = 50
            max_worker_rss = 512
            worker-shared-memory = 16
            drain_timeout = 10
            idle-timeout = 120
            write_timeout = 0.5
            log-level = debug\r
            """,
            path: Self.path
        )
        var expected = DaemonSettings()
        expected["listen"] = .addresses(["unix:/run/aiotask/aiotask.sock", "tcp://127.0.0.1:4242"])
        expected["handler"] = "exec:/usr/bin/handler --fast"
        expected["workers"] = 8
        expected["queue-capacity"] = 100
        expected["max-payload"] = 1_048_576
        expected["task-timeout"] = 2.5
        expected["kill-grace"] = 1.0
        expected["max-tasks-per-worker"] = 1000
        expected["max-tasks-jitter"] = 50
        expected["max-worker-rss"] = 512
        expected["worker-shared-memory"] = 16
        expected["drain-timeout"] = 10.0
        expected["idle-timeout"] = 120.0
        expected["write-timeout"] = 0.5
        expected["log-level"] = .logLevel(.debug)
        #expect(settings == expected)
    }

    @Test("an empty file or one of comments only sets nothing")
    func empty() throws {
        #expect(try ConfigFile.parse("", path: Self.path) == DaemonSettings())
        #expect(try ConfigFile.parse("# nothing\n\n   # here\n", path: Self.path) == DaemonSettings())
    }

    @Test(
        "every error names the file and line",
        arguments: [
            ("workers = 2\nbogus = 1\n", "\(path):2: bogus: unknown setting"),
            ("workers\n", "\(path):1: workers: expected 'key = value'"),
            ("# a\nworkers =\n", "\(path):2: workers: missing value"),
            ("workers = 2.5\n", "\(path):1: workers: '2.5' is not a whole number"),
            ("task-timeout = soon\n", "\(path):1: task-timeout: 'soon' is not a number of seconds"),
            ("task-timeout = inf\n", "\(path):1: task-timeout: 'inf' is not a number of seconds"),
            ("\nlog-level = loud\n", "\(path):2: log-level: 'loud' is not one of"),
            ("listen = unix:/a.sock\nlisten = tcp://host\n", "\(path):2: listen: invalid address 'tcp://host'"),
            ("workers = 2\nworkers = 0\n", "\(path):2: workers: must be from 1 to 4096, not 0"),
            ("queue-capacity = -1\n", "\(path):1: queue-capacity: must not be negative"),
            ("max-payload = 0\n", "\(path):1: max-payload: must be from 1 to"),
            ("kill-grace = -2\n", "\(path):1: kill-grace: must be a number of seconds from 0 to 1e9, not -2.0"),
        ]
    )
    func errors(text: String, message: String) {
        #expect {
            try ConfigFile.parse(text, path: Self.path)
        } throws: { error in
            "\(error)".hasPrefix(message)
        }
    }

    @Test("the command line overrides the file, and its --listen addresses replace the file's")
    func overridden() {
        var file = DaemonSettings()
        file["listen"] = .addresses(["unix:/run/a.sock", "tcp://127.0.0.1:1"])
        file["handler"] = "sha256"
        file["workers"] = 4
        file["task-timeout"] = 3.0
        file["log-level"] = .logLevel(.warning)

        #expect(file.overridden(by: DaemonSettings()) == file)

        var commandLine = DaemonSettings()
        commandLine["listen"] = .addresses(["tcp://[::1]:2"])
        commandLine["workers"] = 2
        commandLine["drain-timeout"] = 1.0
        commandLine["max-worker-rss"] = 64
        let merged = file.overridden(by: commandLine)
        #expect(merged.listen == ["tcp://[::1]:2"])
        #expect(merged.handler == "sha256")
        #expect(merged["workers"] == 2)
        #expect(merged["task-timeout"] == 3.0)
        #expect(merged["drain-timeout"] == 1.0)
        #expect(merged["max-worker-rss"] == 64)
        #expect(merged.logLevel == .warning)
    }

    @Test("settings become a worker configuration, with zero meaning none for the timeout and task quota")
    func configuration() throws {
        var settings = DaemonSettings()
        settings["listen"] = .addresses(["unix:/tmp/a.sock", "tcp://[::1]:4242"])
        settings["workers"] = 3
        settings["queue-capacity"] = 0
        settings["max-payload"] = 1024
        settings["task-timeout"] = 0.0
        settings["kill-grace"] = 0.25
        settings["max-tasks-per-worker"] = 0
        settings["max-tasks-jitter"] = 5
        settings["max-worker-rss"] = 0
        settings["drain-timeout"] = 7.0
        settings["idle-timeout"] = 0.0
        settings["write-timeout"] = 2.5
        let configuration = try settings.configuration(handler: Self.handler)
        #expect(configuration.listenAddresses == [.unix(path: "/tmp/a.sock"), .tcp(host: "::1", port: 4242)])
        #expect(configuration.handler == Self.handler)
        #expect(configuration.workers == 3)
        #expect(configuration.queueCapacity == 0)
        #expect(configuration.maximumPayloadLength == 1024)
        #expect(configuration.defaultTaskTimeout == nil)
        #expect(configuration.killGracePeriod == .milliseconds(250))
        #expect(configuration.maximumTasksPerProcess == nil)
        #expect(configuration.maximumTasksJitter == 5)
        #expect(configuration.maximumProcessRSS == nil)
        #expect(configuration.drainTimeout == .seconds(7))
        #expect(configuration.idleTimeout == nil)
        #expect(configuration.writeTimeout == .milliseconds(2500))
        #expect(try DaemonSettings().configuration(handler: Self.handler).idleTimeout == .seconds(300))
        #expect(try DaemonSettings().configuration(handler: Self.handler).writeTimeout == .seconds(60))

        settings["task-timeout"] = 1.5
        settings["max-tasks-per-worker"] = 10
        settings["max-worker-rss"] = 256
        settings["worker-shared-memory"] = 0
        let limited = try settings.configuration(handler: Self.handler)
        #expect(limited.defaultTaskTimeout == .milliseconds(1500))
        #expect(limited.maximumTasksPerProcess == 10)
        #expect(limited.maximumProcessRSS == 256 * 1024 * 1024)
        #expect(limited.sharedPayloadBytes == 0)
    }

    @Test(
        "values out of range are refused with the setting's name",
        arguments: [
            ("workers", 0), ("workers", 4097), ("queue-capacity", -1), ("max-payload", 0),
            ("max-payload", Int(UInt32.max)), ("max-tasks-per-worker", -1), ("max-tasks-jitter", -1),
            ("max-worker-rss", -1), ("max-worker-rss", 1 << 31), ("worker-shared-memory", -1),
            ("worker-shared-memory", 1025),
        ]
    )
    func integerOutOfRange(name: String, value: Int) throws {
        var settings = DaemonSettings()
        settings[name] = .count(value)
        do {
            _ = try settings.configuration(handler: Self.handler)
            Issue.record("\(name) = \(value) was accepted")
        } catch {
            #expect(error.setting == name)
            #expect(error.location == nil)
        }
    }

    @Test(
        "durations must be finite, non-negative seconds",
        arguments: [-1, Double.nan, Double.infinity, 2e9]
    )
    func durationOutOfRange(seconds: Double) {
        for name in ["task-timeout", "kill-grace", "drain-timeout", "idle-timeout", "write-timeout"] {
            var settings = DaemonSettings()
            settings[name] = .seconds(seconds)
            #expect(throws: ConfigurationError.self) { try settings.configuration(handler: Self.handler) }
        }
    }

    @Test("a listen address that does not parse is refused")
    func badListen() {
        var settings = DaemonSettings()
        settings["listen"] = .addresses(["unix:/ok.sock", "udp://1.2.3.4:5"])
        do {
            _ = try settings.configuration(handler: Self.handler)
            Issue.record("expected an error")
        } catch {
            #expect(error.setting == "listen")
            #expect(error.reason.contains("udp://1.2.3.4:5"))
        }
    }
}
