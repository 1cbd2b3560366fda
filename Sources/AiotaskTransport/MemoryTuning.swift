#if canImport(CAiotaskShims)
    import CAiotaskShims
#endif

/// Keeps large buffers in the heap instead of mapping and unmapping them for every task.
///
/// glibc serves each allocation above its mmap threshold (128 KiB at first, raised only to the size of the
/// last such block freed) with a fresh `mmap`, and returns it with `munmap`: every megabyte-sized task then
/// pays for its buffers in page faults and page clearing — measured as about three quarters of the
/// supervisor's time on 1 MiB echo tasks. Raising the threshold to 32 MiB (glibc's maximum) reuses freed
/// blocks instead; the trim threshold bounds how much freed memory the process keeps, 64 MiB.
///
/// The daemon calls it at start, and so does `aiotask bench`: every 1 MiB result the client library receives
/// gets a buffer of its own, and each paid 256 page faults and page clearings — in the profile, more of the
/// client's time than copying the result. Applications that move large tasks benefit from the same setting.
///
/// The shims are Linux's (glibc's `mallopt`); elsewhere this does nothing, and the client library, which builds there
/// too, does not depend on them.
package enum MemoryTuning {
    package static func keepLargeBuffersInHeap() {
        #if canImport(CAiotaskShims)
            _ = aiotask_set_malloc_thresholds(32 * 1024 * 1024, 64 * 1024 * 1024)
        #endif
    }
}
