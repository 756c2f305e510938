//! glibc malloc tuning for the libtorch kernels.
//!
//! libtorch allocates each result (then copied into ONNX Runtime's buffer) with malloc, a few
//! MB a part, on ONNX Runtime's threads. glibc hands such blocks back to the kernel on free
//! (munmap above its mmap threshold, heap trimming above its trim threshold), so every batch
//! faulted the same pages in again, in system time. [`keep_freed_memory`] keeps freed memory
//! in the process instead.

/// Sets glibc's malloc to keep freed memory for reuse (once per process): blocks up to 32 MiB
/// (the largest threshold glibc takes) come from its heaps rather than their own mmap, and
/// heaps are not trimmed back below 1 GiB of free space at the top. With glibc's dynamic
/// defaults the per-batch blocks of the libtorch kernels were unmapped and faulted in again
/// every batch; with these they stay mapped. The process keeps at most its peak heap. glibc
/// only (the mallopt parameters are glibc's): elsewhere this does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // glibc's malloc.h: M_TRIM_THRESHOLD -1, M_MMAP_THRESHOLD -3.
        const M_TRIM_THRESHOLD: std::os::raw::c_int = -1;
        const M_MMAP_THRESHOLD: std::os::raw::c_int = -3;
        ONCE.call_once(|| {
            // A refused value leaves the default, which is only slower.
            super::ffi::set_malloc_param(M_MMAP_THRESHOLD, 32 << 20);
            super::ffi::set_malloc_param(M_TRIM_THRESHOLD, 1 << 30);
        });
    }
}
