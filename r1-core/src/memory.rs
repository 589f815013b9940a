//! Giving the memory a load freed back to the operating system.
//!
//! Loading reads a checkpoint a piece at a time, repacks the pieces, and parses metadata and a
//! tokenizer: megabytes allocated and freed between the weights that stay. glibc keeps freed
//! heap memory below the heap's top resident (it can only shrink the top), so a loaded model's
//! process held ~20 MB more than its weights (SmolLM2: 117 MiB resident for a 94 MiB file),
//! which counts against every later peak. `malloc_trim` hands those free pages back.

/// Returns the heap's free pages to the operating system (glibc on Linux; elsewhere nothing).
pub(crate) fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases memory glibc's allocator holds as free; it takes no
    // pointers and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
