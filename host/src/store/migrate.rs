//! Applying the PostgreSQL migrations: taking over the reference service's
//! tables (`adopt`) and every migration not yet recorded, in one
//! transaction under a transaction-scoped advisory lock.
//!
//! sqlx's own migrator takes a session-level lock and runs statements
//! outside transactions. Behind a pooler in transaction mode its lock is
//! taken on one server session and released on another (that is, never,
//! until the pooler closes the session), and the next replica to start
//! waits for it for good. Here the lock ends with the transaction, whoever
//! commits or rolls back. The bookkeeping is sqlx's own (`_sqlx_migrations`,
//! the same columns, checksums and errors), so databases migrated either
//! way are the same, and the lock is on the key sqlx's migrator uses, so a
//! process of an earlier version starting at the same time waits for this
//! one, and this one for it.

use super::adopt::{self, AdoptOptions, Finding};
use super::{query, query_scalar};
use anyhow::Context as _;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnection, PgPool};
use std::collections::HashMap;
use std::time::Instant;

/// Takes over the reference service's tables as `adoption` says, if they
/// are there, then applies the migrations of `migrator` that are not
/// recorded; all or nothing. Says what it found of the reference tables.
pub(super) async fn run(
    pool: &PgPool,
    migrator: &Migrator,
    adoption: &AdoptOptions,
) -> anyhow::Result<Finding> {
    let mut tx = pool.begin().await.context("cannot connect to PostgreSQL")?;
    let done = async {
        lock(&mut tx)
            .await
            .context("cannot take the migration lock")?;
        let finding = adopt::adopt_in(&mut tx, adoption).await?;
        apply(&mut tx, migrator)
            .await
            .context("cannot apply PostgreSQL migrations")?;
        anyhow::Ok(finding)
    }
    .await;
    match done {
        Ok(finding) => {
            tx.commit()
                .await
                .context("cannot apply PostgreSQL migrations")?;
            Ok(finding)
        }
        Err(e) => {
            // Rolled back before returning, not when the connection is next
            // used: the locks taken (the reference tables, the migration
            // lock) are released by the time the caller sees the error.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// Takes the migration lock until the end of the transaction `tx` is in.
pub(super) async fn lock(tx: &mut PgConnection) -> sqlx::Result<()> {
    let database: String = query_scalar("SELECT current_database()")
        .fetch_one(&mut *tx)
        .await?;
    query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_id(&database))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The advisory lock key of sqlx's migrator for `database`.
fn lock_id(database: &str) -> i64 {
    0x3d32_ad9e * i64::from(crc32(database.as_bytes()))
}

/// CRC-32 (ISO HDLC, as zlib computes it), which sqlx's key is made of.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// sqlx's table, as its migrator creates it: sqlx 0.8's own definition
/// (sqlx-postgres, `ensure_migrations_table`).
pub(super) const SQLX_MIGRATIONS_TABLE: &str = "
CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
    success BOOLEAN NOT NULL,
    checksum BYTEA NOT NULL,
    execution_time BIGINT NOT NULL
)";

/// What `Migrator::run` does on one connection, in the transaction `tx`
/// is in (without its lock, which the transaction holds).
async fn apply(tx: &mut PgConnection, migrator: &Migrator) -> Result<(), MigrateError> {
    sqlx::raw_sql(SQLX_MIGRATIONS_TABLE)
        .execute(&mut *tx)
        .await?;
    let dirty: Option<i64> = query_scalar(
        "SELECT version FROM _sqlx_migrations WHERE success = false ORDER BY version LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(version) = dirty {
        return Err(MigrateError::Dirty(version));
    }
    let rows: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations ORDER BY version")
            .persistent(false)
            .fetch_all(&mut *tx)
            .await?;
    let applied: HashMap<i64, Vec<u8>> = rows.into_iter().collect();
    if !migrator.ignore_missing
        && let Some(&version) = applied
            .keys()
            .find(|v| !migrator.iter().any(|m| m.version == **v))
    {
        return Err(MigrateError::VersionMissing(version));
    }
    for migration in migrator.iter() {
        if migration.migration_type.is_down_migration() {
            continue;
        }
        if let Some(checksum) = applied.get(&migration.version) {
            if *checksum != *migration.checksum {
                return Err(MigrateError::VersionMismatch(migration.version));
            }
            continue;
        }
        let started = Instant::now();
        sqlx::raw_sql(&migration.sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| MigrateError::ExecuteMigration(e, migration.version))?;
        query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ($1, $2, TRUE, $3, $4)",
        )
        .bind(migration.version)
        .bind(&*migration.description)
        .bind(&*migration.checksum)
        .bind(started.elapsed().as_nanos() as i64)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_key_is_sqlx_migrators() {
        // The CRC-32 check value, and sqlx's key for `postgres` (what
        // `generate_lock_id` in sqlx-postgres computes).
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(lock_id("postgres"), 0x3d32_ad9e * 0x156a_8775_i64);
    }
}
