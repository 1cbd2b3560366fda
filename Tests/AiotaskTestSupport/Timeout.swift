import Foundation
import NIOConcurrencyHelpers

/// How many times slower than a plain debug build the code under test runs: `AIOTASK_TEST_SLOWDOWN`, which
/// `scripts/test-sanitizers` sets, and 1 without it. The limits that only guard against a hang are multiplied by it.
public let testSlowdown: Int =
    ProcessInfo.processInfo.environment["AIOTASK_TEST_SLOWDOWN"].flatMap(Int.init)
    .map { max(1, $0) } ?? 1

/// The sanitizer the code under test was built with (`address` or `thread`: `AIOTASK_TEST_SANITIZER`, which
/// `scripts/test-sanitizers` sets), nil for a plain build.
public let testSanitizer: String? = ProcessInfo.processInfo.environment["AIOTASK_TEST_SANITIZER"]

/// Whether a process's resident memory measures what the code holds. Under a sanitizer it does not: shadow memory
/// grows with every byte touched, and AddressSanitizer keeps freed memory in quarantine (256 MiB by default), so the
/// tests that bound memory check it only in plain builds — which `scripts/test` always runs.
public var residentMemoryIsMeaningful: Bool { testSanitizer == nil }

/// How much of a volume test's load to send: all of `count` in a plain build, a quarter under a sanitizer. A
/// sanitizer checks the paths a test runs, and a quarter of the load runs the same ones, past the same socket buffers
/// and queue limits; the full load, whose point is its size, runs in the plain build that `scripts/test` always runs.
public func sanitizerScaled(_ count: Int) -> Int { testSanitizer == nil ? count : max(1, count / 4) }

/// A test step took longer than its limit.
public struct TimedOut: Error, CustomStringConvertible {
    public let limit: Duration
    public var description: String { "timed out after \(limit)" }
}

/// Runs `body`, failing with ``TimedOut`` if it has not finished within `limit` (times ``testSlowdown``).
///
/// Unlike a task group, this returns at the limit even when `body` ignores cancellation (for example while it
/// awaits a future that never completes), so a hanging client fails the test instead of hanging it.
public func withTimeout<Value: Sendable>(
    _ limit: Duration = .seconds(20),
    _ body: @escaping @Sendable () async throws -> Value
) async throws -> Value {
    let limit = limit * testSlowdown
    let race = TimeoutRace<Value>()
    return try await withCheckedThrowingContinuation { continuation in
        race.continuation.withLockedValue { $0 = continuation }
        let work = Task {
            do {
                race.finish(.success(try await body()))
            } catch {
                race.finish(.failure(error))
            }
            race.timer.withLockedValue { $0?.cancel() }
        }
        let timer = Task {
            try? await Task.sleep(for: limit)
            if !Task.isCancelled, race.finish(.failure(TimedOut(limit: limit))) { work.cancel() }
        }
        race.timer.withLockedValue { $0 = timer }
    }
}

/// The shared state of ``withTimeout(_:_:)``: whichever of the work and the timer finishes first resumes.
private final class TimeoutRace<Value: Sendable>: Sendable {
    let continuation = NIOLockedValueBox<CheckedContinuation<Value, any Error>?>(nil)
    let timer = NIOLockedValueBox<Task<Void, Never>?>(nil)

    @discardableResult
    func finish(_ result: Result<Value, any Error>) -> Bool {
        guard let continuation = continuation.withLockedValue({ $0.take() }) else { return false }
        continuation.resume(with: result)
        return true
    }
}
