//! Range-partition arithmetic shared by partition tasks: period starts and
//! ends, names (`<table>_YYYY_MM_DD`, `<table>_YYYY_MM_DD_HH`,
//! `<table>_YYYY_MM`). Times are UTC; ages and the clock are in
//! [`crate::time`].

use crate::sql::{Ident, PartitionBounds, RangeBound, RangeBounds, Relation, Value};
pub use crate::time::NaiveDateTime;
use chrono::{Datelike, Duration, Months, NaiveDate, Timelike};

/// How much time one partition covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Hourly,
    Daily,
    Monthly,
}

impl Interval {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "hourly" | "hour" => Ok(Interval::Hourly),
            "daily" | "day" => Ok(Interval::Daily),
            "monthly" | "month" => Ok(Interval::Monthly),
            other => Err(format!(
                "unknown interval {other:?}; use daily, hourly or monthly"
            )),
        }
    }

    /// A sensible number of partitions to keep ready ahead.
    pub fn default_premake(self) -> u32 {
        match self {
            Interval::Hourly => 48,
            Interval::Daily => 30,
            Interval::Monthly => 3,
        }
    }

    /// Start of the period that contains `t`.
    pub fn floor(self, t: NaiveDateTime) -> NaiveDateTime {
        let day = t.date();
        match self {
            Interval::Hourly => day.and_hms_opt(t.hour(), 0, 0).expect("valid hour"),
            Interval::Daily => day.and_hms_opt(0, 0, 0).expect("midnight"),
            Interval::Monthly => NaiveDate::from_ymd_opt(day.year(), day.month(), 1)
                .expect("first of month")
                .and_hms_opt(0, 0, 0)
                .expect("midnight"),
        }
    }

    /// Start of the period after the one starting at `start`.
    pub fn next(self, start: NaiveDateTime) -> NaiveDateTime {
        match self {
            Interval::Hourly => start + Duration::hours(1),
            Interval::Daily => start + Duration::days(1),
            Interval::Monthly => start + Months::new(1),
        }
    }

    fn suffix(self, start: NaiveDateTime) -> String {
        match self {
            Interval::Hourly => start.format("%Y_%m_%d_%H").to_string(),
            Interval::Daily => start.format("%Y_%m_%d").to_string(),
            Interval::Monthly => start.format("%Y_%m").to_string(),
        }
    }

    fn parse_suffix(self, suffix: &str) -> Option<NaiveDateTime> {
        let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
        let parts: Vec<&str> = suffix.split('_').collect();
        let (y, m, d, h) = match (self, parts.as_slice()) {
            (Interval::Monthly, [y, m]) if digits(y, 4) && digits(m, 2) => (y, m, "01", "00"),
            (Interval::Daily, [y, m, d]) if digits(y, 4) && digits(m, 2) && digits(d, 2) => {
                (y, m, *d, "00")
            }
            (Interval::Hourly, [y, m, d, h])
                if digits(y, 4) && digits(m, 2) && digits(d, 2) && digits(h, 2) =>
            {
                (y, m, *d, *h)
            }
            _ => return None,
        };
        NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)?.and_hms_opt(
            h.parse().ok()?,
            0,
            0,
        )
    }
}

/// One partition: its name and the range `[start, end)` it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub start: NaiveDateTime,
    pub end: NaiveDateTime,
}

impl Partition {
    pub fn at(table: &str, interval: Interval, start: NaiveDateTime) -> Self {
        Partition {
            name: format!("{}_{}", bare(table), interval.suffix(start)),
            start,
            end: interval.next(start),
        }
    }

    /// The partition a name denotes, if it follows the naming scheme.
    pub fn parse(table: &str, interval: Interval, name: &str) -> Option<Self> {
        let suffix = name.strip_prefix(&format!("{}_", bare(table)))?;
        let start = interval.parse_suffix(suffix)?;
        Some(Partition::at(table, interval, start))
    }

