//! What an operator asks of the scheduler directly: a run now (outside
//! the schedule, under the overlap policy), a cancel, a toggle.

use super::run::Fire;
use super::{FireOutcome, Scheduler, SchedulerError};
use crate::model::{RunStatus, Trigger};
use std::time::Duration;

impl Scheduler {
    /// Runs `name` now, outside its schedule (which it does not move). The
    /// overlap policy applies.
    pub fn trigger(&self, name: &str, dry_run: bool) -> Result<FireOutcome, SchedulerError> {
        if !self.inner.lock().contains_key(name) {
            return Err(SchedulerError::UnknownTask(name.to_owned()));
        }
        Ok(self.inner.fire(
            name,
            Fire {
                dry_run,
                ..Fire::new(Trigger::Manual, None)
            },
        ))
    }

    /// Like [`Scheduler::trigger`], and when the run starts within `wait`
    /// also gives its id in the store (a run waiting for a free slot longer
    /// than that has none yet).
    pub async fn trigger_and_wait(
        &self,
        name: &str,
        dry_run: bool,
        wait: Duration,
    ) -> Result<(FireOutcome, Option<i64>), SchedulerError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let outcome = {
            if !self.inner.lock().contains_key(name) {
                return Err(SchedulerError::UnknownTask(name.to_owned()));
            }
            self.inner.fire_with(
                name,
                Fire {
                    dry_run,
                    ..Fire::new(Trigger::Manual, None)
                },
                Some(tx),
            )
        };
        if outcome != FireOutcome::Started {
            return Ok((outcome, None));
        }
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Ok(id))) => Ok((outcome, Some(id))),
            // Another replica's run held the task: the fire was recorded
            // skipped there.
            Ok(Ok(Err(reason))) => Ok((FireOutcome::Skipped(reason), None)),
            _ => Ok((outcome, None)),
        }
    }

    /// Stops run `run_id` if this process is running it; it is recorded
    /// `cancelled`. Returns whether it was running here.
    pub fn cancel(&self, run_id: i64) -> bool {
        let tasks = self.inner.lock();
        for slot in tasks.values() {
            for a in &slot.active {
                if *a.run_id.lock().unwrap_or_else(|p| p.into_inner()) == Some(run_id) {
                    let _ = a
                        .why
                        .set((RunStatus::Cancelled, "cancelled on request".into()));
                    a.cancel.cancel();
                    return true;
                }
            }
        }
        false
    }

    /// Enables or disables `name`'s schedule, persistently, at once.
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> anyhow::Result<()> {
        if !self.inner.lock().contains_key(name) {
            return Err(SchedulerError::UnknownTask(name.to_owned()).into());
        }
        self.inner.ledger.set_enabled(name, enabled).await?;
        self.inner.changed();
        if let Some(slot) = self.inner.lock().get_mut(name) {
            slot.enabled = enabled;
        }
        Ok(())
    }
}
