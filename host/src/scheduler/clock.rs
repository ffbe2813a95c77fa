//! Wall-clock time for the scheduler, injectable so tests can run on
//! tokio's paused clock.

use chrono::{DateTime, Utc};
use std::time::Duration;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;

    /// Told how far this process's clock is ahead of the database's; a
    /// clock that follows the database's takes it off.
    fn correct(&self, _ahead: chrono::Duration) {}

    /// What was last given to [`Clock::correct`].
    fn ahead(&self) -> chrono::Duration {
        chrono::Duration::zero()
    }
}

/// The system's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The system's wall clock set to the database's: with several replicas
/// the database's clock decides when an occurrence is due, so a replica
/// whose clock is off still fires on time.
#[derive(Default)]
pub struct DatabaseClock {
    ahead_ms: std::sync::atomic::AtomicI64,
}

impl Clock for DatabaseClock {
    fn now(&self) -> DateTime<Utc> {
        let ahead = self.ahead_ms.load(std::sync::atomic::Ordering::Relaxed);
        Utc::now() - chrono::Duration::milliseconds(ahead)
    }

    fn correct(&self, ahead: chrono::Duration) {
        self.ahead_ms.store(
            ahead.num_milliseconds(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn ahead(&self) -> chrono::Duration {
        chrono::Duration::milliseconds(self.ahead_ms.load(std::sync::atomic::Ordering::Relaxed))
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
