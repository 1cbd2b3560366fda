import AiotaskChildProcess
import AiotaskTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The one way aiotask starts a child process (``ChildProcess``), seen from the child.
@Suite("Child processes")
struct ChildProcessTests {
    @Test("a child gets exactly the descriptors it is given, even one given from a number below their count")
    func descriptorsAsGiven() async throws {
        let output = try ChildProcess.makePipe(size: 1 << 16)
        defer { close(output.reader) }
        let input = open("/dev/null", O_RDONLY | O_CLOEXEC)
        #expect(input >= 0)
        defer { close(input) }
        // The child's descriptor 3 is the test's stderr (2), which the child's own 2 replaces before 3 is set: it
        // must be copied first. Descriptor 4 is open in the test and must not reach the child.
        let spare = open("/dev/null", O_RDONLY | O_CLOEXEC)
        #expect(spare >= 0)
        defer { close(spare) }
        let child = try ChildProcess.spawn(
            "/bin/sh",
            arguments: ["-c", "readlink /proc/self/fd/3; readlink /proc/self/fd/\(spare) || echo none"],
            environment: ["PATH": "/usr/bin:/bin"],
            descriptors: [input, output.writer, output.writer, 2]
        )
        close(output.writer)
        child.watchExit()
        let status = try await withTimeout { await child.exitStatus() }
        #expect(ProcessExit(waitStatus: status) == .exited(0))

        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(output.reader, $0.baseAddress!, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            bytes += chunk[0..<count]
        }
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n").map(String.init)
        let testStandardError = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/2")
        #expect(lines.first == testStandardError, "the child's descriptor 3: \(lines)")
        #expect(lines.last == "none", "descriptor \(spare) leaked into the child: \(lines)")
    }

    @Test("each of many children that end at once is reaped with its own exit code or signal")
    func manyExits() async throws {
        // Signals that end a process without a core dump.
        let signals = [SIGHUP, SIGINT, SIGKILL, SIGUSR1, SIGUSR2, SIGPIPE, SIGALRM, SIGTERM]
        let children = try (0..<64).map { index in
            try SpawnedProcess.spawn(
                "/bin/sh",
                ["-c", index % 2 == 0 ? "exit \(index)" : "kill -\(signals[index % 8]) $$"]
            )
        }
        for (index, child) in children.enumerated() {
            let exit = try await child.wait()
            let expected: ProcessExit = index % 2 == 0 ? .exited(Int32(index)) : .signaled(signals[index % 8])
            #expect(exit == expected, "child \(index)")
        }
    }
}
