//! A replica's own row in `housekeeper_replicas`: whether another process
//! is reporting under this replica's name, and leaving at shutdown.

use super::{Backend, Store, query, query_scalar};
use chrono::{DateTime, Utc};
use std::time::Duration;

impl Store {
    /// How long ago, by the database's clock, a process last reported
    /// under this replica's name; `None` if none is on record. Always
    /// `None` on SQLite, where the lock `serve` holds on the database
    /// already keeps a second process out.
    pub async fn replica_last_seen(&self) -> anyhow::Result<Option<Duration>> {
        if let Backend::Sqlite(_) = self.backend {
            return Ok(None);
        }
        let now = self.db_now().await?;
        let seen: Option<DateTime<Utc>> = in_tx!(self, conn => query_scalar("SELECT heartbeat_at FROM housekeeper_replicas WHERE replica = $1")
            .bind(&self.replica)
            .fetch_optional(&mut *conn)
            .await?);
        Ok(seen.map(|at| (now - at).to_std().unwrap_or_default()))
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
