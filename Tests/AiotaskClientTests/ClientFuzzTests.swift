import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import NIOConcurrencyHelpers
import NIOCore
import Testing

/// The client library fed mutated answers by a server.
@Suite("Client fuzzing")
struct ClientFuzzTests {
    /// Valid answers a server could send to a `SUBMIT` of `id`, with some frames for other tasks mixed in.
    static func answers(to id: TaskID, using generator: inout SplitMix64) throws -> [UInt8] {
        let other = TaskID(high: generator.next(), low: generator.next())
        let choices: [[Frame]] = [
            [.result(id, ByteBuffer(string: "result"))],
            [.update(id, .processing), .result(id, ByteBuffer())],
            [.failed(id, .handlerError, message: "it broke")],
            [.failed(id, FailureReason(rawValue: 99), message: "naïve ✓")],
            [.info(ByteBuffer(string: #"{"version":"1"}"#)), .result(id, ByteBuffer(string: "x"))],
            [.update(other, .done), .result(id, ByteBuffer(string: "y"))],
            [.error("protocol violation: none")],
        ]
        var buffer = ByteBuffer()
        for frame in choices.randomElement(using: &generator)! { try buffer.writeFrame(frame) }
        return Array(buffer.readableBytesView)
    }

    @Test(
        "500 mutated answers: every request ends with its result, its failure or a client error, never a crash or hang"
    )
    func mutatedAnswers() async throws {
        let state = NIOLockedValueBox(
            (generator: SplitMix64(seed: 0xc11e_27), mutator: Mutator(generator: SplitMix64(seed: 7)))
        )
        // Answers HELLO properly, then each SUBMIT with mutated answers (or, one time in ten, valid ones), and
        // closes the connection, so that a request whose answer was destroyed ends with the connection.
        let server = try await StubServer.start(.unix) { connection, frame in
            switch frame {
            case .hello:
                connection.send(.hello(Hello(maximumPayloadLength: 1 << 20)))
            case .submit(let id, _, _):
                let bytes = state.withLockedValue { state -> [UInt8] in
                    let valid = (try? Self.answers(to: id, using: &state.generator)) ?? []
                    guard Int.random(in: 0..<10, using: &state.generator) != 0 else { return valid }
                    return state.mutator.mutate(valid, maximumMutations: 3)
                }
                connection.sendRaw(bytes)
                connection.close()
            default:
                break
            }
        }
        let outcomes = try await withTimeout(.seconds(60)) {
            var outcomes = (results: 0, failures: 0, clientErrors: 0)
            for _ in 0..<500 {
                let client = try await AiotaskClient.connect(to: server.address)
                do {
                    _ = try await client.submit("task")
                    outcomes.results += 1
                } catch is TaskFailure {
                    outcomes.failures += 1
                } catch is AiotaskClientError {
                    outcomes.clientErrors += 1
                }
                try await client.close()
            }
            return outcomes
        }
        await server.stop()
        // Every outcome must be common, or the answers test little.
        #expect(outcomes.results > 20)
        #expect(outcomes.failures > 20)
        #expect(outcomes.clientErrors > 100)
    }
}
