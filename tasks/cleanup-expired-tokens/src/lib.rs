//! `cleanup-expired-tokens`: deletes access tokens that expired (or were
//! revoked) longer ago than a grace period, and OAuth sessions abandoned
//! before completing.
//!
//! `[config]`: `tokens_table` (default `access_tokens`), `sessions_table`
//! (default `oauth_sessions`), `grace` (default `1 day`: how long expired
//! tokens stay for auditing), `abandoned_after` (default `1 day`: sessions
//! not completed this long after creation), `batch_size` (default 10000).
//! Grants: both tables need `delete`.

use housekeeper_sdk::partition::{self, Age};
use housekeeper_sdk::sql::{self, Dialect, Value, quote_ident};
use housekeeper_sdk::{Context, Error, Info, Report, Task, config, identifier};

struct CleanupExpiredTokens;

fn age(key: &str, default: &str) -> Result<Value, Error> {
    let text = config::string_or(key, default)?;
    let age = Age::parse(&text).map_err(|e| Error::InvalidConfig(format!("`{key}`: {e}")))?;
    Ok(Value::Timestamp(partition::to_millis(
        age.before(partition::now()),
    )))
}

/// Deletes rows of `table` matching `condition` (with `$1` the cutoff) in
/// batches; in a dry-run, once, since the host rolls it back.
fn delete(
    table: &str,
    condition: &str,
    cutoff: &Value,
    batch: u64,
    dry_run: bool,
) -> Result<u64, Error> {
    let postgres = sql::dialect()? == Dialect::Postgres;
    let condition = if postgres {
        condition.to_owned()
    } else {
        condition.replace("$1", "?1")
    };
    if dry_run {
        return Ok(sql::execute(
            &format!("DELETE FROM {table} WHERE {condition}"),
            &[cutoff.clone()],
        )?);
    }
    let statement = if postgres {
        format!(
            "DELETE FROM {table} WHERE ctid = ANY (ARRAY (SELECT ctid FROM {table} WHERE {condition} LIMIT $2))"
        )
    } else {
        format!(
            "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {condition} LIMIT ?2)"
        )
    };
    let (n, _) = sql::in_batches(
        batch,
        || sql::execute(&statement, &[cutoff.clone(), Value::Integer(batch as i64)]),
        |_| true,
    )?;
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
        let tokens = quote_ident(&identifier(
            "tokens_table",
            &config::string_or("tokens_table", "access_tokens")?,
        )?);
        let sessions = quote_ident(&identifier(
            "sessions_table",
            &config::string_or("sessions_table", "oauth_sessions")?,
        )?);
        let grace = age("grace", "1 day")?;
        let abandoned = age("abandoned_after", "1 day")?;
        let batch = config::u64("batch_size")?.unwrap_or(10_000).max(1);

        let tokens_deleted = delete(
            &tokens,
            "expires_at < $1 OR (revoked_at IS NOT NULL AND revoked_at < $1)",
            &grace,
            batch,
            ctx.dry_run,
        )?;
        let sessions_deleted = delete(
            &sessions,
            "completed_at IS NULL AND created_at < $1",
            &abandoned,
            batch,
            ctx.dry_run,
        )?;
        let verb = if ctx.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        Ok(Report::new(format!(
            "{verb} {tokens_deleted} expired tokens and {sessions_deleted} abandoned OAuth sessions"
        ))
        .metric("tokens_deleted", tokens_deleted as f64)
        .metric("sessions_deleted", sessions_deleted as f64))
    }
}

housekeeper_sdk::export_task!(CleanupExpiredTokens);
