//! Frames a handler kept (the KEEP verdict), waiting for the application to take them.

use std::sync::{Arc, Mutex};

use super::WorkerStats;
use crate::xsk::HeldFrames;

/// The KEEP frames of one batch, held until [`Kept::release`] or until the value is dropped
/// (each frame goes back to the pool once nothing else holds it, e.g. a view of it). Releases
/// are counted in the worker's `released` statistic.
#[derive(Debug)]
pub struct Kept {
    frames: HeldFrames,
    stats: Arc<WorkerStats>,
}

impl Kept {
    /// `frames`, counted in `stats` when released.
    pub fn new(frames: HeldFrames, stats: Arc<WorkerStats>) -> Self {
        Kept { frames, stats }
    }

    /// The frames (descriptors and holds).
    pub fn frames(&self) -> &HeldFrames {
        &self.frames
    }

    /// Drop the holds (idempotent); returns how many frames this released.
    pub fn release(&self) -> usize {
        let n = self.frames.release();
        if n > 0 {
            self.stats.add_released(n as u64);
        }
        n
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        // Kept frames nobody released go back now, counted like a release.
        self.release();
    }
}

/// Kept frames of a pipeline's workers, oldest first, until the application drains them.
#[derive(Debug, Default)]
pub struct KeptQueue {
    list: Mutex<Vec<Kept>>,
}

impl KeptQueue {
    /// Add a batch's kept frames (a worker, once per batch that kept any).
    pub fn push(&self, k: Kept) {
        self.lock().push(k);
    }

    /// Take every queued [`Kept`], oldest first.
    pub fn drain(&self) -> Vec<Kept> {
        std::mem::take(&mut *self.lock())
    }

    /// How many [`Kept`] wait.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Kept>> {
        // A panic while pushing or draining leaves a valid Vec.
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }
}