    /// `FROM (start) TO (end)` as UTC timestamps, for
    /// [`crate::sql::create_partition`].
    pub fn bounds(&self) -> PartitionBounds {
        let at = |t: NaiveDateTime| {
            vec![RangeBound::Value(Value::Timestamp(
                t.and_utc().timestamp_millis(),
            ))]
        };
        PartitionBounds::Range(RangeBounds {
            from: at(self.start),
            to: at(self.end),
        })
    }

    /// The partition as a table in `table`'s schema.
    pub fn relation(&self, table: &Ident) -> Relation {
        table.sibling_relation(&self.name)
    }
}

/// The table name without its schema.
fn bare(table: &str) -> &str {
    table.rsplit('.').next().unwrap_or(table)
}

/// Partitions for the period holding `now` and `premake` periods after it.
pub fn wanted(table: &str, interval: Interval, now: NaiveDateTime, premake: u32) -> Vec<Partition> {
    let mut start = interval.floor(now);
    let mut out = Vec::with_capacity(premake as usize + 1);
    for _ in 0..=premake {
        out.push(Partition::at(table, interval, start));
        start = interval.next(start);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    #[test]
    fn names_and_bounds_per_interval() {
        let p = Partition::at("events", Interval::Daily, t("2026-12-31 00:00"));
        assert_eq!(p.name, "events_2026_12_31");
        assert_eq!(p.end, t("2027-01-01 00:00"));
        let PartitionBounds::Range(range) = p.bounds() else {
            panic!("not a range: {:?}", p.bounds());
        };
        let ms = |b: &[RangeBound]| match b {
            [RangeBound::Value(Value::Timestamp(ms))] => *ms,
            other => panic!("not one timestamp: {other:?}"),
        };
        // 2026-12-31T00:00:00Z and a day later.
        assert_eq!(ms(&range.from), 1_798_675_200_000);
        assert_eq!(ms(&range.to), 1_798_761_600_000);
        let table = Ident::parse("table", "app.events").unwrap();
        let r = p.relation(&table);
        assert_eq!(
            (r.schema.as_deref(), r.name.as_str()),
            (Some("app"), "events_2026_12_31")
        );
        let p = Partition::at("public.logs", Interval::Hourly, t("2026-11-25 23:00"));
        assert_eq!(p.name, "logs_2026_11_25_23");
        assert_eq!(p.end, t("2026-11-26 00:00"));
        let p = Partition::at("m", Interval::Monthly, t("2026-01-01 00:00"));
        assert_eq!(
            (p.name.as_str(), p.end),
            ("m_2026_01", t("2026-02-01 00:00"))
        );
    }

    #[test]
    fn names_parse_back_and_others_do_not() {
        let p = Partition::parse("events", Interval::Daily, "events_2026_02_28").unwrap();
        assert_eq!(p.start, t("2026-02-28 00:00"));
        assert!(Partition::parse("events", Interval::Daily, "events_2026_02_30").is_none());
        assert!(Partition::parse("events", Interval::Daily, "events_default").is_none());
        assert!(Partition::parse("events", Interval::Daily, "events_p2026_02_28").is_none());
        assert!(Partition::parse("events", Interval::Daily, "device_events_2026_02_28").is_none());
        assert!(Partition::parse("events", Interval::Hourly, "events_2026_02_28").is_none());
        assert_eq!(
            Partition::parse("m", Interval::Monthly, "m_2026_02")
                .unwrap()
                .end,
            t("2026-03-01 00:00")
        );
    }

    #[test]
    fn wanted_covers_now_and_premake_ahead() {
        let w = wanted("events", Interval::Daily, t("2026-11-25 13:45"), 30);
        assert_eq!(w.len(), 31);
        assert_eq!(w[0].name, "events_2026_11_25");
        assert_eq!(w[30].name, "events_2026_12_25");
        let w = wanted("e", Interval::Monthly, t("2026-11-25 13:45"), 2);
        let names: Vec<_> = w.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["e_2026_11", "e_2026_12", "e_2027_01"]);
    }
}
