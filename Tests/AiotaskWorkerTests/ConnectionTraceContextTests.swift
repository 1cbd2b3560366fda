import AiotaskProtocol
import NIOCore
import Testing

@testable import AiotaskServer

/// `TRACE_CONTEXT` (protocol version 3) in the connection's rules.
extension ConnectionStateMachineTests {
    static let traceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    /// The reason of a close, or nil when `action` is not one.
    static func closeReason(_ action: Machine.Action) -> String? {
        guard case .close(let reason, _, let farewell) = action else { return nil }
        #expect(farewell != nil, "an extended client is told why")
        return reason
    }

    @Test("TRACE_CONTEXT on a connection whose HELLO negotiated version 2, or that sent none, is a protocol violation")
    func traceContextNeedsVersion3() {
        for version: UInt8? in [2, 1, nil] {
            var machine = open()
            if let version {
                let answer = receive(.hello(Hello(version: version, maximumPayloadLength: 1000)), on: &machine)
                // A client of an older version gets its own version back: nothing new reaches it.
                #expect(
                    answer
                        == .greet(
                            .hello(Hello(version: version, maximumPayloadLength: 1 << 20)),
                            goodbye: nil,
                            pauseReading: false
                        )
                )
            }
            let action = receive(
                .traceContext(TaskID(high: 1, low: 1), traceParent: Self.traceParent, traceState: ""),
                on: &machine
            )
            let reason = Self.closeReason(action)
            #expect(
                reason?.contains(
                    "TRACE_CONTEXT needs protocol version 3; this connection's HELLO negotiated version \(version ?? 0)"
                )
                    == true,
                "\(action)"
            )
        }
    }

    @Test("TRACE_CONTEXT then the SUBMIT or ENQUEUE of its id gives that task the trace; the next task has none")
    func traceContextAppliesToItsTask() throws {
        var machine = open()
        _ = receive(.hello(Hello(maximumPayloadLength: 1000)), on: &machine)
        let parent = try TraceParent(parsing: Self.traceParent)
        for (index, frame) in [
            Frame.submit(TaskID(high: 2, low: 1), timeout: nil, payload: ByteBuffer(string: "a")),
            .enqueue(TaskID(high: 2, low: 2), payload: ByteBuffer(string: "b")),
        ].enumerated() {
            let id = TaskID(high: 2, low: UInt64(index + 1))
            #expect(receive(.traceContext(id, traceParent: Self.traceParent, traceState: "k=v"), on: &machine) == .none)
            guard case .submit(let task) = receive(frame, on: &machine) else {
                Issue.record("the task was not submitted")
                return
            }
            #expect(task.id == id)
            #expect(task.trace == parent)
        }
        let untraced = TaskID(high: 3, low: 3)
        guard case .submit(let task) = receive(.submit(untraced, timeout: nil, payload: ByteBuffer()), on: &machine)
        else {
            Issue.record("the task was not submitted")
            return
        }
        #expect(task.trace == nil)
    }

    @Test("an invalid traceparent is ignored with its reason named, and its task runs untraced")
    func invalidTraceParentIgnored() {
        var machine = open()
        _ = receive(.hello(Hello(maximumPayloadLength: 1000)), on: &machine)
        let id = TaskID(high: 4, low: 4)
        let action = receive(
            .traceContext(id, traceParent: "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", traceState: ""),
            on: &machine
        )
        guard case .ignoreTraceContext(let ignored, let reason) = action else {
            Issue.record("expected the trace context to be ignored, got \(action)")
            return
        }
        #expect(ignored == id)
        #expect(reason.hasPrefix("the traceparent has version ff, which is invalid (\"ff-4bf92f"), "\(reason)")
        guard case .submit(let task) = receive(.submit(id, timeout: nil, payload: ByteBuffer()), on: &machine) else {
            Issue.record("the task was not submitted")
            return
        }
        #expect(task.trace == nil)
    }

    @Test("after TRACE_CONTEXT, any frame but the task frame of its id is a protocol violation")
    func traceContextMustPrecedeItsTask() {
        let id = TaskID(high: 5, low: 5)
        let other = TaskID(high: 6, low: 6)
        let next: [Frame] = [
            .submit(other, timeout: nil, payload: ByteBuffer()),
            .status(id),
            .infoRequest,
            .traceContext(id, traceParent: Self.traceParent, traceState: ""),
        ]
        for frame in next {
            var machine = open()
            _ = receive(.hello(Hello(maximumPayloadLength: 1000)), on: &machine)
            #expect(receive(.traceContext(id, traceParent: Self.traceParent, traceState: ""), on: &machine) == .none)
            let reason = Self.closeReason(receive(frame, on: &machine))
            #expect(reason?.contains("must come right before that task's SUBMIT or ENQUEUE") == true, "\(frame.type)")
        }
        // An oversized task of another id too.
        var machine = open()
        _ = receive(.hello(Hello(maximumPayloadLength: 1000)), on: &machine)
        _ = receive(.traceContext(id, traceParent: Self.traceParent, traceState: ""), on: &machine)
        let reason = Self.closeReason(receive(.oversized(.submit, other, length: 1 << 30), on: &machine))
        #expect(reason?.contains("must come right before") == true)
    }
}
