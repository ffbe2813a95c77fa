//! Claiming a run in the ledger against the other replicas (the overlap
//! policy across replicas, a planned retry taken once), and writing to a
//! database that is away until it answers.

use super::run::{Active, Fire};
use super::{Inner, TaskDef};
use crate::manifest::Overlap;
use crate::store::{Claim, Lease, NewRun};
use std::sync::Arc;

/// How often a claim blocked by another replica's run is tried again.
const CLAIM_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The longest wait between attempts to write to a database that is away.
const RECORD_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

impl Inner {
    /// Claims the run in the ledger, applying the overlap policy against
    /// runs on other replicas. `None` if this replica is not to run it.
    pub(super) async fn claim(
        self: &Arc<Self>,
        name: &str,
        def: &TaskDef,
        new: &NewRun<'_>,
        fire: Fire,
        active: &Active,
    ) -> Option<Lease> {
        let mut asked_to_stop = false;
        let mut unreachable = CLAIM_RETRY;
        loop {
            let wait = match self.ledger.begin_run(new, fire.retry_of).await {
                Ok(Claim::Won(lease)) => return Some(lease),
                Ok(Claim::Recorded) => {
                    tracing::debug!(task = name, "already recorded; not running it again");
                    return None;
                }
                Ok(Claim::Early(db_now)) => {
                    let at = new.scheduled_for.unwrap_or(db_now);
                    (at - db_now).to_std().unwrap_or_default()
                }
                // A retry is of an older fire: it never stops a newer run,
                // wherever that runs.
                Ok(Claim::Busy(holder))
                    if def.manifest.overlap != Overlap::Queue
                        && (fire.retry_of.is_some()
                            || def.manifest.overlap != Overlap::Replace) =>
                {
                    let why = format!(
                        "the previous run is still running on replica {} (overlap = {})",
                        holder.replica,
                        match def.manifest.overlap {
                            Overlap::Replace => "replace",
                            _ => "skip",
                        }
                    );
                    tracing::info!(task = name, reason = why, "fire skipped");
                    if let Err(e) = self.record_not_run(name, &fire, &why).await {
                        tracing::error!(task = name, error = %e, "cannot record a skipped fire");
                    }
                    if let Some(tx) = active
                        .notify
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take()
                    {
                        let _ = tx.send(Err(why));
                    }
                    self.changed();
                    return None;
                }
                Ok(Claim::Busy(_)) => match def.manifest.overlap {
                    Overlap::Replace if !asked_to_stop => {
                        asked_to_stop = true;
                        let why = "replaced by a newer run (overlap = replace)";
                        if let Err(e) = self.ledger.request_cancel_task(name, why).await {
                            tracing::warn!(task = name, error = %e, "cannot ask the running run to stop");
                        }
                        CLAIM_RETRY
                    }
                    _ => CLAIM_RETRY,
                },
                // The database is away: the fire waits for it (and holds
                // its place against overlapping fires) rather than being
                // lost.
                Err(e) => {
                    tracing::warn!(task = name, error = %format!("{e:#}"), retry_in = ?unreachable, "cannot record the start of a run; trying again");
                    let wait = unreachable;
                    unreachable = (unreachable * 2).min(RECORD_RETRY_MAX);
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = active.cancel.cancelled() => return None,
            }
        }
    }

    /// Writes `what`, trying again while the database is away, until it
    /// answers or `give_up` says the service no longer waits (at shutdown,
    /// once the grace period is over).
    pub(super) async fn persist<T, F>(
        &self,
        what: &str,
        give_up: impl Fn() -> bool,
        write: impl Fn() -> F,
    ) -> anyhow::Result<T>
    where
        F: std::future::Future<Output = anyhow::Result<T>>,
    {
        let mut wait = CLAIM_RETRY;
        loop {
            match write().await {
                Ok(done) => return Ok(done),
                Err(e) if give_up() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?wait, "cannot record {what}; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RECORD_RETRY_MAX);
                }
            }
        }
    }
}
