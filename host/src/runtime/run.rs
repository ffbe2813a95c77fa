//! Calling a component's exports: `describe()` with no grants and small
//! limits, and `run()` in a fresh store whose capabilities and limits come
//! from the request, every outcome a `RunResult`.

use super::limits::{self, MemoryLimiter};
use super::{MemoryBudget, RunError, RunRequest, Runtime, StoreData, TaskComponent, report};
use crate::bindings;
use crate::capabilities::RunCapabilities;
use crate::capabilities::budget::DeadlineExceeded;
use crate::capabilities::filesystem::FsLimits;
use crate::capabilities::output::Output;
use crate::capabilities::sql::{Connections, SqlCapability, SqlLimits};
use crate::manifest::{MAX_MEMORY_BYTES, ResourceLimits};
use crate::model::{ConfigMap, Metric, RunResult, RunStatus, TaskInfo, Trigger};
use bindings::housekeeper::task::types;
use chrono::Utc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::{Store, UpdateDeadline};

/// A running guest yields to the async runtime after this much fuel too.
const FUEL_YIELD_INTERVAL: u64 = 50_000_000;

/// How long after the run's deadline a host call may take to notice it.
const HOST_CALL_GRACE: Duration = Duration::from_secs(1);

/// `describe()` is informational and must be cheap.
const DESCRIBE_FUEL: u64 = 1_000_000_000;
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

impl Runtime {
    /// Calls the component's `describe()` with no grants and small limits.
    pub async fn describe(&self, component: &TaskComponent) -> Result<TaskInfo, RunError> {
        let output = Output::new("describe", "describe", self.inner.options.output_cap);
        let sql = SqlCapability::new(
            "describe",
            None,
            &Connections::default(),
            true,
            Instant::now() + DESCRIBE_TIMEOUT,
            output.clone(),
            SqlLimits::default(),
        );
        let memory = MemoryBudget::new(64 << 20);
        let fs_limits = FsLimits::new(ResourceLimits::default(), None, memory.clone());
        let capabilities = RunCapabilities::new(
            &[],
            true,
            false,
            ConfigMap::new(),
            &output,
            sql,
            fs_limits,
            chrono::Duration::zero(),
        )
        .map_err(|e| RunError::setup(format!("{e:#}")))?;
        let mut store = self.store(capabilities, memory, DESCRIBE_FUEL, DESCRIBE_TIMEOUT);
        let call = async {
            let task = component.pre.instantiate_async(&mut store).await?;
            task.call_describe(&mut store).await
        };
        let outcome = tokio::time::timeout(DESCRIBE_TIMEOUT, call).await;
        let fuel_used = DESCRIBE_FUEL.saturating_sub(store.get_fuel().unwrap_or(0));
        match outcome {
            Err(_) => Err(RunError {
                status: RunStatus::Timeout,
                message: "describe() did not return in time".into(),
                fuel_used,
            }),
            Ok(Ok(info)) => report::task_info(TaskInfo {
                name: info.name,
                version: info.version,
                description: info.description,
                default_schedule: info.default_schedule,
                run_on_startup: info.run_on_startup,
                capabilities: info.capabilities,
            })
            .map_err(|message| RunError {
                status: RunStatus::Error,
                message,
                fuel_used,
            }),
            Ok(Err(e)) => {
                let stopped = limits::classify(&e, store.data().limiter.denied(), fuel_used);
                Err(RunError {
                    message: format!("describe() failed: {}", stopped.message),
                    ..stopped
                })
            }
        }
    }

