//! Running runs on a database that several replicas share: claiming a run
//! (one row per scheduled occurrence, at most one exclusive lease per
//! task), renewing and fencing its lease, reaping the runs of replicas that
//! stopped renewing theirs, and the replicas' own heartbeats.
//!
//! Every time that decides something here is the database's clock: it is
//! read first ([`Store::db_now`]) and bound into the statements, so a
//! replica whose clock is off can neither expire another's lease early nor
//! keep its own alive. Each step is one transaction and holds no session
//! state, so a pooler in transaction mode sits in between safely.

use super::{Backend, Completion, NewRun, Store, decode, query, query_scalar};
use crate::model::{RunResult, RunStatus, Trigger};
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::Row;
use std::time::Duration;

/// A scheduled run is not claimed more than this far ahead of its time by
/// the database's clock: a replica whose clock runs fast waits instead.
const EARLY_TOLERANCE: Duration = Duration::from_secs(2);

/// Replicas that start within this long of each other make one startup run
/// of a task between them.
pub const STARTUP_WINDOW: Duration = Duration::from_secs(300);

/// A run this replica may go ahead with, and the token every later write
/// about it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub run_id: i64,
    pub epoch: i64,
}

/// The run that holds a task's exclusive lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub run_id: i64,
    pub replica: String,
}

/// What became of an attempt to start a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Recorded as `running`: this replica runs it.
    Won(Lease),
    /// Its occurrence (or, for a startup run, another replica's startup
    /// run) is already recorded: nothing to do.
    Recorded,
    /// Another run of the task holds its exclusive lease.
    Busy(Holder),
    /// The occurrence is still ahead by the database's clock (this
    /// replica's clock runs fast); the database's time is given.
    Early(DateTime<Utc>),
}

impl Claim {
    /// The lease, if the claim was won.
    pub fn lease(self) -> Option<Lease> {
        match self {
            Claim::Won(lease) => Some(lease),
            _ => None,
        }
    }
}

/// What a lease renewal found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    Held,
    /// Still held, and someone asked (possibly on another replica) for the
    /// run to stop, for this reason.
    Cancel(String),
    /// The lease expired and was reaped: another replica has recorded the
    /// run as interrupted, and nothing this replica writes about it counts.
    Lost,
}

/// A run whose replica stopped renewing its lease, now recorded
/// `interrupted` by this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaped {
    pub id: i64,
    pub task_name: String,
    pub replica: String,
    pub triggered_by: Trigger,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub attempt: u32,
    pub dry_run: bool,
    /// Someone asked for the run to stop before its replica went quiet:
    /// it is recorded `cancelled` for this reason, and not retried.
    pub cancelled: Option<String>,
    /// Whether a retry of it was planned.
    pub retry: bool,
}

/// A replica as it last reported itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaRow {
    pub replica: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// This replica's clock minus the database's, in milliseconds.
    pub clock_offset_ms: i64,
    pub version: String,
}

fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

