//! What each replica does for the others, once per heartbeat: report
//! itself with its clock's offset from the database's (and set its
//! scheduling clock to the database's), reap the runs of replicas that
//! stopped renewing their leases (retrying them as the task's policy
//! says), and pick up toggles made on other replicas.

use super::clock::offset_from;
use super::run::{Fire, retry_backoff};
use super::{Inner, TaskDef};
use crate::store::Reaped;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;

/// Above this offset from the database's clock a replica warns.
const CLOCK_WARN: Duration = Duration::from_secs(2);

impl Inner {
    /// Waits while another process reports under this replica's name: two
    /// replicas of one name would take each other's runs for their own
    /// (crash recovery marks a replica's running rows interrupted). A
    /// previous process of this replica that died is waited out for at
    /// most a lease; one that stopped cleanly left no row.
    pub(super) async fn wait_for_own_name(&self) {
        let lease = self.config.heartbeat_interval * 3;
        let mut warned = false;
        loop {
            match self.ledger.replica_last_seen().await {
                Ok(Some(ago)) if ago < lease => {
                    if !warned {
                        tracing::warn!(
                            seen_ago = ?ago,
                            "another process reported under this replica's name; waiting until it is gone (give each replica its own HOUSEKEEPER_REPLICA)"
                        );
                        warned = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(lease - ago + Duration::from_millis(100)) => {}
                        _ = self.stop.cancelled() => return,
                    }
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot read the replicas' heartbeats");
                    return;
                }
            }
        }
    }

    /// Starts the heartbeat loop; the first beat has happened when this
    /// returns, so the clock is already the database's.
    pub(super) async fn start_cluster_loop(self: &Arc<Self>) {
        if !self.ledger.shared() {
            return;
        }
        let started_at = self.clock.now();
        self.beat(started_at).await;
        let inner = self.clone();
        self.loops.spawn(async move {
            let mut every = tokio::time::interval(inner.config.heartbeat_interval);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => inner.beat(started_at).await,
                    _ = inner.stop.cancelled() => return,
                }
            }
        });
    }

    async fn beat(self: &Arc<Self>, started_at: DateTime<Utc>) {
        let ahead = self.sync_clock().await;
        if let Err(e) = self
            .ledger
            .replica_heartbeat(started_at, ahead.num_milliseconds())
            .await
        {
            tracing::warn!(error = %e, "cannot record this replica's heartbeat");
        }
        match self.ledger.reap().await {
            Ok(reaped) => {
                for run in reaped {
                    self.reaped(run);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot reap expired leases"),
        }
        match self.ledger.settings().await {
            Ok(settings) => {
                let mut tasks = self.lock();
                for (name, slot) in tasks.iter_mut() {
                    if let Some(s) = settings.get(name) {
                        slot.enabled = s.enabled;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read task settings"),
        }
        self.changed();
    }

    /// Measures how far this process's clock is ahead of the database's,
    /// and sets the scheduling clock to the database's.
    async fn sync_clock(&self) -> chrono::Duration {
        let before = chrono::Utc::now();
        let db = match self.ledger.db_now().await {
            Ok(db) => db,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the database's clock");
                return chrono::Duration::zero();
            }
        };
        let after = chrono::Utc::now();
        let ahead = offset_from(self.clock.ahead(), before, db, after);
        self.clock.correct(ahead);
        if let Some(m) = &self.config.metrics {
            m.set_clock_offset(ahead.num_milliseconds() as f64 / 1000.0);
        }
        if ahead.abs().to_std().unwrap_or_default() > CLOCK_WARN {
            tracing::warn!(
                offset_ms = ahead.num_milliseconds(),
                "this replica's clock is off from the database's; the database's clock is used"
            );
        }
        ahead
    }

    /// A run another replica left: retried here if its task's policy
    /// allows another attempt.
    fn reaped(self: &Arc<Self>, run: Reaped) {
        tracing::warn!(
            task = run.task_name,
            run = run.id,
            replica = run.replica,
            "recorded a run interrupted: its replica stopped renewing the lease"
        );
        if let Some(m) = &self.config.metrics {
            m.run_finished(
                &run.task_name,
                crate::model::RunStatus::Interrupted,
                0,
                0,
                0.0,
            );
        }
        let def: Option<Arc<TaskDef>> = self.lock().get(&run.task_name).map(|s| s.def.clone());
        let Some(def) = def else { return };
        // A `housekeeper run` from a shell is the operator's to repeat.
        let cli = run.triggered_by == crate::model::Trigger::Cli;
        if cli || run.attempt >= def.manifest.retries.max || self.stop.is_cancelled() {
            return;
        }
        let backoff = retry_backoff(&def, run.attempt);
        let inner = self.clone();
        self.loops.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {
                    inner.fire(&run.task_name, Fire {
                        trigger: crate::model::Trigger::Retry,
                        attempt: run.attempt + 1,
                        scheduled_for: run.scheduled_for,
                        dry_run: run.dry_run,
                    });
                }
                _ = inner.stop.cancelled() => {}
            }
        });
    }
}
