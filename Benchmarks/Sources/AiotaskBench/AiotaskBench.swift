import Foundation

/// `aiotask-bench`: measures every performance figure aiotask aims at against `aiotaskd` processes it starts
/// itself, and prints one table of min / median / max per figure with its target.
///
///     aiotask-bench [--repeat N] [--smoke] [--bin DIR]
///
/// The load of each figure is the shipped `aiotask bench`, run as a process, so the suite measures the load generator
/// users have; `--bin` names the directory holding `aiotaskd` and `aiotask` (default `.build/release`).
@main
struct AiotaskBench {
    static let usage = """
        usage: aiotask-bench [--repeat N] [--smoke] [--bin DIR]
          --repeat N  how many rounds of measurements the table summarises (default 5)
          --smoke     one quick round with few tasks, to check that the suite works (scripts/bench-smoke)
          --bin DIR   where aiotaskd and aiotask are (default .build/release: run it from the repository's root)
        Exit status: 0 the table was printed; 2 a measurement failed or the usage was wrong.
        """

    static func main() async {
        var repeats = 5
        var smoke = false
        var bin = ".build/release"
        var arguments = CommandLine.arguments.dropFirst()
        while let argument = arguments.popFirst() {
            switch argument {
            case "--repeat":
                guard let value = arguments.popFirst().flatMap(Int.init), value >= 1 else {
                    fail("--repeat needs a whole number of at least 1")
                }
                repeats = value
            case "--smoke":
                smoke = true
            case "--bin":
                guard let value = arguments.popFirst() else { fail("--bin needs a directory") }
                bin = value
            case "--help", "-h":
                print(usage)
                return
            default:
                fail("unknown argument \(argument)")
            }
        }
        let daemon = URL(fileURLWithPath: bin).appendingPathComponent("aiotaskd").path
        let client = URL(fileURLWithPath: bin).appendingPathComponent("aiotask").path
        for executable in [daemon, client] where !FileManager.default.isExecutableFile(atPath: executable) {
            fail("cannot find \(executable) (build first: swift build -c release; or give --bin DIR)", usage: false)
        }

        let rounds = smoke ? 1 : repeats
        let suite = BenchSuite(daemon: daemon, client: client, repeats: rounds, smoke: smoke)
        do {
            let figures = try await suite.run { @Sendable in writeError("aiotask-bench: \($0)") }
            print(BenchSuite.table(figures, repeats: rounds))
        } catch {
            writeError("aiotask-bench: suite failed: \(error)")
            exit(2)
        }
    }

    static func fail(_ message: String, usage: Bool = true) -> Never {
        writeError("aiotask-bench: \(message)" + (usage ? "\n" + Self.usage : ""))
        exit(2)
    }

    static func writeError(_ line: String) {
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }
}
