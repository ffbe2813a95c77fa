//! Wall-clock time for the scheduler, injectable so tests can run on
//! tokio's paused clock.

use chrono::{DateTime, Utc};
use std::time::Duration;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A wall clock that starts at `start` and advances with tokio's clock, so
/// `tokio::time::pause()` and `advance()` drive it.
pub struct TokioClock {
    start: DateTime<Utc>,
    origin: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        TokioClock {
            start,
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now() - self.origin;
        self.start + chrono::Duration::from_std(elapsed).unwrap_or_default()
    }
}

/// Sleeps until `clock` reads `at` or later. Sleeps in slices so that a
/// wall clock stepped by NTP is noticed within a minute.
pub async fn sleep_until(clock: &dyn Clock, at: DateTime<Utc>) {
    loop {
        let left = at - clock.now();
        let Ok(left) = left.to_std() else { return };
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(Duration::from_secs(60))).await;
    }
}
