//! Waiting for room or items without a lock: spin briefly, then yield, then sleep in growing
//! steps (capped at 1 ms), so a waiting thread reacts fast when the other side is busy and
//! stops burning a core when it is not.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

const SPINS: u32 = 64;
const YIELDS: u32 = 64;
const MAX_SLEEP: Duration = Duration::from_millis(1);

/// Backoff state for one blocking call.
#[derive(Debug)]
pub struct Backoff {
    step: u32,
    deadline: Option<Instant>,
    sleep: Duration,
}

impl Backoff {
    /// Start waiting; `timeout = None` waits forever.
    pub fn new(timeout: Option<Duration>) -> Self {
        Backoff {
            step: 0,
            deadline: timeout.map(|t| Instant::now() + t),
            sleep: Duration::from_micros(20),
        }
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Wait a little before the next attempt; `Err(Timeout)` (with `what`) once the deadline
    /// has passed.
    pub fn snooze(&mut self, what: &str) -> Result<()> {
        if self.expired() {
            return Err(Error::Timeout(format!(
                "{what} until the timeout: make sure the other side is running, or pass a longer timeout"
            )));
        }
        self.step = self.step.saturating_add(1);
        if self.step <= SPINS {
            for _ in 0..(1u32 << self.step.min(6)) {
                std::hint::spin_loop();
            }
        } else if self.step <= SPINS + YIELDS {
            std::thread::yield_now();
        } else {
            let mut nap = self.sleep;
            if let Some(d) = self.deadline {
                nap = nap.min(d.saturating_duration_since(Instant::now()));
            }
            std::thread::sleep(nap);
            self.sleep = (self.sleep * 2).min(MAX_SLEEP);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_out_with_a_fix() {
        let t0 = Instant::now();
        let mut b = Backoff::new(Some(Duration::from_millis(30)));
        let e = loop {
            if let Err(e) = b.snooze("dequeue: the ring stayed empty") {
                break e;
            }
        };
        assert!(t0.elapsed() >= Duration::from_millis(30));
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(matches!(e, Error::Timeout(_)));
        assert!(e.to_string().contains("longer timeout"), "{e}");
    }

    #[test]
    fn zero_timeout_fails_at_once() {
        let mut b = Backoff::new(Some(Duration::ZERO));
        assert!(b.snooze("x").is_err());
    }
}
