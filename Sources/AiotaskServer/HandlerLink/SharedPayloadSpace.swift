/// The daemon's record of which regions of a ``SharedPayloadArena`` hold a task, and where a new one fits.
///
/// A process has few tasks in the arena at a time (the one it runs and those sent ahead, a megabyte or so), so the
/// regions in use are a short list kept in order of offset, and a new region goes in the first gap large enough.
struct SharedPayloadSpace {
    /// Bytes of payload space.
    let capacity: Int
    /// Regions in use, in order of offset, none overlapping.
    private(set) var regions: [Range<Int>] = []

    /// Regions start at multiples of this, so that copies into them start aligned.
    static let alignment = 64

    init(capacity: Int) {
        self.capacity = capacity
    }

    /// Reserves `length` bytes and returns their region, or nil when no gap is large enough.
    mutating func allocate(_ length: Int) -> Range<Int>? {
        var start = 0
        var position = 0
        for region in regions {
            if region.lowerBound - start >= length { break }
            start = Self.aligned(region.upperBound)
            position += 1
        }
        guard start <= capacity, length <= capacity - start else { return nil }
        let region = start..<(start + length)
        regions.insert(region, at: position)
        return region
    }

    /// Gives back `region`, which ``allocate(_:)`` returned.
    mutating func release(_ region: Range<Int>) {
        if let index = regions.firstIndex(of: region) { regions.remove(at: index) }
    }

    private static func aligned(_ offset: Int) -> Int {
        (offset + alignment - 1) & ~(alignment - 1)
    }
}
