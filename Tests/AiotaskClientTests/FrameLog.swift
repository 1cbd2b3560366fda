import AiotaskProtocol
import NIOConcurrencyHelpers

/// The frames a stub server received, with a way to wait for one to arrive.
final class FrameLog: Sendable {
    private struct Waiter {
        let matches: @Sendable ([Frame]) -> Bool
        let continuation: CheckedContinuation<[Frame], Never>
    }

    private struct State {
        var frames: [Frame] = []
        var waiters: [Waiter] = []
    }

    private let state = NIOLockedValueBox(State())

    /// All frames received so far.
    var frames: [Frame] { state.withLockedValue { $0.frames } }

    func append(_ frame: Frame) {
        let ready: [(CheckedContinuation<[Frame], Never>, [Frame])] = state.withLockedValue { state in
            state.frames.append(frame)
            var ready: [(CheckedContinuation<[Frame], Never>, [Frame])] = []
            state.waiters.removeAll { waiter in
                guard waiter.matches(state.frames) else { return false }
                ready.append((waiter.continuation, state.frames))
                return true
            }
            return ready
        }
        for (continuation, frames) in ready { continuation.resume(returning: frames) }
    }

    /// Waits until the frames received so far satisfy `condition`, and returns them.
    @discardableResult
    func wait(until condition: @escaping @Sendable ([Frame]) -> Bool) async -> [Frame] {
        await withCheckedContinuation { continuation in
            let frames: [Frame]? = state.withLockedValue { state in
                if condition(state.frames) { return state.frames }
                state.waiters.append(Waiter(matches: condition, continuation: continuation))
                return nil
            }
            if let frames { continuation.resume(returning: frames) }
        }
    }

    /// Waits until `count` frames matching `predicate` have arrived, and returns them.
    @discardableResult
    func wait(forCount count: Int, where predicate: @escaping @Sendable (Frame) -> Bool) async -> [Frame] {
        let frames = await wait { frames in frames.lazy.filter(predicate).count >= count }
        return frames.filter(predicate)
    }
}

extension Frame {
    /// The id of a SUBMIT frame.
    var submittedID: TaskID? {
        if case .submit(let id, _, _) = self { return id }
        return nil
    }

    var isSubmit: Bool { submittedID != nil }
}
