//! Cron schedules: parsing, validation, and when a schedule fires next in a
//! time zone. This is the one place that knows cron and daylight saving:
//! the scheduler, the CLI and the API all ask it.
//!
//! Accepted: 5 fields (minute hour day-of-month month day-of-week), 6 with
//! leading seconds, and the macros `@yearly`/`@annually`, `@monthly`,
//! `@weekly`, `@daily`/`@midnight`, `@hourly`. croner parses the fields
//! (lists, ranges, steps, names, and its `L`, `W`, `#` and `?`); the search
//! is ours, because croner's walks local time and, across a daylight-saving
//! change, can fire an occurrence twice or return a time in the past.
//!
//! The rules, after Vixie and Debian cron:
//! - When the day-of-month or the day-of-week field starts with `*`, a day
//!   must match both fields; otherwise it must match either.
//! - A schedule is *fixed-time* when none of its seconds, minute and hour
//!   fields starts with `*` (`30 2,14 * * *` is; `0 */2 * * *` is not).
//! - Each matching wall-clock time on a local date is one occurrence. One
//!   that exists once fires then; one that exists twice (clocks go back)
//!   fires in its first copy only, whatever the schedule; one that does not
//!   exist (clocks go forward) fires at the end of the gap for a fixed-time
//!   schedule (occurrences in the same gap are one fire) and not at all for
//!   the others.
//!
//! So a schedule's fires are one fixed set of instants, and the next fire
//! after any instant is the least of them after it: strictly later, the
//! same wherever a search starts, never a second fire for an occurrence.

