//! When a cron schedule fires next, in the task's time zone.
//!
//! Daylight-saving behaviour (croner's, after Vixie cron): a fixed-time job
//! whose time does not exist on a spring-forward day runs at the first valid
//! time after the gap, once; on a fall-back day it runs once, at the first
//! of the repeated times. Interval jobs (`*/15`, `*` in the hour) skip the
//! times that do not exist, and each repeated wall-clock time fires once, in
//! its first (summer-time) copy: an hourly job runs at 02:00 CEST, then at
//! 03:00 CET, two real hours later.

use crate::schedule::Schedule;
use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;

/// The first fire strictly after `after`.
pub fn next_fire(schedule: &Schedule, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // Cron has whole seconds; croner would carry the fraction over.
    let after = after.with_nanosecond(0).unwrap_or(after);
    let local = after.with_timezone(&tz);
    schedule
        .cron()
        .find_next_occurrence(&local, false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The latest fire in `(after, until]`, if any; gives up (returning what it
/// found) after `limit` fires so a long outage of a per-second schedule
/// stays cheap.
pub fn latest_fire_between(
    schedule: &Schedule,
    tz: Tz,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: usize,
) -> Option<DateTime<Utc>> {
    let mut latest = None;
    let mut cursor = after;
    for _ in 0..limit {
        match next_fire(schedule, tz, cursor) {
            Some(t) if t <= until => {
                latest = Some(t);
                cursor = t;
            }
            _ => return latest,
        }
    }
    // Too many to walk: jump close to `until` and take the last one there.
    let near = until - chrono::Duration::days(1);
    let mut cursor = near.max(cursor);
    while let Some(t) = next_fire(schedule, tz, cursor).filter(|t| *t <= until) {
        latest = Some(t);
        cursor = t;
    }
    latest
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use chrono_tz::America::New_York;
    use chrono_tz::Europe::Berlin;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    /// Every fire in `[from, to)`, in local time.
    fn fires(expr: &str, tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<String> {
        let s = Schedule::parse(expr).unwrap();
        let mut out = Vec::new();
        let mut cursor = from;
        while let Some(t) = next_fire(&s, tz, cursor).filter(|t| *t < to) {
            out.push(t.with_timezone(&tz).format("%m-%d %H:%M:%S %Z").to_string());
            cursor = t;
        }
        out
    }

    #[test]
    fn daily_0230_runs_once_on_both_transition_days_in_berlin() {
        // 2026-03-29: 02:00 CET -> 03:00 CEST. 2026-10-25: 03:00 CEST -> 02:00 CET.
        let spring = fires(
            "30 2 * * *",
            Berlin,
            utc(2026, 3, 27, 12, 0, 0),
            utc(2026, 3, 31, 0, 0, 0),
        );
        assert_eq!(
            spring,
            [
                "03-28 02:30:00 CET",
                "03-29 03:00:00 CEST",
                "03-30 02:30:00 CEST"
            ]
        );
        let autumn = fires(
            "30 2 * * *",
            Berlin,
            utc(2026, 10, 23, 12, 0, 0),
            utc(2026, 10, 27, 0, 0, 0),
        );
        assert_eq!(
            autumn,
            [
                "10-24 02:30:00 CEST",
                "10-25 02:30:00 CEST",
                "10-26 02:30:00 CET"
            ]
        );
    }

    #[test]
    fn daily_0230_runs_once_on_both_transition_days_in_new_york() {
        // 2026-03-08: 02:00 EST -> 03:00 EDT. 2026-11-01: 02:00 EDT -> 01:00 EST.
        let spring = fires(
            "30 2 * * *",
            New_York,
            utc(2026, 3, 7, 12, 0, 0),
            utc(2026, 3, 10, 0, 0, 0),
        );
        assert_eq!(spring, ["03-08 03:00:00 EDT", "03-09 02:30:00 EDT"]);
        let autumn = fires(
            "30 1 * * *",
            New_York,
            utc(2026, 10, 31, 12, 0, 0),
            utc(2026, 11, 3, 0, 0, 0),
        );
        assert_eq!(autumn, ["11-01 01:30:00 EDT", "11-02 01:30:00 EST"]);
    }

    #[test]
    fn interval_jobs_skip_the_missing_hour_and_run_the_repeated_one_once() {
        let spring = fires(
            "0 * * * *",
            Berlin,
            utc(2026, 3, 29, 0, 30, 0),
            utc(2026, 3, 29, 2, 30, 0),
        );
        assert_eq!(spring, ["03-29 03:00:00 CEST", "03-29 04:00:00 CEST"]);
        let autumn = fires(
            "0 * * * *",
            Berlin,
            utc(2026, 10, 24, 23, 30, 0),
            utc(2026, 10, 25, 2, 30, 0),
        );
        assert_eq!(autumn, ["10-25 02:00:00 CEST", "10-25 03:00:00 CET"]);
        let half_hourly = fires(
            "*/30 * * * *",
            Berlin,
            utc(2026, 10, 24, 23, 45, 0),
            utc(2026, 10, 25, 2, 15, 0),
        );
        assert_eq!(
            half_hourly,
            [
                "10-25 02:00:00 CEST",
                "10-25 02:30:00 CEST",
                "10-25 03:00:00 CET"
            ]
        );
    }

    #[test]
    fn seconds_and_macros() {
        let s = Schedule::parse("*/15 * * * * *").unwrap();
        assert_eq!(
            next_fire(&s, Berlin, utc(2026, 1, 1, 0, 0, 0)),
            Some(utc(2026, 1, 1, 0, 0, 15))
        );
        let daily = Schedule::parse("@daily").unwrap();
        // Midnight in Berlin is 23:00 UTC in winter.
        assert_eq!(
            next_fire(&daily, Berlin, utc(2026, 1, 1, 12, 0, 0)),
            Some(utc(2026, 1, 1, 23, 0, 0))
        );
        let hourly = Schedule::parse("@hourly").unwrap();
        assert_eq!(
            next_fire(&hourly, New_York, utc(2026, 1, 1, 12, 0, 0)),
            Some(utc(2026, 1, 1, 13, 0, 0))
        );
    }

    #[test]
    fn fires_fall_on_whole_seconds() {
        let s = Schedule::parse("* * * * * *").unwrap();
        let after = utc(2026, 1, 1, 0, 0, 7) + chrono::Duration::milliseconds(290);
        assert_eq!(next_fire(&s, Berlin, after), Some(utc(2026, 1, 1, 0, 0, 8)));
    }

    #[test]
    fn latest_missed_fire() {
        let s = Schedule::parse("0 * * * *").unwrap();
        let tz: Tz = "Etc/UTC".parse().unwrap();
        let last = utc(2026, 1, 1, 0, 0, 0);
        assert_eq!(
            latest_fire_between(&s, tz, last, utc(2026, 1, 1, 5, 30, 0), 1000),
            Some(utc(2026, 1, 1, 5, 0, 0))
        );
        assert_eq!(
            latest_fire_between(&s, tz, last, utc(2026, 1, 1, 0, 59, 0), 1000),
            None
        );
        let every_second = Schedule::parse("* * * * * *").unwrap();
        assert_eq!(
            latest_fire_between(&every_second, tz, last, utc(2026, 1, 9, 0, 0, 0), 100),
            Some(utc(2026, 1, 9, 0, 0, 0))
        );
    }
}
