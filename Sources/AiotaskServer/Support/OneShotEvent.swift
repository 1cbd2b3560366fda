import NIOConcurrencyHelpers

/// Something that happens once — a stop asked for, a drain finished — that any number of tasks can wait for, before
/// or after it happened.
final class OneShotEvent: Sendable {
    private enum State {
        case waiting([CheckedContinuation<Void, Never>])
        case happened
    }

    private let state = NIOLockedValueBox(State.waiting([]))

    /// Whether ``signal()`` was called.
    var hasHappened: Bool {
        state.withLockedValue { if case .happened = $0 { true } else { false } }
    }

    /// Marks the event as happened and resumes every waiter; later calls do nothing.
    func signal() {
        let waiters = state.withLockedValue { state -> [CheckedContinuation<Void, Never>] in
            guard case .waiting(let waiters) = state else { return [] }
            state = .happened
            return waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once the event happened (at once if it already has). Not cancellable: a caller that must react to
    /// cancellation signals the event from its cancellation handler.
    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let happened = state.withLockedValue { state -> Bool in
                guard case .waiting(var waiters) = state else { return true }
                waiters.append(continuation)
                state = .waiting(waiters)
                return false
            }
            if happened { continuation.resume() }
        }
    }
}
