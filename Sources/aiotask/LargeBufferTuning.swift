import CAiotaskShims

/// Keeps the benchmark client's large buffers in the heap, as the daemon does (`MemoryTuning` in AiotaskWorker).
///
/// Every 1 MiB result the client library receives gets a buffer of its own. glibc serves such a block with a fresh
/// `mmap` and returns it with `munmap`, so each result paid 256 page faults and page clearings — in the profile, more
/// of the client's time than copying the result. Applications that move large tasks benefit from the same setting.
enum LargeBufferTuning {
    static func keepLargeBuffersInHeap() {
        _ = aiotask_set_malloc_thresholds(32 * 1024 * 1024, 64 * 1024 * 1024)
    }
}
