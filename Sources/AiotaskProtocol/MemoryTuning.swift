import CAiotaskShims

/// Keeps large buffers in the heap instead of mapping and unmapping them for every task.
///
/// glibc serves each allocation above its mmap threshold (128 KiB at first, raised only to the size of the
/// last such block freed) with a fresh `mmap`, and returns it with `munmap`: every megabyte-sized task then
/// pays for its buffers in page faults and page clearing — measured as about three quarters of the
/// supervisor's time on 1 MiB echo tasks, and, in the bench client, more of its time than copying each 1 MiB result.
/// Raising the threshold to 32 MiB (glibc's maximum) reuses freed blocks instead; the trim threshold bounds how much
/// freed memory the process keeps, 64 MiB.
///
/// The daemon sets it at start, and so does `aiotask bench`. Applications that move large tasks with the client
/// library benefit from it too; a library does not impose it on its host.
public enum MemoryTuning {
    public static func keepLargeBuffersInHeap() {
        _ = aiotask_set_malloc_thresholds(32 * 1024 * 1024, 64 * 1024 * 1024)
    }
}
