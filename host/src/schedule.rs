//! Cron expressions and time zones: parsing and validation.
//!
//! Accepted: 5 fields (minute precision), 6 fields (leading seconds), and the
//! macros `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//! `@midnight`, `@hourly`. Parsing is croner's; days-of-month and
//! days-of-week combine with OR, as in Vixie cron.

use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use std::fmt;

/// A validated cron expression, kept with the text it came from.
#[derive(Clone)]
pub struct Schedule {
    text: String,
    cron: Cron,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let fields = trimmed.split_whitespace().count();
        if !trimmed.starts_with('@') && !(fields == 5 || fields == 6) {
            return Err(format!(
                "invalid cron expression {text:?}: expected 5 fields (minute hour day month weekday), \
                 6 with leading seconds, or a macro such as @daily; found {fields}"
            ));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let cron = parser
            .parse(trimmed)
            .map_err(|e| format!("invalid cron expression {text:?}: {e}"))?;
        Ok(Schedule {
            text: trimmed.to_owned(),
            cron,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn cron(&self) -> &Cron {
        &self.cron
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

/// An IANA time zone name such as `Europe/Berlin` or `Etc/UTC`.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!(
            "unknown time zone {name:?}: expected an IANA name such as Europe/Berlin or Etc/UTC"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn accepts_five_and_six_fields_and_macros() {
        for ok in [
            "0 3 * * *",
            "*/5 * * * *",
            "30 0 1 * * *",
            "0 0 1 1 MON-FRI",
            "@hourly",
            "@daily",
            "@weekly",
            "@monthly",
            "@yearly",
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
            "a b c d e",
        ] {
            let err = Schedule::parse(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn six_fields_fire_on_seconds() {
        let s = Schedule::parse("*/10 * * * * *").unwrap();
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 1).unwrap();
        let next = s.cron().find_next_occurrence(&start, false).unwrap();
        assert_eq!(next, Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 10).unwrap());
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
