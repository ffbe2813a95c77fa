//! Time for tasks: the host's wall clock, milliseconds since the epoch (what
//! [`crate::sql::Value::Timestamp`] and the run context carry), and ages
//! such as `90 days` read from config. Times are UTC.

pub use chrono::NaiveDateTime;
use chrono::{DateTime, Duration, Months};
use std::time::{SystemTime, UNIX_EPOCH};

/// One day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// An age such as `90 days`, `12 hours`, `6 months` or `2 weeks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Age {
    Hours(u32),
    Days(u32),
    Months(u32),
}

impl Age {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let n: u32 = number
            .parse()
            .map_err(|_| format!("{text:?} is not an age; use e.g. \"90 days\""))?;
        match unit.trim().to_ascii_lowercase().as_str() {
            "h" | "hour" | "hours" => Ok(Age::Hours(n)),
            "d" | "day" | "days" => Ok(Age::Days(n)),
            "w" | "week" | "weeks" => Ok(Age::Days(n * 7)),
            "month" | "months" | "mon" => Ok(Age::Months(n)),
            "y" | "year" | "years" => Ok(Age::Months(n * 12)),
            other => Err(format!(
                "unknown unit {other:?} in {text:?}; use hours, days, weeks, months or years"
            )),
        }
    }

    /// `now` plus this age.
    pub fn after(self, now: NaiveDateTime) -> NaiveDateTime {
        match self {
            Age::Hours(n) => now + Duration::hours(n.into()),
            Age::Days(n) => now + Duration::days(n.into()),
            Age::Months(n) => now + Months::new(n),
        }
    }

    /// `now` minus this age.
    pub fn before(self, now: NaiveDateTime) -> NaiveDateTime {
        match self {
            Age::Hours(n) => now - Duration::hours(n.into()),
            Age::Days(n) => now - Duration::days(n.into()),
            Age::Months(n) => now - Months::new(n),
        }
    }

    /// The instant this age ago, in milliseconds since the epoch: the
    /// cutoff of "older than".
    pub fn ago(self) -> i64 {
        to_millis(self.before(now()))
    }
}

impl std::fmt::Display for Age {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (n, unit) = match *self {
            Age::Hours(n) => (n, "hour"),
            Age::Days(n) => (n, "day"),
            Age::Months(n) => (n, "month"),
        };
        write!(f, "{n} {unit}{}", if n == 1 { "" } else { "s" })
    }
}

/// Milliseconds since the epoch as a UTC date-time.
pub fn from_millis(ms: i64) -> NaiveDateTime {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .naive_utc()
}

/// A UTC date-time as milliseconds since the epoch.
pub fn to_millis(t: NaiveDateTime) -> i64 {
    t.and_utc().timestamp_millis()
}

/// Milliseconds since the Unix epoch (negative before it).
pub fn millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// The current time, from the host's wall clock, in milliseconds.
pub fn now_millis() -> i64 {
    millis(SystemTime::now())
}

/// The current time, from the host's wall clock.
pub fn now() -> NaiveDateTime {
    from_millis(now_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    #[test]
    fn ages() {
        let now = t("2026-03-31 12:00");
        assert_eq!(
            Age::parse("90 days").unwrap().before(now),
            t("2025-12-31 12:00")
        );
        assert_eq!(
            Age::parse("12h").unwrap().before(now),
            t("2026-03-31 00:00")
        );
        assert_eq!(
            Age::parse("1 month").unwrap().before(now),
            t("2026-02-28 12:00")
        );
        assert_eq!(Age::parse("2 weeks").unwrap(), Age::Days(14));
        assert_eq!(
            Age::parse("1 month").unwrap().after(now),
            t("2026-04-30 12:00")
        );
        assert!(Age::parse("ninety days").is_err());
        assert!(Age::parse("90 fortnights").is_err());
    }

    #[test]
    fn ages_print_in_words() {
        assert_eq!(Age::parse("90 days").unwrap().to_string(), "90 days");
        assert_eq!(Age::parse("1h").unwrap().to_string(), "1 hour");
        assert_eq!(Age::parse("1 year").unwrap().to_string(), "12 months");
    }

    #[test]
    fn millis_round_trip_and_before_the_epoch() {
        let x = t("2026-11-25 13:45");
        assert_eq!(from_millis(to_millis(x)), x);
        assert_eq!(
            millis(UNIX_EPOCH - std::time::Duration::from_secs(1)),
            -1000
        );
        assert_eq!(millis(UNIX_EPOCH + std::time::Duration::from_millis(5)), 5);
    }
}