use chrono::{
    DateTime, Datelike, LocalResult, Months, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    TimeDelta, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use std::fmt;

const SECOND: TimeDelta = TimeDelta::seconds(1);

/// A validated cron expression, kept with the text it came from.
#[derive(Clone)]
pub struct Schedule {
    text: String,
    /// For the day fields, whose `L`, `W` and `#` croner implements.
    cron: Cron,
    /// Bit `n` set when value `n` of the field matches.
    seconds: u64,
    minutes: u64,
    hours: u64,
    months: u64,
    fixed_time: bool,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = |why: &dyn fmt::Display| format!("invalid cron expression {text:?}: {why}");
        let trimmed = text.trim();
        let expanded = if trimmed.starts_with('@') {
            expand_macro(trimmed).ok_or_else(|| {
                invalid(
                    &"unknown macro; expected @yearly, @annually, @monthly, @weekly, @daily, \
                      @midnight or @hourly",
                )
            })?
        } else {
            trimmed
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if !(fields.len() == 5 || fields.len() == 6) {
            return Err(invalid(&format_args!(
                "expected 5 fields (minute hour day month weekday), 6 with leading seconds, \
                 or a macro such as @daily; found {}",
                fields.len()
            )));
        }
        // croner reads `?` as `*`.
        let starred = |field: &str| field.starts_with('*') || field.starts_with('?');
        let (day_of_month, day_of_week) = (fields[fields.len() - 3], fields[fields.len() - 1]);
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .dom_and_dow(starred(day_of_month) || starred(day_of_week))
            .build()
            .parse(expanded)
            .map_err(|e| invalid(&e))?;
        let p = &cron.pattern;
        let schedule = Schedule {
            seconds: mask(0..=59, |v| p.second_match(v)),
            minutes: mask(0..=59, |v| p.minute_match(v)),
            hours: mask(0..=23, |v| p.hour_match(v)),
            months: mask(1..=12, |v| p.month_match(v)),
            fixed_time: !fields[..fields.len() - 3].iter().any(|f| starred(f)),
            text: trimmed.to_owned(),
            cron,
        };
        if schedule.seconds == 0 || schedule.minutes == 0 || schedule.hours == 0 {
            return Err(invalid(
                &"it never fires: no time of day matches its time fields",
            ));
        }
        if !schedule.some_date_matches() {
            return Err(invalid(
                &"it never fires: no date matches its day-of-month, month and day-of-week fields",
            ));
        }
        Ok(schedule)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether any date matches. A month has a matching day or not according
    /// to the month, its length and the weekday it starts on alone, and 2001
    /// to 2028 hold every combination (seven leap-year Februaries among
    /// them, one starting on each weekday).
    fn some_date_matches(&self) -> bool {
        let first = NaiveDate::from_ymd_opt(2001, 1, 1).expect("a valid date");
        let last = NaiveDate::from_ymd_opt(2028, 12, 31).expect("a valid date");
        first
            .iter_days()
            .take_while(|d| *d <= last)
            .any(|d| self.day_matches(d))
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        self.months & (1 << date.month()) != 0
            && self
                .cron
                .pattern
                .day_match(date.year(), date.month(), date.day())
                .unwrap_or(false)
    }

    /// The first matching time of day at or after `from`.
    fn next_time(&self, from: NaiveTime) -> Option<NaiveTime> {
        let (h0, m0, s0) = (from.hour(), from.minute(), from.second());
        let mut hour = next_bit(self.hours, h0)?;
        loop {
            let mut minute = next_bit(self.minutes, if hour == h0 { m0 } else { 0 });
            while let Some(m) = minute {
                let s_from = if (hour, m) == (h0, m0) { s0 } else { 0 };
                if let Some(s) = next_bit(self.seconds, s_from) {
                    return NaiveTime::from_hms_opt(hour, m, s);
                }
                minute = next_bit(self.minutes, m + 1);
            }
            hour = next_bit(self.hours, hour + 1)?;
        }
    }

    /// The first matching wall-clock time at or after `from`, on a date no
    /// later than `last_day`.
    fn next_wall(&self, from: NaiveDateTime, last_day: NaiveDate) -> Option<NaiveDateTime> {
        let mut day = from.date();
        let mut earliest = from.time();
        while day <= last_day {
            if self.months & (1 << day.month()) == 0 {
                day = day.with_day(1)?.checked_add_months(Months::new(1))?;
            } else {
                if self.day_matches(day)
                    && let Some(time) = self.next_time(earliest)
                {
                    return Some(day.and_time(time));
                }
                day = day.succ_opt()?;
            }
            earliest = NaiveTime::MIN;
        }
        None
    }

    /// The first fire strictly after `after` from occurrences on local dates
    /// up to `last_day`.
    fn next_fire_until(
        &self,
        tz: Tz,
        after: DateTime<Utc>,
        last_day: NaiveDate,
    ) -> Option<DateTime<Utc>> {
        // Fires fall on whole seconds: being later than `after` is being
        // later than its whole second.
        let after = after.with_nanosecond(0)?;
        // Occurrences up to `after`'s own wall-clock time all fire at or
        // before it (the ones in a repeated hour fire in its first copy).
        let mut from = after
            .with_timezone(&tz)
            .naive_local()
            .checked_add_signed(SECOND)?;
        loop {
            let wall = self.next_wall(from, last_day)?;
            let step = wall.checked_add_signed(SECOND)?;
            from = match tz.from_local_datetime(&wall) {
                LocalResult::Single(t) => {
                    let t = t.with_timezone(&Utc);
                    if t > after {
                        return Some(t);
                    }
                    step
                }
                LocalResult::Ambiguous(a, b) => {
                    let (first, second) = if a <= b { (a, b) } else { (b, a) };
                    let first_offset = first.offset().fix();
                    let (first, second) = (first.with_timezone(&Utc), second.with_timezone(&Utc));
                    if first > after {
                        return Some(first);
                    }
                    // `after` is in the second copy, which never fires: go
                    // on from where the repeat ends.
                    let change = first_instant(first, second, |t| {
                        t.with_timezone(&tz).offset().fix() != first_offset
                    });
                    step.max(change.with_timezone(&first_offset).naive_local())
                }
                LocalResult::None => {
                    let end = gap_end(tz, wall)?;
                    if self.fixed_time && end > after {
                        return Some(end);
                    }
                    step.max(end.with_timezone(&tz).naive_local())
                }
            };
        }
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.text)
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// The first fire strictly after `after` (the module header says which
/// instants fire).
pub fn next_fire(schedule: &Schedule, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // The calendar repeats every 400 years: a date that matches comes
    // within that.
    let last_day = after
        .with_timezone(&tz)
        .date_naive()
        .checked_add_months(Months::new(401 * 12))
        .unwrap_or(NaiveDate::MAX);
    schedule.next_fire_until(tz, after, last_day)
}

/// The latest fire in `(after, until]`, if any. Walks at most `limit` fires;
/// past that it bisects, so a long outage of a per-second schedule costs a
/// few dozen searches.
pub fn latest_fire_between(
    schedule: &Schedule,
    tz: Tz,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: usize,
) -> Option<DateTime<Utc>> {
    // No offset change moves a wall-clock date by two days.
    let last_day = until
        .with_timezone(&tz)
        .date_naive()
        .checked_add_days(chrono::Days::new(2))
        .unwrap_or(NaiveDate::MAX);
    let within = |x| {
        schedule
            .next_fire_until(tz, x, last_day)
            .filter(|t| *t <= until)
    };
    let mut latest = None;
    let mut cursor = after;
    for _ in 0..limit {
        match within(cursor) {
            Some(t) => {
                latest = Some(t);
                cursor = t;
            }
            None => return latest,
        }
    }
    if within(cursor).is_none() {
        return latest;
    }
    // The fires are a fixed set, so "a fire in (x, until]" holds for x
    // before the last fire and not from it on. Bisect until (lo, hi] is a
    // second wide: the one fire in it is the last.
    let (mut lo, mut hi) = (cursor, until);
    while hi - lo > SECOND {
        let mid = lo + TimeDelta::seconds(((hi - lo).num_seconds() / 2).max(1));
        if within(mid).is_some() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    within(lo)
}

/// An IANA time zone name such as `Europe/Berlin` or `Etc/UTC`.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!(
            "unknown time zone {name:?}: expected an IANA name such as Europe/Berlin or Etc/UTC"
        )
    })
}

fn expand_macro(text: &str) -> Option<&'static str> {
    Some(match text.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => return None,
    })
}

fn mask<E>(values: std::ops::RangeInclusive<u32>, matches: impl Fn(u32) -> Result<bool, E>) -> u64 {
    values
        .filter(|v| matches(*v).unwrap_or(false))
        .fold(0, |mask, v| mask | 1 << v)
}

/// The least value at or above `from` whose bit is set.
fn next_bit(mask: u64, from: u32) -> Option<u32> {
    let rest = mask.checked_shr(from)?;
    (rest != 0).then(|| from + rest.trailing_zeros())
}

/// The first instant at which the wall-clock time is past `wall`, a time
/// that a gap skips. No offset is 26 hours from UTC, so a day and two
/// hours either side brackets it.
fn gap_end(tz: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    let at = wall.and_utc();
    let margin = TimeDelta::hours(26);
    Some(first_instant(
        at.checked_sub_signed(margin)?,
        at.checked_add_signed(margin)?,
        |t| t.with_timezone(&tz).naive_local() > wall,
    ))
}

