import NIOConcurrencyHelpers
import NIOCore

/// The 16-byte identifier of a task, unique among the in-flight tasks of one connection.
///
/// On the wire it is the 16 raw bytes of a UUID; clients of the original protocol send random UUID4s.
public struct TaskID: Hashable, Sendable {
    /// The 16 bytes, as two big-endian halves.
    public let high: UInt64
    public let low: UInt64

    /// Creates an identifier from its two 64-bit halves.
    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// A random version 4 UUID, as the original client makes for each task.
    public static func random() -> TaskID {
        let (high, low) = RandomPool.shared.withLockedValue { ($0.nextValue(), $0.nextValue()) }
        return TaskID(high: (high & ~0xF000) | 0x4000, low: (low & ~(0xC000 << 48)) | (0x8000 << 48))
    }

    /// Encoded length on the wire.
    public static let byteCount = 16
}

extension TaskID: CustomStringConvertible {
    /// The canonical lower-case UUID text, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    public var description: String {
        let hex = Self.hex(high, digits: 16) + Self.hex(low, digits: 16)
        var text = ""
        text.reserveCapacity(36)
        for (index, character) in hex.enumerated() {
            if index == 8 || index == 12 || index == 16 || index == 20 { text.append("-") }
            text.append(character)
        }
        return text
    }

    /// Parses the canonical UUID text (hyphens optional).
    public init?(_ text: String) {
        let digits = text.filter { $0 != "-" }
        guard digits.count == 32, digits.allSatisfy(\.isHexDigit),
            let high = UInt64(digits.prefix(16), radix: 16),
            let low = UInt64(digits.suffix(16), radix: 16)
        else { return nil }
        self.init(high: high, low: low)
    }

    private static func hex(_ value: UInt64, digits: Int) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: digits - text.count) + text
    }
}

extension ByteBuffer {
    /// Reads a task identifier, or returns nil (consuming nothing) when fewer than 16 bytes remain.
    public mutating func readTaskID() -> TaskID? {
        guard let (high, low) = readMultipleIntegers(as: (UInt64, UInt64).self) else { return nil }
        return TaskID(high: high, low: low)
    }

    /// Writes a task identifier as its 16 raw bytes.
    @discardableResult
    public mutating func writeTaskID(_ id: TaskID) -> Int {
        writeMultipleIntegers(id.high, id.low)
    }
}
