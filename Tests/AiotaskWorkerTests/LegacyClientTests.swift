import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOCore
import Testing

/// The client and the CLI in the legacy protocol (``WireProtocol/legacy``), against a stand-in of an original
/// aiotask 0.0.2 server (Tests/legacy-server/legacy_server.py: only the original frames; a frame of type 128 or
/// more makes it discard what it received) and against aiotaskd.
@Suite("Client in the legacy protocol")
struct LegacyClientTests {
    @Test(
        "in the legacy protocol the client sends only 0.0.2 frames and gets each result from DONE, from a stand-in of the original server"
    )
    func submitToOriginal() async throws {
        try await OriginalServer.with { original in
            try await withTimeout {
                let client = try await AiotaskClient.connect(to: original.address, protocol: .legacy)
                #expect(client.wireProtocol == .legacy)
                #expect(client.serverMaximumPayloadLength == AiotaskClient.legacyMaximumPayloadLength)
                let results = try await withThrowingTaskGroup(of: (Int, [UInt8]).self) { group in
                    for index in 0..<200 {
                        group.addTask { (index, try await client.submit(Array("task \(index)".utf8))) }
                    }
                    return try await group.reduce(into: [Int: [UInt8]]()) { $0[$1.0] = $1.1 }
                }
                for index in 0..<200 { #expect(results[index] == Array("task \(index)".utf8)) }

                // STATUS is part of the original protocol.
                let handle = try await client.enqueue(ByteBuffer(string: "asked about"))
                #expect(String(buffer: try await handle.result()) == "asked about")
                #expect(try await handle.status() == .done)
                // The largest task an original server takes still goes through.
                let largest = [UInt8](repeating: 0x61, count: AiotaskClient.legacyMaximumPayloadLength)
                #expect(try await client.submit(largest) == largest)
                try await client.close()
            }
            #expect(!original.log.contains("Bad TLV"), "the stand-in saw: \(original.log)")
        }
    }

    @Test(
        "the stand-in discards an extended HELLO, so the extended client fails its handshake; automatic falls back to legacy"
    )
    func automaticFallback() async throws {
        try await OriginalServer.with { original in
            try await withTimeout {
                await #expect {
                    _ = try await AiotaskClient.connect(to: original.address, connectTimeout: .seconds(1))
                } throws: { ($0 as? AiotaskClientError)?.code == .handshakeFailed }

                let client = try await AiotaskClient.connect(to: original.address, protocol: .automatic)
                #expect(client.wireProtocol == .legacy)
                #expect(try await client.submit("after the fallback") == Array("after the fallback".utf8))
                try await client.close()
            }
            #expect(original.log.contains("Bad TLV type 128"), "the stand-in saw: \(original.log)")
        }
    }

    @Test("automatic speaks the extended protocol to aiotaskd")
    func automaticToAiotaskd() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address, protocol: .automatic)
            #expect(client.wireProtocol == .extended)
            let failure = try await #require(throws: TaskFailure.self) { try await client.submit("fail boom") }
            #expect(failure.reason == .handlerError)
            try await client.close()
        }
        try await server.stop()
    }

    @Test(
        "in the legacy protocol a timeout, a cancel and server statistics throw legacyProtocol, and the connection carries on"
    )
    func extendedOnlyRequests() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 2)
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address, protocol: .legacy)
            let isLegacyError: @Sendable (any Error) -> Bool = {
                ($0 as? AiotaskClientError)?.code == .legacyProtocol
            }
            await #expect(
                performing: { _ = try await client.submit("echo x", timeout: .seconds(5)) },
                throws: isLegacyError
            )
            await #expect(performing: { _ = try await client.serverInfo() }, throws: isLegacyError)

            let long = try await client.enqueue(ByteBuffer(string: "sleep 1000"))
            long.cancel()
            await #expect(performing: { _ = try await long.result() }, throws: isLegacyError)

            #expect(try await client.submit("echo still here") == Array("still here".utf8))
            try await client.close()
        }
        try await server.stop()
    }

    @Test("in the legacy protocol a task that fails on aiotaskd fails with reason unknown instead of waiting forever")
    func failureSeenAsNotFound() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address, protocol: .legacy)
            let failure = try await #require(throws: TaskFailure.self) { try await client.submit("fail boom") }
            #expect(failure.reason == .unknown)
            #expect(failure.message.contains("NOT_FOUND"), "\(failure.message)")
            #expect(try await client.submit("echo next") == Array("next".utf8))
            try await client.close()
        }
        try await server.stop()
    }

    @Test(
        "aiotask bench --legacy and submit --legacy work against a stand-in of the original server; status --legacy says why it cannot"
    )
    func cliAgainstOriginal() async throws {
        try await OriginalServer.with { original in
            let server = "\(original.address)"
            _ = try await runBench(["--server", server, "--legacy"])

            let submit = try await runCLI(["submit", "--server", server, "--protocol", "legacy", "hello"])
            #expect(submit.exit == .exited(0), "stderr: \(submit.standardError)")
            #expect(submit.standardOutput == "hello")

            let status = try await runCLI(["status", "--server", server, "--legacy"])
            #expect(status.exit == .exited(2))
            #expect(status.standardError.contains("not available with the legacy protocol"), "\(status.standardError)")
            #expect(!original.log.contains("Bad TLV"), "the stand-in saw: \(original.log)")
        }
    }
}

/// A stand-in for an original aiotask 0.0.2 server: Tests/legacy-server/legacy_server.py, on a free port of
/// 127.0.0.1.
struct OriginalServer {
    let process: SpawnedProcess
    let address: ServerAddress

    static func start() async throws -> OriginalServer {
        let process = try SpawnedProcess.spawn(
            HandlerScript.python,
            [Products.repositoryRoot + "/Tests/legacy-server/legacy_server.py"]
        )
        do {
            try await process.waitForStandardOutput(containing: "\n")
            let words = process.standardOutput.split(whereSeparator: \.isWhitespace)
            guard words.first == "listening", words.count == 2, let port = Int(words[1]) else {
                throw OutputEnded(expected: "listening PORT", output: process.standardOutput)
            }
            return OriginalServer(process: process, address: .tcp(host: "127.0.0.1", port: port))
        } catch {
            process.killGroup()
            throw error
        }
    }

    /// What the stand-in logged so far.
    var log: String { process.standardError }

    /// Runs `body` with a stand-in started for it, then kills and reaps it, whatever `body` does.
    static func with(_ body: (OriginalServer) async throws -> Void) async throws {
        let original = try await start()
        do {
            try await body(original)
        } catch {
            await original.stop()
            throw error
        }
        await original.stop()
    }

    func stop() async {
        process.signal(SIGKILL)
        _ = try? await process.wait()
    }
}
