//! The responder's read and atomic resources (`max_dest_rd_atomic` of them, the oldest
//! recycled first, as rxe does): what a duplicate read or atomic may be answered from.

use std::collections::VecDeque;

use super::psn_diff;

/// One executed read or atomic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resource {
    /// A read of `len` bytes at `va` under `rkey`, answered in PSNs `first_psn..=last_psn`.
    Read {
        first_psn: u32,
        last_psn: u32,
        va: u64,
        rkey: u32,
        len: u32,
    },
    /// An atomic at `psn` that found `orig`.
    Atomic { psn: u32, orig: u64 },
}

#[derive(Debug)]
pub(super) struct Resources {
    max: usize,
    held: VecDeque<Resource>,
}

impl Resources {
    pub(super) fn new(max: u8) -> Self {
        Resources {
            max: usize::from(max),
            held: VecDeque::new(),
        }
    }

    /// Whether reads and atomics are allowed at all (`max_dest_rd_atomic` > 0).
    pub(super) fn enabled(&self) -> bool {
        self.max > 0
    }

    /// Keeps `r`, recycling the oldest resource when all are in use.
    pub(super) fn hold(&mut self, r: Resource) {
        if self.max == 0 {
            return;
        }
        if self.held.len() == self.max {
            self.held.pop_front();
        }
        self.held.push_back(r);
    }

    /// Whether a duplicate read at `psn` of `len` bytes at `va` under `rkey` may be
    /// answered: a held read's PSNs include `psn` and its range includes the duplicate's.
    pub(super) fn read_covers(&self, psn: u32, va: u64, rkey: u32, len: u32) -> bool {
        self.held.iter().any(|r| match *r {
            Resource::Read {
                first_psn,
                last_psn,
                va: va0,
                rkey: k,
                len: n,
            } => {
                psn_diff(psn, first_psn) >= 0
                    && psn_diff(psn, last_psn) <= 0
                    && k == rkey
                    && va >= va0
                    && va
                        .checked_add(u64::from(len))
                        .is_some_and(|end| end <= va0.saturating_add(u64::from(n)))
            }
            Resource::Atomic { .. } => false,
        })
    }

    /// The last PSN of the held read whose PSNs include `psn`.
    pub(super) fn read_last_psn(&self, psn: u32) -> Option<u32> {
        self.held.iter().find_map(|r| match *r {
            Resource::Read {
                first_psn,
                last_psn,
                ..
            } if psn_diff(psn, first_psn) >= 0 && psn_diff(psn, last_psn) <= 0 => Some(last_psn),
            _ => None,
        })
    }

    /// The original value a held atomic at `psn` found.
    pub(super) fn atomic_at(&self, psn: u32) -> Option<u64> {
        self.held.iter().find_map(|r| match *r {
            Resource::Atomic { psn: p, orig } if p == psn => Some(orig),
            _ => None,
        })
    }
}
