//! When a schedule fires next, for the schedule loops and the CLI. The
//! search and its daylight-saving rules live with the cron parsing in
//! [`crate::schedule`], so that one module owns cron and time zones.

pub use crate::schedule::{latest_fire_between, next_fire};