pub(super) fn before(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Store {
    /// How long a lease lasts unless renewed.
    pub fn lease_length(&self) -> Duration {
        self.lease
    }

    /// The database's clock. SQLite is embedded: its clock is this
    /// process's.
    pub async fn db_now(&self) -> anyhow::Result<DateTime<Utc>> {
        match &self.backend {
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let now = query_scalar("SELECT now()")
                    .fetch_one(&mut *tx)
                    .await
                    .context("cannot read the database's clock")?;
                tx.commit().await?;
                Ok(now)
            }
            Backend::Sqlite(_) => Ok(Utc::now()),
        }
    }

    /// Records a run as `running` under a new lease, unless its occurrence
    /// is already recorded or, for an exclusive run, another run of the
    /// task holds the task's lease. One transaction: of several replicas
    /// claiming the same occurrence, exactly one wins.
    pub async fn begin_run(&self, run: &NewRun<'_>) -> anyhow::Result<Claim> {
        self.claim(run, None).await
    }

    /// Like [`Store::begin_run`], for the retry planned after run
    /// `after_run`: the plan is taken with the claim, so that of the
    /// replicas that try, one runs it (the others get `Recorded`).
    pub async fn begin_retry(&self, run: &NewRun<'_>, after_run: i64) -> anyhow::Result<Claim> {
        self.claim(run, Some(after_run)).await
    }

    async fn claim(&self, run: &NewRun<'_>, retry_of: Option<i64>) -> anyhow::Result<Claim> {
        let now = self.db_now().await?;
        if let Some(at) = run.scheduled_for {
            if at > after(now, EARLY_TOLERANCE) {
                return Ok(Claim::Early(now));
            }
        }
        let epoch = rand::random::<i64>() & i64::MAX;
        let insert_run = "INSERT INTO housekeeper_runs \
             (task_name, started_at, status, triggered_by, scheduled_for, dry_run, component_hash, replica, heartbeat_at, attempt) \
             VALUES ($1, $2, 'running', $3, $4, $5, $6, $7, $2, $8) \
             ON CONFLICT (task_name, scheduled_for) WHERE triggered_by = 'schedule' DO NOTHING \
             RETURNING id";
        let insert_lease = "INSERT INTO housekeeper_leases \
             (run_id, task_name, exclusive, replica, epoch, expires_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT DO NOTHING RETURNING run_id";
        let recent_startup = "SELECT COUNT(*) FROM housekeeper_runs WHERE task_name = $1 \
             AND triggered_by = 'startup' AND replica <> $2 AND started_at > $3";
        let postgres = matches!(self.backend, Backend::Postgres(_));
        let claim = on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await.context("cannot start a claim")?;
            if run.triggered_by == Trigger::Startup {
                // Replicas starting together would each see no startup
                // run yet: the check and the insert go one at a time.
                if postgres {
                    query("SELECT pg_advisory_xact_lock(hashtext('housekeeper startup ' || $1))")
                        .bind(run.task_name)
                        .execute(&mut *tx)
                        .await?;
                }
                let others: i64 = query_scalar(recent_startup)
                    .bind(run.task_name)
                    .bind(&self.replica)
                    .bind(before(now, STARTUP_WINDOW))
                    .fetch_one(&mut *tx)
                    .await?;
                if others > 0 {
                    tx.rollback().await?;
                    return Ok(Claim::Recorded);
                }
            }
            if let Some(after_run) = retry_of {
                // The plan is taken with the run, or not at all: another
                // replica that claimed it first leaves nothing here.
                let taken = query("DELETE FROM housekeeper_retries WHERE after_run = $1")
                    .bind(after_run)
                    .execute(&mut *tx)
                    .await
                    .context("cannot take a planned retry")?
                    .rows_affected();
                if taken == 0 {
                    tx.rollback().await?;
                    return Ok(Claim::Recorded);
                }
            }
            let id: Option<i64> = query_scalar(insert_run)
                .bind(run.task_name)
                .bind(now)
                .bind(run.triggered_by.as_str())
                .bind(run.scheduled_for)
                .bind(run.dry_run)
                .bind(run.component_hash)
                .bind(&self.replica)
                .bind(run.attempt.min(i32::MAX as u32) as i32)
                .fetch_optional(&mut *tx)
                .await
                .context("cannot record the start of a run")?;
            let Some(id) = id else {
                tx.rollback().await?;
                return Ok(Claim::Recorded);
            };
            let leased: Option<i64> = query_scalar(insert_lease)
                .bind(id)
                .bind(run.task_name)
                .bind(run.exclusive)
                .bind(&self.replica)
                .bind(epoch)
                .bind(after(now, self.lease))
                .fetch_optional(&mut *tx)
                .await
                .context("cannot take the run's lease")?;
            if leased.is_none() {
                // Read committed: this sees the holder that committed.
                let row = query("SELECT run_id, replica FROM housekeeper_leases WHERE task_name = $1 AND exclusive")
                    .bind(run.task_name)
                    .fetch_optional(&mut *tx)
                    .await?;
                tx.rollback().await?;
                let holder = match row {
                    Some(row) => Holder { run_id: row.try_get("run_id")?, replica: row.try_get("replica")? },
                    // Released in between: the caller tries again.
                    None => Holder { run_id: 0, replica: String::new() },
                };
                return Ok(Claim::Busy(holder));
            }
            tx.commit().await?;
            Claim::Won(Lease { run_id: id, epoch })
        });
        Ok(claim)
    }

    /// Renews `lease` and marks its run alive, and says whether a cancel
    /// was asked for.
    pub async fn heartbeat(&self, lease: Lease) -> anyhow::Result<Renewal> {
        let now = self.db_now().await?;
        let renewed: Option<Option<String>> = on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            let row = query("UPDATE housekeeper_leases SET expires_at = $1 WHERE run_id = $2 AND epoch = $3 RETURNING cancel_reason")
                .bind(after(now, self.lease))
                .bind(lease.run_id)
                .bind(lease.epoch)
                .fetch_optional(&mut *tx)
                .await
                .context("cannot renew the run's lease")?;
            if row.is_some() {
                query("UPDATE housekeeper_runs SET heartbeat_at = $1 WHERE id = $2 AND status = 'running'")
                    .bind(now)
                    .bind(lease.run_id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            match row {
                Some(row) => Some(row.try_get::<Option<String>, _>("cancel_reason")?),
                None => None,
            }
        });
        Ok(match renewed {
            None => Renewal::Lost,
            Some(Some(reason)) => Renewal::Cancel(reason),
            Some(None) => Renewal::Held,
        })
    }

    /// Records how the run of `lease` ended and updates the task's summary.
    /// `false` when the lease was lost: another replica already recorded
    /// the run, and this result is not stored.
    pub async fn finish_run(&self, lease: Lease, result: &RunResult) -> anyhow::Result<bool> {
        let metrics: serde_json::Map<String, serde_json::Value> = result
            .metrics
            .iter()
            .map(|m| (m.name.clone(), serde_json::json!(m.value)))
            .collect();
        let output = match &result.summary {
            Some(summary) if result.output.is_empty() => summary.clone(),
            Some(summary) => format!("{summary}\n{}", result.output),
            None => result.output.clone(),
        };
        // The database's clock, as for the run's start: this replica's may
        // be off, and the run's interval must stay comparable with others'.
        let now = self.db_now().await?;
        self.complete(
            lease.run_id,
            Some(lease.epoch),
            Completion {
                status: result.status,
                completed_at: now,
                duration_ms: result.duration_ms as i64,
                output: Some(output),
                error: result.error.clone(),
                metrics: Some(serde_json::Value::Object(metrics).to_string()),
                fuel_used: Some(result.fuel_used as i64),
                component_hash: Some(result.component_hash.clone()),
            },
        )
        .await
    }

    /// Ends the run of `lease` without a result from the runtime
    /// (cancelled, interrupted, or a failure before the guest started).
    /// `false` when the lease was lost.
    pub async fn end_run(
        &self,
        lease: Lease,
        status: RunStatus,
        reason: &str,
    ) -> anyhow::Result<bool> {
        self.end_unleased(lease.run_id, Some(lease.epoch), status, reason)
            .await
    }

    async fn end_unleased(
        &self,
        id: i64,
        epoch: Option<i64>,
        status: RunStatus,
        reason: &str,
    ) -> anyhow::Result<bool> {
        let now = self.db_now().await?;
        let started: Option<DateTime<Utc>> = in_tx!(self, conn => query_scalar("SELECT started_at FROM housekeeper_runs WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?);
        let Some(started) = started else {
            return Ok(false);
        };
        self.complete(
            id,
            epoch,
            Completion {
                status,
                completed_at: now,
                duration_ms: (now - started).num_milliseconds().max(0),
                output: None,
                error: Some(reason.to_owned()),
                metrics: None,
                fuel_used: None,
                component_hash: None,
            },
        )
        .await
    }

    /// Records as `interrupted` every run whose lease expired (its replica
    /// stopped renewing it: killed, cut off, or stuck), and running rows
    /// left without a lease; a run someone asked to stop is recorded
    /// `cancelled` instead. Of several replicas reaping at once, each run
    /// is reaped by exactly one. `retry_in` says, for an interrupted run,
    /// after what backoff to retry it (the task's policy); the retry is
    /// planned before the run is recorded, so that a reaper dying in
    /// between leaves a run that is reaped again, with the same plan.
    pub async fn reap(
        &self,
        retry_in: &(dyn for<'r> Fn(&'r Reaped) -> Option<Duration> + Send + Sync),
    ) -> anyhow::Result<Vec<Reaped>> {
        let now = self.db_now().await?;
        // Deleting an expired lease is what makes a replica the reaper of
        // its run: of several replicas deleting at once, one gets each row.
        let expired: Vec<(i64, Option<String>)> = in_tx!(self, conn => {
            let rows = query("DELETE FROM housekeeper_leases WHERE expires_at < $1 RETURNING run_id, cancel_reason")
                .bind(now)
                .fetch_all(&mut *conn)
                .await
                .context("cannot reap expired leases")?;
            rows.iter()
                .map(|row| Ok((row.try_get("run_id")?, row.try_get("cancel_reason")?)))
                .collect::<anyhow::Result<_>>()?
        });
        // A running row without a lease is also left over: its reaper died
        // between the two steps, or it was written by a process that keeps
        // no leases (an older version during a rolling upgrade), which gets
        // twice the lease to go quiet.
        let sql = "SELECT id FROM housekeeper_runs r WHERE status = 'running' \
                   AND NOT EXISTS (SELECT 1 FROM housekeeper_leases l WHERE l.run_id = r.id) \
                   AND COALESCE(heartbeat_at, started_at) < $1 ORDER BY id";
        let leftover: Vec<i64> = in_tx!(self, conn => query_scalar(sql)
            .bind(before(now, self.lease * 2))
            .fetch_all(&mut *conn)
            .await?);
        let mut reaped = Vec::new();
        for (id, cancelled) in expired
            .into_iter()
            .chain(leftover.into_iter().map(|id| (id, None)))
        {
            if let Some(run) = self.reap_one(id, cancelled, retry_in, None).await? {
                reaped.push(run);
            }
        }
        Ok(reaped)
    }

    /// Records run `id` interrupted (or cancelled), if it is still running,
    /// for `why` (by default, that its replica stopped renewing its lease).
    async fn reap_one(
        &self,
        id: i64,
        cancelled: Option<String>,
        retry_in: &(dyn for<'r> Fn(&'r Reaped) -> Option<Duration> + Send + Sync),
        why: Option<&str>,
    ) -> anyhow::Result<Option<Reaped>> {
        let sql = "SELECT id, task_name, replica, triggered_by, scheduled_for, attempt, dry_run, \
                          COALESCE(heartbeat_at, started_at) AS seen \
                   FROM housekeeper_runs WHERE id = $1 AND status = 'running'";
        let found = in_tx!(self, conn => {
            match query(sql).bind(id).fetch_optional(&mut *conn).await? {
                None => None,
                Some(row) => {
                    let trigger: String = row.try_get("triggered_by")?;
                    let attempt: i32 = row.try_get("attempt")?;
                    let seen: DateTime<Utc> = row.try_get("seen")?;
                    Some((Reaped {
                        id,
                        task_name: row.try_get("task_name")?,
                        replica: row.try_get("replica")?,
                        triggered_by: decode(&trigger, "housekeeper_runs", "triggered_by")?,
                        scheduled_for: row.try_get("scheduled_for")?,
                        attempt: attempt.max(0) as u32,
                        dry_run: row.try_get("dry_run")?,
                        cancelled,
                        retry: false,
                    }, seen))
                }
            }
        });
        let Some((mut run, seen)) = found else {
            return Ok(None);
        };
        let quiet = match why {
            Some(why) => why.to_owned(),
            None => format!(
                "replica {} stopped renewing the run's lease (last heartbeat {})",
                run.replica,
                seen.format("%Y-%m-%dT%H:%M:%SZ")
            ),
        };
        let (status, reason) = match &run.cancelled {
            Some(why) => (RunStatus::Cancelled, format!("{why}; {quiet}")),
            None => {
                if let Some(backoff) = retry_in(&run) {
                    run.retry = self.plan_retry(run.id, backoff).await?;
                }
                (RunStatus::Interrupted, quiet)
            }
        };
        let ended = self.end_unleased(run.id, None, status, &reason).await?;
        Ok(ended.then_some(run))
    }

    /// At start: this replica's runs left `running` by its previous
    /// process (started before `before`, the moment this process made the
    /// name its own, by the database's clock) are recorded `interrupted`,
    /// without waiting for their leases to expire, their retries planned
    /// as `retry_in` says. Runs this process started since are left alone.
    pub async fn interrupt_orphans(
        &self,
        before: DateTime<Utc>,
        retry_in: &(dyn for<'r> Fn(&'r Reaped) -> Option<Duration> + Send + Sync),
    ) -> anyhow::Result<Vec<Reaped>> {
        let ids: Vec<i64> = in_tx!(self, conn => query_scalar("SELECT id FROM housekeeper_runs WHERE status = 'running' AND replica = $1 AND started_at < $2 ORDER BY id")
            .bind(&self.replica)
            .bind(before)
            .fetch_all(&mut *conn)
            .await?);
        let mut ended = Vec::new();
        for id in ids {
            in_tx!(self, conn => {
                query("DELETE FROM housekeeper_leases WHERE run_id = $1")
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
            });
            let why = "the service stopped while the run was in progress";
            if let Some(run) = self.reap_one(id, None, retry_in, Some(why)).await? {
                ended.push(run);
            }
        }
        Ok(ended)
    }

    /// Asks whichever replica runs `run_id` to stop it (seen at its next
    /// heartbeat). Returns that replica, or `None` if the run holds no
    /// lease.
    pub async fn request_cancel(
        &self,
        run_id: i64,
        reason: &str,
    ) -> anyhow::Result<Option<String>> {
        let replica = in_tx!(self, conn => query_scalar("UPDATE housekeeper_leases SET cancel_reason = COALESCE(cancel_reason, $1) WHERE run_id = $2 RETURNING replica")
            .bind(reason)
            .bind(run_id)
            .fetch_optional(&mut *conn)
            .await?);
        Ok(replica)
    }

    /// Asks the run holding `task`'s exclusive lease to stop.
    pub async fn request_cancel_task(&self, task: &str, reason: &str) -> anyhow::Result<()> {
        in_tx!(self, conn => {
            query("UPDATE housekeeper_leases SET cancel_reason = COALESCE(cancel_reason, $1) WHERE task_name = $2 AND exclusive")
                .bind(reason)
                .bind(task)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    /// Asks every replica to rescan its tasks directory.
    pub async fn request_reload(&self) -> anyhow::Result<i64> {
        let generation = in_tx!(self, conn => query_scalar("UPDATE housekeeper_cluster SET reload_generation = reload_generation + 1 WHERE id = 1 RETURNING reload_generation")
            .fetch_one(&mut *conn)
            .await
            .context("cannot record the reload request")?);
        Ok(generation)
    }

    /// How many reloads have been asked for, cluster-wide.
    pub async fn reload_generation(&self) -> anyhow::Result<i64> {
        let generation = in_tx!(self, conn => query_scalar("SELECT reload_generation FROM housekeeper_cluster WHERE id = 1")
            .fetch_one(&mut *conn)
            .await?);
        Ok(generation)
    }
}