/// The first whole second in `(lo, hi]` where `reached` holds, given whole
/// seconds `lo` where it does not and `hi` where it does, and that once it
/// holds it keeps holding.
fn first_instant(
    mut lo: DateTime<Utc>,
    mut hi: DateTime<Utc>,
    reached: impl Fn(DateTime<Utc>) -> bool,
) -> DateTime<Utc> {
    while hi - lo > SECOND {
        let mid = lo + TimeDelta::seconds((hi - lo).num_seconds() / 2);
        if reached(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::America::{New_York, Sao_Paulo};
    use chrono_tz::Australia::Lord_Howe;
    use chrono_tz::Europe::Berlin;
    use chrono_tz::Pacific::Chatham;

    /// The zones every daylight-saving rule is checked in: Sao Paulo's
    /// gap is at midnight (2018), Lord Howe moves by 30 minutes, Chatham's
    /// change is at 02:45.
    const ZONES: [Tz; 5] = [Berlin, New_York, Sao_Paulo, Lord_Howe, Chatham];

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn local(t: DateTime<Utc>, tz: Tz) -> String {
        t.with_timezone(&tz).format("%m-%d %H:%M%:z").to_string()
    }

    /// Every fire in `(from, to)`, in local time.
    fn fires(expr: &str, tz: Tz, from: &str, to: &str) -> Vec<String> {
        let s = Schedule::parse(expr).unwrap();
        let to = utc(to);
        let mut out = Vec::new();
        let mut cursor = utc(from);
        while let Some(t) = next_fire(&s, tz, cursor).filter(|t| *t < to) {
            out.push(local(t, tz));
            cursor = t;
        }
        out
    }

    /// Cases of (zone, expression, from, to, fires in local time).
    type Cases<'a> = [(Tz, &'a str, &'a str, &'a str, &'a [&'a str])];

    fn check(cases: &Cases<'_>) {
        for (tz, expr, from, to, want) in cases {
            assert_eq!(fires(expr, *tz, from, to), *want, "{expr} in {tz}");
        }
    }

    #[test]
    fn accepts_five_and_six_fields_and_macros() {
        for ok in [
            "0 3 * * *",
            "*/5 * * * *",
            "30 0 1 * * *",
            "0 0 1 1 MON-FRI",
            "0 0 29 2 *",
            "0 0 L * *",
            "0 0 * * 5L",
            "@hourly",
            "@daily",
            "@midnight",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
            "@Daily",
        ] {
            assert!(Schedule::parse(ok).is_ok(), "{ok} should parse");
        }
    }

    #[test]
    fn rejects_bad_expressions_with_the_expression_in_the_message() {
        for bad in [
            "",
            "* * * *",
            "0 0 0 1 1 * 2030",
            "61 * * * *",
            "@fortnightly",
            "@reboot",
            "a b c d e",
        ] {
            let err = Schedule::parse(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn expressions_that_never_fire_are_refused() {
        for never in [
            "0 0 30 2 *",
            "0 0 31 2 *",
            "0 0 31 4 *",
            "0 0 31 4,6,9,11 *",
            "0 0 30,31 2 *",
            "0 0 * * L",
            "0 0 31 2 */1",
            "0 0 */15 * 1#2",
            "0 , * * *",
        ] {
            let err = Schedule::parse(never).unwrap_err();
            assert!(err.contains(&format!("{never:?}")), "{err}");
            assert!(err.contains("never fires"), "{err}");
        }
    }

    #[test]
    fn rare_expressions_are_found_years_ahead() {
        // Every 29 February, and (both fields restricted, one starting with
        // `*`) only those that are Sundays: 2032, 2060, 2088.
        for tz in ZONES {
            let leap = Schedule::parse("0 0 29 2 *").unwrap();
            let t = next_fire(&leap, tz, utc("2026-03-01T00:00:00Z")).unwrap();
            assert_eq!(t.with_timezone(&tz).date_naive().to_string(), "2028-02-29");
            let sunday = Schedule::parse("0 0 29 2 */7").unwrap();
            let t = next_fire(&sunday, tz, utc("2026-03-01T00:00:00Z")).unwrap();
            assert_eq!(t.with_timezone(&tz).date_naive().to_string(), "2032-02-29");
            let t = next_fire(&sunday, tz, t).unwrap();
            assert_eq!(t.with_timezone(&tz).date_naive().to_string(), "2060-02-29");
        }
    }

    #[test]
    fn the_spring_forward_day_fires_each_fixed_time_once() {
        check(&[
            // The time before the gap must not fire again when it ends.
            (
                Berlin,
                "30 1 * * *",
                "2026-03-28T12:00:00Z",
                "2026-03-30T12:00:00Z",
                &["03-29 01:30+01:00", "03-30 01:30+02:00"],
            ),
            (
                Berlin,
                "0 4 * * *",
                "2026-03-28T12:00:00Z",
                "2026-03-30T12:00:00Z",
                &["03-29 04:00+02:00", "03-30 04:00+02:00"],
            ),
            (
                New_York,
                "30 1 * * *",
                "2026-03-07T12:00:00Z",
                "2026-03-09T12:00:00Z",
                &["03-08 01:30-05:00", "03-09 01:30-04:00"],
            ),
            // The gap is at midnight: no daily time may fire at its end.
            (
                Sao_Paulo,
                "0 12 * * *",
                "2018-11-03T12:00:00Z",
                "2018-11-05T16:00:00Z",
                &[
                    "11-03 12:00-03:00",
                    "11-04 12:00-02:00",
                    "11-05 12:00-02:00",
                ],
            ),
            (
                Sao_Paulo,
                "30 23 * * *",
                "2018-11-03T12:00:00Z",
                "2018-11-05T12:00:00Z",
                &["11-03 23:30-03:00", "11-04 23:30-02:00"],
            ),
            (
                Lord_Howe,
                "0 1 * * *",
                "2026-10-02T12:00:00Z",
                "2026-10-04T16:00:00Z",
                &[
                    "10-03 01:00+10:30",
                    "10-04 01:00+10:30",
                    "10-05 01:00+11:00",
                ],
            ),
            (
                Chatham,
                "0 2 * * *",
                "2026-09-25T12:00:00Z",
                "2026-09-27T12:00:00Z",
                &["09-26 02:00+12:45", "09-27 02:00+12:45"],
            ),
        ]);
    }

    #[test]
    fn a_fixed_time_in_the_gap_runs_once_when_the_gap_ends() {
        check(&[
            (
                Berlin,
                "30 2 * * *",
                "2026-03-28T12:00:00Z",
                "2026-03-30T12:00:00Z",
                &["03-29 03:00+02:00", "03-30 02:30+02:00"],
            ),
            // Two times in the gap are one fire, and so is a time in the gap
            // with the time the gap ends at.
            (
                Berlin,
                "0,30 2 * * *",
                "2026-03-28T12:00:00Z",
                "2026-03-30T12:00:00Z",
                &[
                    "03-29 03:00+02:00",
                    "03-30 02:00+02:00",
                    "03-30 02:30+02:00",
                ],
            ),
            (
                Berlin,
                "0 2,3 * * *",
                "2026-03-28T12:00:00Z",
                "2026-03-30T12:00:00Z",
                &[
                    "03-29 03:00+02:00",
                    "03-30 02:00+02:00",
                    "03-30 03:00+02:00",
                ],
            ),
            (
                New_York,
                "30 2 * * *",
                "2026-03-07T12:00:00Z",
                "2026-03-09T12:00:00Z",
                &["03-08 03:00-04:00", "03-09 02:30-04:00"],
            ),
            (
                Sao_Paulo,
                "30 0 * * *",
                "2018-11-03T12:00:00Z",
                "2018-11-05T12:00:00Z",
                &["11-04 01:00-02:00", "11-05 00:30-02:00"],
            ),
            (
                Sao_Paulo,
                "@daily",
                "2018-11-03T12:00:00Z",
                "2018-11-05T12:00:00Z",
                &["11-04 01:00-02:00", "11-05 00:00-02:00"],
            ),
            (
                Lord_Howe,
                "15 2 * * *",
                "2026-10-02T12:00:00Z",
                "2026-10-04T16:00:00Z",
                &[
                    "10-03 02:15+10:30",
                    "10-04 02:30+11:00",
                    "10-05 02:15+11:00",
                ],
            ),
            (
                Chatham,
                "0 3 * * *",
                "2026-09-25T12:00:00Z",
                "2026-09-27T15:00:00Z",
                &[
                    "09-26 03:00+12:45",
                    "09-27 03:45+13:45",
                    "09-28 03:00+13:45",
                ],
            ),
        ]);
    }

    #[test]
    fn lists_and_ranges_in_the_hour_are_fixed_time() {
        check(&[
            (
                Berlin,
                "30 2,14 * * *",
                "2026-03-28T23:00:00Z",
                "2026-03-29T22:00:00Z",
                &["03-29 03:00+02:00", "03-29 14:30+02:00"],
            ),
            (
                New_York,
                "30 1-2 * * *",
                "2026-03-08T05:00:00Z",
                "2026-03-09T05:00:00Z",
                &["03-08 01:30-05:00", "03-08 03:00-04:00"],
            ),
            (
                Sao_Paulo,
                "30 0,12 * * *",
                "2018-11-04T02:00:00Z",
                "2018-11-05T02:00:00Z",
                &["11-04 01:00-02:00", "11-04 12:30-02:00"],
            ),
            (
                Lord_Howe,
                "15 2,14 * * *",
                "2026-10-03T13:00:00Z",
                "2026-10-04T13:00:00Z",
                &["10-04 02:30+11:00", "10-04 14:15+11:00"],
            ),
            (
                Chatham,
                "0-30/30 3,15 * * *",
                "2026-09-26T11:00:00Z",
                "2026-09-27T11:00:00Z",
                &[
                    "09-27 03:45+13:45",
                    "09-27 15:00+13:45",
                    "09-27 15:30+13:45",
                ],
            ),
        ]);
    }

    #[test]
    fn interval_jobs_skip_times_that_do_not_exist() {
        check(&[
            (
                Berlin,
                "0 * * * *",
                "2026-03-29T00:30:00Z",
                "2026-03-29T02:30:00Z",
                &["03-29 03:00+02:00", "03-29 04:00+02:00"],
            ),
            (
                Berlin,
                "30 */2 * * *",
                "2026-03-28T23:00:00Z",
                "2026-03-29T03:00:00Z",
                &["03-29 00:30+01:00", "03-29 04:30+02:00"],
            ),
            (
                New_York,
                "*/30 * * * *",
                "2026-03-08T06:45:00Z",
                "2026-03-08T07:45:00Z",
                &["03-08 03:00-04:00", "03-08 03:30-04:00"],
            ),
            (
                Sao_Paulo,
                "@hourly",
                "2018-11-04T02:30:00Z",
                "2018-11-04T04:30:00Z",
                &["11-04 01:00-02:00", "11-04 02:00-02:00"],
            ),
            (
                Lord_Howe,
                "*/10 * * * *",
                "2026-10-03T15:25:00Z",
                "2026-10-03T15:45:00Z",
                &["10-04 02:30+11:00", "10-04 02:40+11:00"],
            ),
            (
                Chatham,
                "*/30 * * * *",
                "2026-09-26T13:50:00Z",
                "2026-09-26T14:35:00Z",
                &["09-27 04:00+13:45"],
            ),
        ]);
    }

    #[test]
    fn the_fall_back_day_fires_each_wall_time_once_in_its_first_copy() {
        check(&[
            (
                Berlin,
                "30 2 * * *",
                "2026-10-23T12:00:00Z",
                "2026-10-27T00:00:00Z",
                &[
                    "10-24 02:30+02:00",
                    "10-25 02:30+02:00",
                    "10-26 02:30+01:00",
                ],
            ),
            (
                Berlin,
                "0 * * * *",
                "2026-10-24T23:30:00Z",
                "2026-10-25T02:30:00Z",
                &["10-25 02:00+02:00", "10-25 03:00+01:00"],
            ),
            (
                Berlin,
                "*/30 * * * *",
                "2026-10-24T23:45:00Z",
                "2026-10-25T02:15:00Z",
                &[
                    "10-25 02:00+02:00",
                    "10-25 02:30+02:00",
                    "10-25 03:00+01:00",
                ],
            ),
            (
                New_York,
                "30 1 * * *",
                "2026-10-31T12:00:00Z",
                "2026-11-02T12:00:00Z",
                &["11-01 01:30-04:00", "11-02 01:30-05:00"],
            ),
            (
                New_York,
                "*/30 * * * *",
                "2026-11-01T04:45:00Z",
                "2026-11-01T07:15:00Z",
                &[
                    "11-01 01:00-04:00",
                    "11-01 01:30-04:00",
                    "11-01 02:00-05:00",
                ],
            ),
            // The repeated hour is 23:00 to midnight, before the change of
            // date.
            (
                Sao_Paulo,
                "30 23 * * *",
                "2018-02-16T12:00:00Z",
                "2018-02-18T12:00:00Z",
                &["02-16 23:30-02:00", "02-17 23:30-02:00"],
            ),
            (
                Sao_Paulo,
                "*/30 * * * *",
                "2018-02-18T00:45:00Z",
                "2018-02-18T03:15:00Z",
                &[
                    "02-17 23:00-02:00",
                    "02-17 23:30-02:00",
                    "02-18 00:00-03:00",
                ],
            ),
            (
                Lord_Howe,
                "45 1 * * *",
                "2026-04-03T12:00:00Z",
                "2026-04-05T12:00:00Z",
                &["04-04 01:45+11:00", "04-05 01:45+11:00"],
            ),
            (
                Lord_Howe,
                "*/15 * * * *",
                "2026-04-04T14:20:00Z",
                "2026-04-04T15:35:00Z",
                &[
                    "04-05 01:30+11:00",
                    "04-05 01:45+11:00",
                    "04-05 02:00+10:30",
                ],
            ),
            (
                Chatham,
                "0 3 * * *",
                "2026-04-03T12:00:00Z",
                "2026-04-05T12:00:00Z",
                &["04-04 03:00+13:45", "04-05 03:00+13:45"],
            ),
            (
                Chatham,
                "*/30 * * * *",
                "2026-04-04T13:10:00Z",
                "2026-04-04T15:20:00Z",
                &[
                    "04-05 03:00+13:45",
                    "04-05 03:30+13:45",
                    "04-05 04:00+12:45",
                ],
            ),
        ]);
    }

    /// An instant in the second copy of each zone's repeated hour, with a
    /// fixed time in that hour.
    const SECOND_COPIES: [(Tz, &str, &str); 5] = [
        (Berlin, "2026-10-25T01:05:00Z", "30 2 * * *"),
        (New_York, "2026-11-01T06:05:00Z", "30 1 * * *"),
        (Sao_Paulo, "2018-02-18T02:05:00Z", "30 23 * * *"),
        (Lord_Howe, "2026-04-04T15:05:00Z", "45 1 * * *"),
        (Chatham, "2026-04-04T14:05:00Z", "0 3 * * *"),
    ];

    #[test]
    fn from_the_second_copy_of_a_repeated_hour_the_next_fire_is_after_it() {
        let want = [
            ("10-25 03:00+01:00", "10-26 02:30+01:00"),
            ("11-01 02:00-05:00", "11-02 01:30-05:00"),
            ("02-18 00:00-03:00", "02-18 23:30-03:00"),
            ("04-05 02:00+10:30", "04-06 01:45+10:30"),
            ("04-05 03:45+12:45", "04-06 03:00+12:45"),
        ];
        let quarterly = Schedule::parse("*/15 * * * *").unwrap();
        for ((tz, after, fixed), (interval_next, fixed_next)) in SECOND_COPIES.into_iter().zip(want)
        {
            let after = utc(after);
            let next = next_fire(&quarterly, tz, after).unwrap();
            assert_eq!(local(next, tz), interval_next, "{tz}");
            let fixed = Schedule::parse(fixed).unwrap();
            let next = next_fire(&fixed, tz, after).unwrap();
            assert_eq!(local(next, tz), fixed_next, "{tz}");
        }
    }

    /// Each zone's offset changes, spring and autumn.
    const CHANGES: [(&str, Tz); 10] = [
        ("2026-03-29T01:00:00Z", Berlin),
        ("2026-10-25T01:00:00Z", Berlin),
        ("2026-03-08T07:00:00Z", New_York),
        ("2026-11-01T06:00:00Z", New_York),
        ("2018-02-18T02:00:00Z", Sao_Paulo),
        ("2018-11-04T03:00:00Z", Sao_Paulo),
        ("2026-04-04T15:00:00Z", Lord_Howe),
        ("2026-10-03T15:30:00Z", Lord_Howe),
        ("2026-04-04T14:00:00Z", Chatham),
        ("2026-09-26T14:00:00Z", Chatham),
    ];

    #[test]
    fn the_next_fire_is_strictly_after_around_every_change() {
        let schedules = [
            "* * * * *",
            "*/15 * * * *",
            "0 * * * *",
            "30 * * * *",
            "0 0-4 * * *",
            "30 1,2,3 * * *",
            "*/20 * * * * *",
        ]
        .map(|e| Schedule::parse(e).unwrap());
        for (change, tz) in CHANGES {
            let change = utc(change);
            let mut t = change - TimeDelta::hours(3);
            while t < change + TimeDelta::hours(3) {
                for s in &schedules {
                    let next = next_fire(s, tz, t).unwrap();
                    assert!(next > t, "{s:?} in {tz} after {t}: {next}");
                }
                t += TimeDelta::seconds(7 * 60 + 13);
            }
        }
    }

    #[test]
    fn day_of_month_and_day_of_week_follow_vixie_cron() {
        let dates = |expr: &str, tz: Tz| -> Vec<String> {
            let s = Schedule::parse(expr).unwrap();
            let start = tz.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
            let end = tz.with_ymd_and_hms(2026, 9, 1, 0, 0, 0).unwrap();
            let mut out = Vec::new();
            let mut cursor = start.with_timezone(&Utc) - SECOND;
            while let Some(t) = next_fire(&s, tz, cursor).filter(|t| *t < end) {
                out.push(t.with_timezone(&tz).format("%m-%d").to_string());
                cursor = t;
            }
            out
        };
        for tz in ZONES {
            // Day of month starts with `*`: both must match.
            assert_eq!(
                dates("0 0 */2 * 1", tz),
                [
                    "06-01", "06-15", "06-29", "07-13", "07-27", "08-03", "08-17", "08-31"
                ],
                "{tz}"
            );
            // Day of week starts with `*`: both must match (Sun, Tue, Thu, Sat).
            assert_eq!(dates("0 0 1 * */2", tz), ["08-01"], "{tz}");
            // Neither starts with `*`: either will do.
            assert_eq!(
                dates("0 0 1,15 * MON", tz),
                [
                    "06-01", "06-08", "06-15", "06-22", "06-29", "07-01", "07-06", "07-13",
                    "07-15", "07-20", "07-27", "08-01", "08-03", "08-10", "08-15", "08-17",
                    "08-24", "08-31"
                ],
                "{tz}"
            );
            assert_eq!(dates("0 0 1 * *", tz), ["06-01", "07-01", "08-01"], "{tz}");
            assert_eq!(
                dates("0 0 * 7 1", tz),
                ["07-06", "07-13", "07-20", "07-27"],
                "{tz}"
            );
        }
    }

    #[test]
    fn macros_fire_as_their_expansions() {
        let pairs = [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
        ];
        let starts = [
            "2018-02-17T12:00:00Z",
            "2018-11-03T12:00:00Z",
            "2026-03-28T12:00:00Z",
            "2026-10-03T12:00:00Z",
        ];
        for tz in ZONES {
            for (name, expansion) in pairs {
                let (a, b) = (
                    Schedule::parse(name).unwrap(),
                    Schedule::parse(expansion).unwrap(),
                );
                assert_eq!(a.as_str(), name);
                for start in starts {
                    let mut t = utc(start);
                    for _ in 0..5 {
                        let next = next_fire(&a, tz, t);
                        assert_eq!(next, next_fire(&b, tz, t), "{name} in {tz} after {t}");
                        t = next.unwrap();
                    }
                }
            }
        }
        let daily = Schedule::parse("@midnight").unwrap();
        assert_eq!(
            next_fire(&daily, Berlin, utc("2026-01-01T12:00:00Z")),
            Some(utc("2026-01-01T23:00:00Z"))
        );
    }

    #[test]
    fn six_fields_fire_on_seconds() {
        let s = Schedule::parse("*/10 * * * * *").unwrap();
        let tz: Tz = "Etc/UTC".parse().unwrap();
        assert_eq!(
            next_fire(&s, tz, utc("2026-01-01T00:00:01Z")),
            Some(utc("2026-01-01T00:00:10Z"))
        );
        let s = Schedule::parse("*/15 * * * * *").unwrap();
        assert_eq!(
            next_fire(&s, Berlin, utc("2026-01-01T00:00:00Z")),
            Some(utc("2026-01-01T00:00:15Z"))
        );
    }

    #[test]
    fn fires_fall_on_whole_seconds() {
        let s = Schedule::parse("* * * * * *").unwrap();
        let after = utc("2026-01-01T00:00:07.290Z");
        assert_eq!(
            next_fire(&s, Berlin, after),
            Some(utc("2026-01-01T00:00:08Z"))
        );
    }

    #[test]
    fn latest_missed_fire() {
        let s = Schedule::parse("0 * * * *").unwrap();
        let tz: Tz = "Etc/UTC".parse().unwrap();
        let last = utc("2026-01-01T00:00:00Z");
        assert_eq!(
            latest_fire_between(&s, tz, last, utc("2026-01-01T05:30:00Z"), 1000),
            Some(utc("2026-01-01T05:00:00Z"))
        );
        assert_eq!(
            latest_fire_between(&s, tz, last, utc("2026-01-01T00:59:00Z"), 1000),
            None
        );
        let every_second = Schedule::parse("* * * * * *").unwrap();
        assert_eq!(
            latest_fire_between(&every_second, tz, last, utc("2026-01-09T00:00:00Z"), 100),
            Some(utc("2026-01-09T00:00:00Z"))
        );
    }

    #[test]
    fn past_the_walk_limit_the_latest_fire_is_bisected_exactly() {
        for (change, tz) in CHANGES {
            let until = utc(change) + TimeDelta::minutes(30) + TimeDelta::milliseconds(500);
            // Hours of a per-second schedule, months of the others.
            for (expr, span) in [
                ("*/7 * * * * *", TimeDelta::hours(3)),
                ("0 * * * *", TimeDelta::days(200)),
                ("30 2 * * *", TimeDelta::days(200)),
                ("0 0 */2 * 1", TimeDelta::days(200)),
            ] {
                let s = Schedule::parse(expr).unwrap();
                let after = until - span;
                let walked = latest_fire_between(&s, tz, after, until, usize::MAX);
                let bisected = latest_fire_between(&s, tz, after, until, 3);
                assert!(walked.is_some());
                assert_eq!(bisected, walked, "{expr} in {tz} until {until}");
            }
        }
    }

    #[test]
    fn a_restart_in_the_second_copy_of_a_repeated_hour_has_missed_nothing() {
        let quarterly = Schedule::parse("*/15 * * * *").unwrap();
        for (tz, second_copy, fixed) in SECOND_COPIES {
            // Five minutes into the second copy, the last fire was in the
            // first: the second copy's first quarter does not count.
            let restart = utc(second_copy);
            for s in [quarterly.clone(), Schedule::parse(fixed).unwrap()] {
                let day_before = restart - TimeDelta::days(1);
                let last = latest_fire_between(&s, tz, day_before, restart, 10_000).unwrap();
                assert!(
                    last < restart - TimeDelta::minutes(5),
                    "{s:?} in {tz}: {last}"
                );
                assert_eq!(latest_fire_between(&s, tz, last, restart, 10_000), None);
            }
        }
    }

    /// Random expressions, zones and instants (most near an offset change):
    /// the fires found one after another are exactly the ones the rules in
    /// the module header define, found minute by minute over local time;
    /// each is after the one before; no two share a wall-clock minute (a
    /// second, with a seconds field); the bisected latest fire is the last
    /// one walked; and a search started anywhere finds the same next fire.
    mod properties {
        use super::*;
        use chrono::Days;
        use proptest::prelude::*;
        use proptest::sample::select;
        use std::collections::BTreeSet;
        use std::sync::LazyLock;

        const ZONES: [Tz; 6] = [
            Berlin,
            New_York,
            Sao_Paulo,
            Lord_Howe,
            Chatham,
            chrono_tz::UTC,
        ];

        /// Each zone's offset changes from 2017 to 2027.
        static CHANGES: LazyLock<Vec<Vec<DateTime<Utc>>>> =
            LazyLock::new(|| ZONES.iter().map(|tz| changes(*tz)).collect());

        fn changes(tz: Tz) -> Vec<DateTime<Utc>> {
            let offset = |t: DateTime<Utc>| t.with_timezone(&tz).offset().fix();
            let mut out = Vec::new();
            let mut t = utc("2017-01-01T00:00:00Z");
            while t < utc("2028-01-01T00:00:00Z") {
                let next = t + TimeDelta::hours(6);
                if offset(next) != offset(t) {
                    out.push(first_instant(t, next, |x| offset(x) != offset(t)));
                }
                t = next;
            }
            out
        }

        /// A field of values `lo..=hi`, leaning towards `hot` ones (where
        /// the clocks change).
        fn field(lo: u32, hi: u32, hot: Vec<u32>) -> BoxedStrategy<String> {
            prop_oneof![
                3 => Just("*".to_owned()),
                1 => (2..=(hi - lo).div_ceil(2)).prop_map(|step| format!("*/{step}")),
                1 => (lo..=hi).prop_map(|v| v.to_string()),
                2 => select(hot.clone()).prop_map(|v| v.to_string()),
                1 => (lo..=hi, select(hot)).prop_map(|(a, b)| format!("{a},{b}")),
                1 => (lo..=hi, lo..=hi, 1..=4u32).prop_map(|(a, b, step)| {
                    format!("{}-{}/{step}", a.min(b), a.max(b))
                }),
            ]
            .boxed()
        }

        fn expression() -> impl Strategy<Value = String> {
            let seconds = prop_oneof![
                3 => Just(None),
                1 => select(vec!["0", "0,30", "*/20", "10-50/20"]).prop_map(Some),
            ];
            let days = prop_oneof![
                4 => Just("*".to_owned()),
                1 => select(vec!["*/2", "L", "1,15", "10-20"]).prop_map(str::to_owned),
                1 => (1..=31u32).prop_map(|d| d.to_string()),
            ];
            let months = prop_oneof![
                4 => Just("*".to_owned()),
                1 => select(vec!["2", "3,4", "9-11", "*/2"]).prop_map(str::to_owned),
            ];
            let weekdays = prop_oneof![
                4 => Just("*".to_owned()),
                1 => select(vec!["0", "1-5", "*/2", "5L", "1#1", "SAT,SUN"]).prop_map(str::to_owned),
            ];
            (
                seconds,
                field(0, 59, vec![0, 15, 30, 45]),
                field(0, 23, vec![0, 1, 2, 3, 23]),
                days,
                months,
                weekdays,
            )
                .prop_map(|(s, min, hour, dom, month, dow)| {
                    let fields = format!("{min} {hour} {dom} {month} {dow}");
                    match s {
                        Some(s) => format!("{s} {fields}"),
                        None => fields,
                    }
                })
        }

        /// A zone and an instant: mostly within two hours or a day and a
        /// half of one of its offset changes, otherwise anywhere in 2017 to
        /// 2027.
        fn zone_and_instant() -> impl Strategy<Value = (Tz, DateTime<Utc>)> {
            (
                0..ZONES.len(),
                any::<prop::sample::Index>(),
                prop::bool::weighted(0.75),
                prop_oneof![-2 * 3600..2 * 3600i64, -36 * 3600..36 * 3600i64],
                0..10 * 365 * 86_400i64,
                0..1000i64,
            )
                .prop_map(|(zone, pick, near, around, anywhere, millis)| {
                    let changes = &CHANGES[zone];
                    let at = if near && !changes.is_empty() {
                        changes[pick.index(changes.len())] + TimeDelta::seconds(around)
                    } else {
                        utc("2017-06-01T00:00:00Z") + TimeDelta::seconds(anywhere)
                    };
                    (ZONES[zone], at + TimeDelta::milliseconds(millis))
                })
        }

        /// The fires in `(after, until]` by the rules as stated, occurrence
        /// by occurrence.
        fn by_definition(
            s: &Schedule,
            tz: Tz,
            after: DateTime<Utc>,
            until: DateTime<Utc>,
        ) -> BTreeSet<DateTime<Utc>> {
            let bits = |mask: u64, n: u32| (0..n).filter(move |v| mask & 1 << v != 0);
            let first_day = after.with_timezone(&tz).date_naive() - Days::new(2);
            let last_day = until.with_timezone(&tz).date_naive() + Days::new(2);
            let mut out = BTreeSet::new();
            for day in first_day.iter_days().take_while(|d| *d <= last_day) {
                if !s.day_matches(day) {
                    continue;
                }
                for h in bits(s.hours, 24) {
                    for m in bits(s.minutes, 60) {
                        for sec in bits(s.seconds, 60) {
                            let wall = day.and_hms_opt(h, m, sec).unwrap();
                            let fire = match tz.from_local_datetime(&wall) {
                                LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
                                LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
                                LocalResult::None if s.fixed_time => {
                                    // The first minute past the gap (the
                                    // changes are on whole minutes).
                                    let mut t =
                                        (day - Days::new(1)).and_time(NaiveTime::MIN).and_utc();
                                    while t.with_timezone(&tz).naive_local() <= wall {
                                        t += TimeDelta::minutes(1);
                                    }
                                    Some(t)
                                }
                                LocalResult::None => None,
                            };
                            out.extend(fire.filter(|t| *t > after && *t <= until));
                        }
                    }
                }
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn fires_are_the_defined_ones_in_order(
                expr in expression(),
                (tz, after) in zone_and_instant(),
            ) {
                let parsed = Schedule::parse(&expr);
                prop_assume!(parsed.is_ok());
                let s = parsed.unwrap();
                let with_seconds = expr.split_whitespace().count() == 6;

                let mut until = after + TimeDelta::days(2);
                let mut walked = Vec::new();
                let mut cursor = after;
                while let Some(t) = next_fire(&s, tz, cursor).filter(|t| *t <= until) {
                    prop_assert!(t > cursor, "{t} after {cursor}");
                    walked.push(t);
                    cursor = t;
                    if walked.len() == 300 {
                        until = t;
                        break;
                    }
                }
                let defined: Vec<_> = by_definition(&s, tz, after, until).into_iter().collect();
                prop_assert_eq!(&walked, &defined);

                let walls: BTreeSet<NaiveDateTime> = walked
                    .iter()
                    .map(|t| {
                        let wall = t.with_timezone(&tz).naive_local();
                        if with_seconds { wall } else { wall.with_second(0).unwrap() }
                    })
                    .collect();
                prop_assert_eq!(walls.len(), walked.len());

                prop_assert_eq!(latest_fire_between(&s, tz, after, until, 2), walked.last().copied());

                // A search from anywhere (a restart, a reload) finds the same fires.
                let mut from = after;
                while from < until {
                    let want = walked.get(walked.partition_point(|t| *t <= from)).copied();
                    let found = next_fire(&s, tz, from).filter(|t| *t <= until);
                    prop_assert_eq!(found, want, "from {}", from);
                    from += TimeDelta::seconds(7 * 60 + 13);
                }
            }
        }
    }

    #[test]
    fn time_zones_are_iana_names() {
        assert!(parse_timezone("Europe/Berlin").is_ok());
        assert!(parse_timezone("Etc/UTC").is_ok());
        assert!(
            parse_timezone("Mars/Olympus")
                .unwrap_err()
                .contains("Mars/Olympus")
        );
    }
}
