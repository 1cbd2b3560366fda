import AiotaskProtocol
import NIOCore
import Testing

@testable import AiotaskServer

/// A connection whose user `allow-users` and `allow-groups` do not let in, as its state machine decides it.
extension ConnectionStateMachineTests {
    static let refusal =
        "permission denied: uid 65534 (gid 65534) is not allowed on unix:/a.sock (allow-users, allow-groups)"

    func refused() -> Machine {
        var machine = Machine(finishedTasksRemembered: 16, writeTimeout: .seconds(60), now: start)
        #expect(
            machine.channelActive(refusing: Self.refusal, now: start)
                == .refusePeer(reason: Self.refusal, deadline: start + Machine.refusalWait)
        )
        #expect(machine.isRefusing)
        #expect(!machine.isReading, "nothing a refused client sends is decoded")
        return machine
    }

    @Test("a refused client that speaks the extensions gets ERROR permission denied; a legacy one a bare close")
    func refusedFirstByte() {
        var extended = refused()
        #expect(
            extended.refusedClientSent(firstByte: 0x80)
                == .endRefused(reason: Self.refusal, farewell: .error(Self.refusal))
        )
        #expect(!extended.isRefusing)
        // Once ended, nothing more happens.
        #expect(extended.refusedClientSent(firstByte: 0x80) == .none)
        #expect(extended.refusalWaitDue() == .none)

        var legacy = refused()
        #expect(legacy.refusedClientSent(firstByte: 0x01) == .endRefused(reason: Self.refusal, farewell: nil))
    }

    @Test("a refused client's frames are never taken as tasks, and a silent one is closed after the wait")
    func refusedFramesIgnored() {
        var machine = refused()
        let id = TaskID(high: 1, low: 2)
        #expect(receive(.enqueue(id, payload: ByteBuffer(string: "x")), on: &machine) == .none)
        #expect(receive(.hello(Hello(maximumPayloadLength: 10)), on: &machine) == .none)
        #expect(machine.inFlight.isEmpty)
        #expect(
            machine.refusalWaitDue()
                == .endRefused(reason: Self.refusal + "; the client sent nothing", farewell: nil)
        )
        #expect(machine.channelInactive() == .tearDown(abandoned: []))
    }

    @Test("a stopping server closes a refused connection that still waits")
    func refusedServerStops() {
        let machine = refused()
        #expect(machine.serverClosing(linger: .seconds(1)) == .closeOutput(linger: .seconds(1)))
    }
}
