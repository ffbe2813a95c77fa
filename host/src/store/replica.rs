//! A replica's own row in `housekeeper_replicas`: claiming the name at
//! start (unless another live process reports under it), and leaving at
//! shutdown.

use super::{Backend, Store, query, query_scalar};
use chrono::{DateTime, Utc};
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
}