    /// Runs `component` once. Never fails: every outcome is a [`RunResult`].
    pub async fn run(&self, component: &TaskComponent, request: RunRequest) -> RunResult {
        let started_at = Utc::now();
        let clock = Instant::now();
        let output = Output::new(
            &request.task_name,
            &request.run_id,
            self.inner.options.output_cap,
        );
        let mut result = RunResult {
            run_id: request.run_id.clone(),
            task_name: request.task_name.clone(),
            status: RunStatus::Error,
            started_at,
            completed_at: started_at,
            duration_ms: 0,
            summary: None,
            error: None,
            output: String::new(),
            metrics: Vec::new(),
            fuel_used: 0,
            component_hash: component.hash.clone(),
            dry_run: request.dry_run,
        };

        let sql = SqlCapability::new(
            &request.task_name,
            request.database.as_ref(),
            request
                .connections
                .as_ref()
                .unwrap_or(&self.inner.options.connections),
            request.dry_run,
            clock + request.timeout,
            output.clone(),
            self.inner.options.sql.clone(),
        );
        // One budget for the run's memories and tables and for what the
        // host holds for it (directory listings).
        let memory = MemoryBudget::new(request.memory_bytes);
        let outcome = match RunCapabilities::new(
            &request.dirs,
            request.dry_run,
            self.inner.options.fs_on_guest_thread,
            request.config.clone(),
            &output,
            sql,
            FsLimits::new(
                request.resources,
                self.inner.options.descriptors_per_run,
                memory.clone(),
            ),
            request.clock_ahead,
        ) {
            Err(e) => Err(RunError::setup(format!("{e:#}"))),
            Ok(capabilities) => {
                self.call_run(component, &request, capabilities, memory)
                    .await
            }
        };
        match outcome {
            Ok((Ok(returned), fuel)) => {
                result.status = RunStatus::Success;
                result.summary = Some(report::summary(returned.summary));
                let metrics = returned.metrics.into_iter().map(|m| Metric {
                    name: m.name,
                    value: m.value,
                });
                result.metrics = report::metrics(metrics.collect(), &output);
                result.fuel_used = fuel;
            }
            Ok((Err(task_error), fuel)) => {
                result.status = RunStatus::Error;
                result.error = Some(match task_error {
                    types::TaskError::InvalidConfig(m) => format!("invalid config: {m}"),
                    types::TaskError::Failed(m) => m,
                });
                result.fuel_used = fuel;
            }
            Err(e) => {
                result.status = e.status;
                result.error = Some(e.message);
                result.fuel_used = e.fuel_used;
            }
        }
        result.error = result.error.map(report::error);
        result.output = output.finish();
        result.completed_at = Utc::now();
        result.duration_ms = clock.elapsed().as_millis() as u64;
        result
    }

    /// The task's own answer and the fuel it used.
    async fn call_run(
        &self,
        component: &TaskComponent,
        request: &RunRequest,
        capabilities: RunCapabilities,
        memory: Arc<MemoryBudget>,
    ) -> Result<(Result<types::RunReport, types::TaskError>, u64), RunError> {
        if request.memory_bytes > MAX_MEMORY_BYTES {
            return Err(RunError::setup(format!(
                "memory limit {} is above the host's maximum",
                request.memory_bytes
            )));
        }
        let mut store = self.store(capabilities, memory, request.fuel, request.timeout);
        let ctx = types::RunContext {
            run_id: request.run_id.clone(),
            dry_run: request.dry_run,
            triggered_by: match request.trigger {
                Trigger::Schedule => types::Trigger::Schedule,
                Trigger::Startup => types::Trigger::Startup,
                Trigger::Manual => types::Trigger::Manual,
                Trigger::Retry => types::Trigger::Retry,
                Trigger::Cli => types::Trigger::Cli,
                // Only runs recorded by the reference service say these;
                // no run is started with them.
                Trigger::Api | Trigger::Unknown => types::Trigger::Manual,
            },
            scheduled_for: request.scheduled_for.map(|t| t.timestamp_millis()),
            last_success: request.last_success.map(|t| t.timestamp_millis()),
        };
        // The epoch deadline stops guest code and host calls bound themselves
        // by the same deadline (SQL reports it in the output); this timeout,
        // a moment later, is the backstop for any host call that does not.
        let outcome = tokio::time::timeout(request.timeout + HOST_CALL_GRACE, async {
            let task = component.pre.instantiate_async(&mut store).await?;
            task.call_run(&mut store, &ctx).await
        })
        .await;
        let fuel = request.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        // However the run ended (returned, trapped, out of fuel or time), it
        // lost none of its SQL commits: those made without waiting for the
        // disk are waited for now. When that fails, a run that succeeded
        // fails with why; any other keeps its own end (the output says
        // both).
        let flushed = store.data_mut().capabilities.sql.flush().await;
        let outcome = match (outcome, flushed) {
            (Ok(Ok(Ok(_))), Err(why)) => Ok(Ok(Err(types::TaskError::Failed(why)))),
            (outcome, _) => outcome,
        };
        match outcome {
            Err(_) => Err(RunError {
                status: RunStatus::Timeout,
                message: format!(
                    "the run's deadline of {} passed",
                    humantime::format_duration(request.timeout)
                ),
                fuel_used: fuel,
            }),
            Ok(Ok(returned)) => Ok((returned, fuel)),
            Ok(Err(e)) => Err(limits::classify(&e, store.data().limiter.denied(), fuel)),
        }
    }

    fn store(
        &self,
        capabilities: RunCapabilities,
        memory: Arc<MemoryBudget>,
        fuel: u64,
        timeout: Duration,
    ) -> Store<StoreData> {
        let mut store = Store::new(
            &self.inner.engine,
            StoreData {
                capabilities,
                limiter: MemoryLimiter::new(memory),
            },
        );
        store.limiter(|data| &mut data.limiter);
        // Fuel is enabled on the engine, so these cannot fail.
        store.set_fuel(fuel).expect("fuel is enabled");
        store
            .fuel_async_yield_interval(Some(FUEL_YIELD_INTERVAL))
            .expect("fuel is enabled");
        let deadline = Instant::now() + timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(DeadlineExceeded.into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }
}
