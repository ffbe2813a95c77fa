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

/// How far this process's clock is ahead of the database's, from one
/// reading `db` of the database's clock taken after `before` and before
/// `after` by this process's clock: the offset lies between `before - db`
/// and `after - db`. The estimate so far, `current`, is kept unless the
/// reading rules it out, and then moved to the nearest offset it allows.
/// Time spent before the database reads its clock (waiting for a pooled
/// connection or for the runtime) widens the window rather than shifting
/// the estimate, so a busy replica does not take it for an offset and fire
/// early; while the true offset holds still, each reading leaves the
/// estimate where it was or brings it closer.
pub fn offset_from(
    current: chrono::Duration,
    before: DateTime<Utc>,
    db: DateTime<Utc>,
    after: DateTime<Utc>,
) -> chrono::Duration {
    let (low, high) = (before - db, after - db);
    // A wall clock stepped back between the two readings.
    let (low, high) = if low <= high {
        (low, high)
    } else {
        (high, low)
    };
    current.clamp(low, high)
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn ms(n: i64) -> chrono::Duration {
        chrono::Duration::milliseconds(n)
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    #[test]
    fn a_wait_before_the_database_reads_its_clock_is_not_an_offset() {
        // One clock; the query waited 60 ms for a connection, then took 1 ms.
        let before = t0();
        let db = before + ms(60);
        let after = before + ms(61);
        assert_eq!(offset_from(ms(0), before, db, after), ms(0));
        // The round trip's midpoint would have put this clock 29.5 ms behind.
        let midpoint = before + (after - before) / 2 - db;
        assert_eq!(midpoint, chrono::Duration::microseconds(-29_500));
    }

    #[test]
    fn a_clock_that_is_off_is_found_from_the_first_reading() {
        let hour = chrono::Duration::hours(1);
        // This clock is an hour ahead; the database read its clock 2 ms
        // into a 5 ms round trip.
        let before = t0() + hour;
        let db = t0() + ms(2);
        let after = before + ms(5);
        let ahead = offset_from(ms(0), before, db, after);
        assert_eq!(ahead, hour - ms(2));
        // Then set right (an NTP step): the next reading moves it back.
        let before = t0() + ms(10_000);
        let ahead = offset_from(ahead, before, before + ms(1), before + ms(3));
        assert_eq!(ahead, ms(2));
        // A clock stepped back between the readings does not panic.
        assert_eq!(offset_from(ms(7), t0(), t0(), t0() - ms(5)), ms(0));
    }

    #[test]
    fn readings_never_move_the_estimate_away_from_a_steady_offset() {
        let truth = ms(-1234);
        let mut ahead = ms(0);
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |limit: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % limit) as i64
        };
        for i in 0..1000 {
            // Waits before and after the database reads its clock.
            let (wait, back) = (next(200), next(20));
            let before = t0() + ms(i * 5000);
            let db = before + ms(wait) - truth;
            let after = before + ms(wait + back);
            let was = ahead;
            ahead = offset_from(ahead, before, db, after);
            assert!((ahead - truth).abs() <= (was - truth).abs(), "reading {i}");
            assert!(before - db <= ahead && ahead <= after - db, "reading {i}");
        }
        assert!((ahead - truth).abs() <= ms(2), "{ahead}");
    }
}
