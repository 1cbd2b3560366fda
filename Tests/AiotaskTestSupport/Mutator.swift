/// Mutates valid byte streams the way a fuzzer does: overwritten and flipped bits, inserted, deleted and
/// repeated ranges, boundary values written over length fields, truncation and splices of other streams.
///
/// Starting from valid frames, rather than random bytes, gets past the first checks of a parser often, so
/// that its deeper states are reached.
public struct Mutator<Generator: RandomNumberGenerator> {
    public var generator: Generator

    public init(generator: Generator) {
        self.generator = generator
    }

    /// Values at the edges of 8-, 16- and 32-bit fields, which lengths and counts meet first.
    static var boundaries: [[UInt8]] {
        [
            [0], [1], [0x7f], [0x80], [0xff], [0, 0], [0xff, 0xff], [0x7f, 0xff], [0x80, 0x00], [0, 0, 0, 0],
            [0xff, 0xff, 0xff, 0xff], [0x7f, 0xff, 0xff, 0xff], [0x80, 0, 0, 0], [0, 0, 0xff, 0xff], [0, 1, 0, 0],
        ]
    }

    /// `bytes` with one to `maximumMutations` mutations; `splices` are other streams that parts may be taken from.
    public mutating func mutate(_ bytes: [UInt8], splices: [[UInt8]] = [], maximumMutations: Int = 4) -> [UInt8] {
        var bytes = bytes
        for _ in 0..<Int.random(in: 1...maximumMutations, using: &generator) {
            mutateOnce(&bytes, splices: splices)
        }
        return bytes
    }

    private mutating func mutateOnce(_ bytes: inout [UInt8], splices: [[UInt8]]) {
        let position = bytes.isEmpty ? 0 : Int.random(in: 0..<bytes.count, using: &generator)
        switch Int.random(in: 0..<9, using: &generator) {
        case 0 where !bytes.isEmpty:
            bytes[position] = UInt8.random(in: 0...255, using: &generator)
        case 1 where !bytes.isEmpty:
            bytes[position] ^= 1 << UInt8.random(in: 0..<8, using: &generator)
        case 2:
            bytes.insert(contentsOf: generator.bytes(count: Int.random(in: 1...8, using: &generator)), at: position)
        case 3 where !bytes.isEmpty:
            let end = min(bytes.count, position + Int.random(in: 1...32, using: &generator))
            bytes.removeSubrange(position..<end)
        case 4 where !bytes.isEmpty:
            let end = min(bytes.count, position + Int.random(in: 1...64, using: &generator))
            bytes.insert(
                contentsOf: bytes[position..<end],
                at: Int.random(in: position...bytes.count, using: &generator)
            )
        case 5 where !bytes.isEmpty:
            let value = Self.boundaries.randomElement(using: &generator)!
            for (offset, byte) in value.enumerated() where position + offset < bytes.count {
                bytes[position + offset] = byte
            }
        case 6 where !bytes.isEmpty:
            bytes.removeLast(Int.random(in: 1...min(bytes.count, 40), using: &generator))
        case 7 where !splices.isEmpty:
            let other = splices.randomElement(using: &generator)!
            guard !other.isEmpty else { return }
            let start = Int.random(in: 0..<other.count, using: &generator)
            let end = min(other.count, start + Int.random(in: 1...64, using: &generator))
            bytes.insert(contentsOf: other[start..<end], at: position)
        default:
            // A byte that is the type of a frame, often a new frame's start.
            let types: [UInt8] = [1, 2, 3, 4, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0]
            bytes.insert(types.randomElement(using: &generator)!, at: position)
        }
    }
}

extension Mutator: Sendable where Generator: Sendable {}
