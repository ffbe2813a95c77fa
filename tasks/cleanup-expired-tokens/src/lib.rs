//! `cleanup-expired-tokens`: deletes access tokens that expired (or were
//! revoked) longer ago than a grace period, and OAuth sessions abandoned
//! before completing.
//!
//! `[config]`: `tokens_table` (default `access_tokens`), `sessions_table`
//! (default `oauth_sessions`), `grace` (default `1 day`: how long expired
//! tokens stay for auditing), `abandoned_after` (default `1 day`: sessions
//! not completed this long after creation), `batch_size` (default 10000).
//! Grants: both tables need `delete`.

use housekeeper_sdk::sql::{self, Ident, Value};
use housekeeper_sdk::time::Age;
use housekeeper_sdk::{Context, Error, Info, Report, Task, config};

struct CleanupExpiredTokens;

/// Deletes rows of `table` matching `condition` (with `$1` the cutoff) in
/// batches; in a dry-run, once, since the host rolls it back.
fn delete(
    table: &Ident,
    condition: &str,
    cutoff: Value,
    batch: u64,
    dry_run: bool,
) -> Result<u64, Error> {
    let cutoff = [cutoff];
    if dry_run {
        return Ok(sql::execute(
            &format!("DELETE FROM {table} WHERE {condition}"),
            &cutoff,
        )?);
    }
    let (n, _) = sql::delete_in_batches(table, condition, &cutoff, batch, |_| true)?;
    Ok(n)
}

impl Task for CleanupExpiredTokens {
    fn describe() -> Info {
        Info::new(
            "cleanup-expired-tokens",
            "Deletes expired access tokens and abandoned OAuth sessions",
        )
        .schedule("30 2 * * *")
        .run_on_startup(true)
        .wants("sql:access_tokens:delete")
        .wants("sql:oauth_sessions:delete")
    }

    fn run(ctx: &Context) -> Result<Report, Error> {
        let tokens = config::ident_or("tokens_table", "access_tokens")?;
        let sessions = config::ident_or("sessions_table", "oauth_sessions")?;
        let grace = Value::Timestamp(config::age_or("grace", Age::Days(1))?.ago());
        let abandoned = Value::Timestamp(config::age_or("abandoned_after", Age::Days(1))?.ago());
        let batch = config::u64("batch_size")?.unwrap_or(10_000).max(1);

        let tokens_deleted = delete(
            &tokens,
            "expires_at < $1 OR (revoked_at IS NOT NULL AND revoked_at < $1)",
            grace,
            batch,
            ctx.dry_run,
        )?;
        let sessions_deleted = delete(
            &sessions,
            "completed_at IS NULL AND created_at < $1",
            abandoned,
            batch,
            ctx.dry_run,
        )?;
        Ok(Report::new(format!(
            "{} {tokens_deleted} expired tokens and {sessions_deleted} abandoned OAuth sessions",
            ctx.verb("deleted", "would delete")
        ))
        .metric("tokens_deleted", tokens_deleted)
        .metric("sessions_deleted", sessions_deleted))
    }
}

housekeeper_sdk::export_task!(CleanupExpiredTokens);
