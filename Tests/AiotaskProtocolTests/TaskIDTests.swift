import AiotaskProtocol
import AiotaskTestSupport
import NIOCore
import Testing

@Suite("Task ids")
struct TaskIDTests {
    @Test("Canonical text is lower-case 8-4-4-4-12")
    func description() {
        #expect(knownID.description == "12345678-9abc-4def-8123-456789abcdef")
        #expect(TaskID(high: 0, low: 1).description == "00000000-0000-0000-0000-000000000001")
        #expect(TaskID(high: .max, low: .max).description == "ffffffff-ffff-ffff-ffff-ffffffffffff")
    }

    @Test(
        "Parses canonical, upper-case and unhyphenated text",
        arguments: [
            "12345678-9abc-4def-8123-456789abcdef",
            "12345678-9ABC-4DEF-8123-456789ABCDEF",
            "123456789abc4def8123456789abcdef",
        ]
    )
    func parses(_ text: String) {
        #expect(TaskID(text) == knownID)
    }

    @Test(
        "Rejects text that is not 32 hex digits",
        arguments: [
            "", "12345678-9abc-4def-8123-456789abcde", "12345678-9abc-4def-8123-456789abcdef0",
            "g2345678-9abc-4def-8123-456789abcdef", "+2345678-9abc-4def-8123-456789abcdef",
            " 12345678-9abc-4def-8123-456789abcdef", "12345678 9abc 4def 8123 456789abcdef",
            "１2345678-9abc-4def-8123-456789abcdef",
        ]
    )
    func rejects(_ text: String) {
        #expect(TaskID(text) == nil)
    }

    @Test("Text round trip of random ids")
    func textRoundTrip() {
        var generator = SplitMix64(seed: 7)
        for _ in 0..<1000 {
            let id = TaskID(high: generator.next(), low: generator.next())
            #expect(id.description.count == 36)
            #expect(TaskID(id.description) == id)
        }
    }

    @Test("random() makes distinct version 4, variant 1 UUIDs")
    func random() {
        var seen = Set<TaskID>()
        for _ in 0..<2000 {
            let id = TaskID.random()
            seen.insert(id)
            var buffer = ByteBuffer()
            buffer.writeTaskID(id)
            let bytes = buffer.bytes
            #expect(bytes[6] >> 4 == 4, "version nibble of \(id)")
            #expect(bytes[8] >> 6 == 0b10, "variant bits of \(id)")
            let text = id.description
            #expect(text[text.index(text.startIndex, offsetBy: 14)] == "4")
            #expect("89ab".contains(text[text.index(text.startIndex, offsetBy: 19)]))
        }
        #expect(seen.count == 2000)
    }

    @Test("On the wire: 16 raw big-endian bytes")
    func wire() {
        var buffer = ByteBuffer()
        #expect(buffer.writeTaskID(knownID) == 16)
        #expect(buffer.bytes == knownIDBytes)
        #expect(buffer.readTaskID() == knownID)
        #expect(buffer.readableBytes == 0)
    }

    @Test("Reading from fewer than 16 bytes yields nil and consumes nothing")
    func shortRead() {
        var buffer = ByteBuffer(Array(knownIDBytes.prefix(15)))
        #expect(buffer.readTaskID() == nil)
        #expect(buffer.readableBytes == 15)
    }
}
