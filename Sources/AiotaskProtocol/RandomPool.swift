import NIOConcurrencyHelpers

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Random bits from the system's cryptographically secure generator, fetched 4 KiB at a time.
///
/// `SystemRandomNumberGenerator` makes one `getrandom` system call per 64-bit value, two per task id: at tens of
/// thousands of tasks a second, a measurable share of a client's time. The pool makes one call per 256 ids.
///
/// Used only through `shared`: a copy of a pool would hand out the same values again.
struct RandomPool {
    private static let count = 512
    private var values = [UInt64](repeating: 0, count: count)
    private var next = count

    /// The process-wide pool, behind a lock built on `pthread_mutex`, which ThreadSanitizer sees.
    static let shared = NIOLockedValueBox(RandomPool())

    mutating func nextValue() -> UInt64 {
        if next == Self.count { refill() }
        defer { next += 1 }
        return values[next]
    }

    private mutating func refill() {
        let filled = values.withUnsafeMutableBytes { bytes in
            Self.fill(bytes)
        }
        if !filled {
            var generator = SystemRandomNumberGenerator()
            for index in values.indices { values[index] = generator.next() }
        }
        next = 0
    }

    /// Fills `bytes` from the system's generator (glibc's `arc4random_buf` is one `getrandom` call); false if
    /// there is none to fill from in bulk.
    private static func fill(_ bytes: UnsafeMutableRawBufferPointer) -> Bool {
        #if canImport(Darwin) || canImport(Glibc)
            guard let base = bytes.baseAddress else { return true }
            arc4random_buf(base, bytes.count)
            return true
        #else
            return false
        #endif
    }
}
