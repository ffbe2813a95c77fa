//! The replicas' rows in `housekeeper_replicas`: claiming a name at start
//! (unless another live process reports under it), the heartbeat, the
//! list of live replicas, and leaving at shutdown.

use super::lease::{ReplicaRow, before};
use super::{Backend, Store, query, query_scalar};
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::Row;
use std::time::Duration;

impl Store {
    /// Makes this replica's name this process's, in one statement: its row
    /// is written with `started_at` unless another process reported under
    /// the name within `stale` (by the database's clock). Of processes of
    /// one name starting together, one gets it. Always `true` on SQLite,
    /// where the lock `serve` holds on the database keeps a second process
    /// out.
    pub async fn claim_name(
        &self,
        started_at: DateTime<Utc>,
        version: &str,
        stale: Duration,
    ) -> anyhow::Result<bool> {
        if let Backend::Sqlite(_) = self.backend {
            return Ok(true);
        }
        let now = self.db_now().await?;
        let cutoff = now - chrono::Duration::from_std(stale).unwrap_or(chrono::Duration::MAX);
        let sql = "INSERT INTO housekeeper_replicas (replica, started_at, heartbeat_at, clock_offset_ms, version) \
                   VALUES ($1, $2, $3, 0, $4) ON CONFLICT (replica) DO UPDATE SET \
                   started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, \
                   clock_offset_ms = 0, version = excluded.version \
                   WHERE housekeeper_replicas.heartbeat_at < $5 \
                   OR housekeeper_replicas.started_at = excluded.started_at \
                   RETURNING replica";
        let claimed: Option<String> = in_tx!(self, conn => query_scalar(sql)
            .bind(&self.replica)
            .bind(started_at)
            .bind(now)
            .bind(version)
            .bind(cutoff)
            .fetch_optional(&mut *conn)
            .await?);
        Ok(claimed.is_some())
    }

    /// Takes this replica off the list of live ones (at shutdown, so that
    /// its successor under the same name need not wait).
    pub async fn replica_leave(&self) -> anyhow::Result<()> {
        in_tx!(self, conn => {
            query("DELETE FROM housekeeper_replicas WHERE replica = $1")
                .bind(&self.replica)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    /// Records that this replica is alive, and its clock's offset from the
    /// database's. Returns the start time the row held before, so that a
    /// replica can tell when another process reports under its name.
    pub async fn replica_heartbeat(
        &self,
        started_at: DateTime<Utc>,
        version: &str,
        clock_offset_ms: i64,
    ) -> anyhow::Result<Option<DateTime<Utc>>> {
        let now = self.db_now().await?;
        let sql = "INSERT INTO housekeeper_replicas (replica, started_at, heartbeat_at, clock_offset_ms, version) \
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT (replica) DO UPDATE SET \
                   started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, \
                   clock_offset_ms = excluded.clock_offset_ms, version = excluded.version";
        let before = on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            let before: Option<DateTime<Utc>> = query_scalar("SELECT started_at FROM housekeeper_replicas WHERE replica = $1")
                .bind(&self.replica)
                .fetch_optional(&mut *tx)
                .await?;
            query(sql)
                .bind(&self.replica)
                .bind(started_at)
                .bind(now)
                .bind(clock_offset_ms)
                .bind(version)
                .execute(&mut *tx)
                .await
                .context("cannot record this replica's heartbeat")?;
            tx.commit().await?;
            before
        });
        Ok(before)
    }

    /// Replicas that reported within `within`, by name; rows of replicas
    /// gone for an hour are deleted.
    pub async fn replicas(&self, within: Duration) -> anyhow::Result<Vec<ReplicaRow>> {
        let now = self.db_now().await?;
        in_tx!(self, conn => {
            query("DELETE FROM housekeeper_replicas WHERE heartbeat_at < $1")
                .bind(before(now, Duration::from_secs(3600)))
                .execute(&mut *conn)
                .await?;
        });
        let sql = "SELECT replica, started_at, heartbeat_at, clock_offset_ms, version FROM housekeeper_replicas \
                   WHERE heartbeat_at >= $1 ORDER BY replica";
        in_tx!(self, conn => {
            let rows = query(sql).bind(before(now, within)).fetch_all(&mut *conn).await?;
            rows.iter().map(|row| Ok(ReplicaRow {
                replica: row.try_get("replica")?,
                started_at: row.try_get("started_at")?,
                heartbeat_at: row.try_get("heartbeat_at")?,
                clock_offset_ms: row.try_get("clock_offset_ms")?,
                version: row.try_get("version")?,
            })).collect()
        })
    }
}
