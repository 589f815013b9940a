//! How many threads compute: one setting for the whole process.
//!
//! The tensor library under r1 (candle) keeps process-wide thread pools, sized once from
//! `CANDLE_NUM_THREADS` / `RAYON_NUM_THREADS` when first used, and its dense matmuls read
//! `RAYON_NUM_THREADS` at each call. So the thread count is process-wide too: the first load that
//! asks for a count (or [`set_threads`]) fixes it, before anything computes; asking later for a
//! different count is an error rather than a setting silently ignored.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The count fixed for this process, once chosen.
static CHOSEN: Mutex<Option<usize>> = Mutex::new(None);

/// Whether a model has computed: from then on the pools exist with whatever count they got.
static STARTED: AtomicBool = AtomicBool::new(false);

/// Called before every forward pass.
pub(crate) fn mark_started() {
    STARTED.store(true, Ordering::Relaxed);
}

/// Sets the number of compute threads of this process (0 = the default: one per physical core,
/// or what `CANDLE_NUM_THREADS` says; it fixes nothing).
///
/// Call it before the first model computes; [`LoadOptions::threads`](crate::LoadOptions) calls
/// it at load. A second call with the same count is fine; a different count fails with
/// [`ErrorCode::InvalidArgument`](crate::ErrorCode::InvalidArgument), since the pools exist.
pub fn set_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let mut chosen = CHOSEN.lock().unwrap_or_else(|p| p.into_inner());
    match *chosen {
        Some(c) if c == n => Ok(()),
        Some(c) => Err(Error::InvalidArgument(format!(
            "threads: this process already computes with {c} threads (the count is process-wide and fixed at first use); {n} was asked"
        ))),
        None if STARTED.load(Ordering::Relaxed) => Err(Error::InvalidArgument(format!(
            "threads: a model already computed with the default thread count, so {n} can no longer be set (set it at the first load)"
        ))),
        None => {
            // The pools read these once, at their first use, which has not happened: r1 calls
            // this at load, before any model computes. Set while holding the lock, and only once.
            std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            *chosen = Some(n);
            Ok(())
        }
    }
}

/// The thread count set for this process, if one was.
pub fn threads() -> Option<usize> {
    *CHOSEN.lock().unwrap_or_else(|p| p.into_inner())
}
