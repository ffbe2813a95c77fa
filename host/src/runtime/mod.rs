//! The sandbox: one wasmtime `Engine`, compilation and pre-instantiation of
//! components, and runs under fuel, memory, deadline and output limits.
//!
//! This is the only module (with `capabilities/`, which implements the WIT
//! imports) that touches wasmtime. Callers get plain types: [`TaskComponent`]
//! is opaque, [`RunResult`] and [`TaskInfo`] are data.

mod cache;
pub mod compile;
pub(crate) mod limits;
pub mod report;

use crate::bindings;
use crate::capabilities::budget::DeadlineExceeded;
pub use crate::capabilities::budget::MemoryBudget;
use crate::capabilities::filesystem::FsLimits;
use crate::capabilities::output::{DEFAULT_OUTPUT_CAP, Output};
use crate::capabilities::sql::{Connections, SqlCapability, SqlLimits};
use crate::capabilities::{self, HasCapabilities, RunCapabilities};
use crate::manifest::{DatabaseGrant, DirGrant, MAX_MEMORY_BYTES, Manifest, ResourceLimits};
use crate::model::{ConfigMap, Metric, RunResult, RunStatus, TaskInfo, Trigger};
use bindings::housekeeper::task::types;
use chrono::{DateTime, Utc};
use compile::{CompileError, CompileLimits};
use limits::MemoryLimiter;
use sha2::{Digest, Sha256};
use std::io::Read as _;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use wasmtime::component::Linker;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtxView, WasiView};

/// How often the engine's epoch advances: the granularity of deadlines and
/// of the guest's cooperative yields.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A running guest yields to the async runtime after this much fuel too.
const FUEL_YIELD_INTERVAL: u64 = 50_000_000;

/// How long after the run's deadline a host call may take to notice it.
const HOST_CALL_GRACE: Duration = Duration::from_secs(1);

/// `describe()` is informational and must be cheap.
const DESCRIBE_FUEL: u64 = 1_000_000_000;
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Use the pooling instance allocator when the machine allows it.
    pub pooling: bool,
    /// Instances the pool holds: the most runs that can be live at once.
    pub max_instances: u32,
    /// Cap on each run's captured output, in bytes.
    pub output_cap: usize,
    /// Where compiled components are cached across restarts (`None`: no
    /// disk cache).
    pub cache_dir: Option<std::path::PathBuf>,
    /// Perform a guest's filesystem calls on the thread that runs it rather
    /// than on tokio's blocking pool. Each call then blocks that worker for
    /// one syscall; a service should run guests on workers that do not also
    /// serve its API.
    pub fs_on_guest_thread: bool,
    /// Database connections that manifests may grant, by name.
    pub connections: Connections,
    /// Caps on each SQL call.
    pub sql: SqlLimits,
    /// The most files and directories one run may hold open, whatever its
    /// manifest says (`None`: its manifest decides). A service sets it to
    /// its share of the process's open-file limit.
    pub descriptors_per_run: Option<u32>,
    /// Bounds on compiling a component.
    pub compile: CompileLimits,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            pooling: true,
            max_instances: 64,
            output_cap: DEFAULT_OUTPUT_CAP,
            fs_on_guest_thread: true,
            cache_dir: None,
            connections: Connections::default(),
            sql: SqlLimits::default(),
            descriptors_per_run: None,
            compile: CompileLimits::default(),
        }
    }
}

/// Why a file is not a usable task component.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{what} is not a WebAssembly file")]
    NotWasm { what: String },
    #[error(
        "{what} is a core WebAssembly module, not a component: build the task for wasm32-wasip2"
    )]
    CoreModule { what: String },
    #[error("{what} is not a valid component: {message}")]
    Invalid { what: String, message: String },
    #[error("{what} is not a housekeeper task (world housekeeper:task/task@0.1.0): {message}")]
    WrongWorld { what: String, message: String },
    #[error(
        "{what} is {size} bytes, more than the {max} a component may have (HOUSEKEEPER_MAX_COMPONENT_SIZE)"
    )]
    TooLarge { what: String, size: u64, max: u64 },
    #[error("{what} was not loaded: {message}")]
    CompileBound { what: String, message: String },
}

/// Why a call into a task (`run` or `describe()`) ended without an answer
/// of the task's own: the call could not be set up, the guest was stopped
/// (trap, fuel, memory, deadline), or what it returned was unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} ({status})")]
pub struct RunError {
    /// How the run is recorded.
    pub status: RunStatus,
    pub message: String,
    /// Fuel the guest used before it stopped; 0 if it never started.
    pub fuel_used: u64,
}

impl RunError {
    /// The call could not be set up: the guest never started.
    fn setup(message: impl Into<String>) -> Self {
        RunError {
            status: RunStatus::Error,
            message: message.into(),
            fuel_used: 0,
        }
    }
}

/// A compiled, pre-linked component, ready to instantiate for each run.
/// Clones share one compiled copy.
#[derive(Clone)]
pub struct TaskComponent {
    hash: String,
    pre: Arc<bindings::TaskPre<StoreData>>,
    cached: bool,
}

impl TaskComponent {
    /// SHA-256 of the component's bytes, hex.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Whether both use the same compiled copy.
    pub fn shares_code_with(&self, other: &TaskComponent) -> bool {
        Arc::ptr_eq(&self.pre, &other.pre)
    }

    /// Whether the compiled code came from the on-disk cache.
    pub fn from_disk_cache(&self) -> bool {
        self.cached
    }
}

/// One run's inputs, independent of how it was triggered.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub run_id: String,
    pub task_name: String,
    pub dry_run: bool,
    pub trigger: Trigger,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub timeout: Duration,
    pub fuel: u64,
    pub memory_bytes: u64,
    /// Descriptors, listings, handles and bytes written.
    pub resources: ResourceLimits,
    pub dirs: Vec<DirGrant>,
    pub database: Option<DatabaseGrant>,
    /// Connections for this run instead of the runtime's own.
    pub connections: Option<Connections>,
    pub config: ConfigMap,
    /// How far this process's clock is ahead of the database's: the guest's
    /// wall clock is the database's, like the schedule it runs on.
    pub clock_ahead: chrono::Duration,
}

impl RunRequest {
    /// A run of `manifest`'s task with its grants, limits and config.
    pub fn from_manifest(manifest: &Manifest, run_id: String, trigger: Trigger) -> Self {
        RunRequest {
            run_id,
            task_name: manifest.name.clone(),
            dry_run: false,
            trigger,
            scheduled_for: None,
            last_success: None,
            timeout: manifest.timeout,
            fuel: manifest.limits.fuel,
            memory_bytes: manifest.limits.memory_bytes,
            resources: manifest.limits.resources,
            dirs: manifest.dirs.clone(),
            database: manifest.database.clone(),
            connections: None,
            config: manifest.config.clone(),
            clock_ahead: chrono::Duration::zero(),
        }
    }
}

/// The store's data: a run's capabilities and its memory limiter.
pub struct StoreData {
    capabilities: RunCapabilities,
    limiter: MemoryLimiter,
}

impl HasCapabilities for StoreData {
    fn capabilities(&mut self) -> &mut RunCapabilities {
        &mut self.capabilities
    }
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.capabilities.wasi.view()
    }
}

/// The engine and linker shared by every run. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<StoreData>,
    options: RuntimeOptions,
    pooling: bool,
    cache: Option<cache::CompileCache>,
    /// Components loaded and still in use, by content hash: the same bytes
    /// share one compiled copy.
    loaded: std::sync::Mutex<std::collections::HashMap<String, Weak<bindings::TaskPre<StoreData>>>>,
    /// Content hashes whose compile hit a bound, with the error: the same
    /// bytes fail the same way under the same bounds, so a rescan does not
    /// spend the compile timeout on them again.
    over_bounds: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// At most this many remembered compile failures; past it they are
/// forgotten (and would be compiled again).
const MAX_REMEMBERED_FAILURES: usize = 1024;

impl Runtime {
    pub fn new(options: RuntimeOptions) -> anyhow::Result<Self> {
        let (engine, pooling) = if options.pooling {
            match Engine::new(&engine_config(Some(&options))) {
                Ok(engine) => (engine, true),
                Err(e) => {
                    tracing::warn!(error = %e, "pooling allocator unavailable, allocating on demand");
                    (Engine::new(&engine_config(None))?, false)
                }
            }
        } else {
            (Engine::new(&engine_config(None))?, false)
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        capabilities::add_to_linker(&mut linker)?;

        let cache = match &options.cache_dir {
            Some(dir) => Some(cache::CompileCache::new(dir, &engine).map_err(|e| {
                anyhow::anyhow!("cannot create the compile cache {}: {e}", dir.display())
            })?),
            None => None,
        };
        let inner = Arc::new(Inner {
            engine,
            linker,
            options,
            pooling,
            cache,
            loaded: Default::default(),
            over_bounds: Default::default(),
        });
        start_epoch_ticker(Arc::downgrade(&inner));
        Ok(Runtime { inner })
    }

    /// Whether instances come from the pooling allocator.
    pub fn pooling(&self) -> bool {
        self.inner.pooling
    }

    /// Compiles and links `bytes`; `what` names the source in errors.
    /// Compilation is CPU-bound: call it off the async workers
    /// (`spawn_blocking`) in a server.
    pub fn load(&self, what: &str, bytes: &[u8]) -> Result<TaskComponent, LoadError> {
        let what = what.to_owned();
        self.check_size(&what, bytes.len() as u64)?;
        check_header(&what, bytes)?;
        let hash = hex::encode(Sha256::digest(bytes));
        let shared = self
            .inner
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
            .and_then(Weak::upgrade);
        if let Some(pre) = shared {
            return Ok(TaskComponent {
                hash,
                pre,
                cached: false,
            });
        }
        let failed_before = self
            .inner
            .over_bounds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
            .cloned();
        if let Some(message) = failed_before {
            return Err(LoadError::CompileBound { what, message });
        }
        let engine = &self.inner.engine;
        let compile = || compile::compile(engine, bytes, &self.inner.options.compile);
        let compiled = match &self.inner.cache {
            Some(cache) => cache
                .load(engine, &hash, compile)
                .map(|(c, source)| (c, source == cache::Source::Cached)),
            None => compile().map(|(c, _)| (c, false)),
        };
        let (component, cached) = compiled.map_err(|e| match e {
            CompileError::Invalid(message) => LoadError::Invalid {
                what: what.clone(),
                message,
            },
            CompileError::Bound(message) => {
                let mut failed = self
                    .inner
                    .over_bounds
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if failed.len() >= MAX_REMEMBERED_FAILURES {
                    failed.clear();
                }
                failed.insert(hash.clone(), message.clone());
                LoadError::CompileBound {
                    what: what.clone(),
                    message,
                }
            }
        })?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .and_then(bindings::TaskPre::new)
            .map_err(|e| LoadError::WrongWorld {
                what,
                message: one_line(&e),
            })?;
        let pre = Arc::new(pre);
        let mut loaded = self.inner.loaded.lock().unwrap_or_else(|p| p.into_inner());
        loaded.retain(|_, weak| weak.strong_count() > 0);
        loaded.insert(hash.clone(), Arc::downgrade(&pre));
        Ok(TaskComponent { hash, pre, cached })
    }

    pub fn load_file(&self, path: &Path) -> Result<TaskComponent, LoadError> {
        let what = path.display().to_string();
        let read_error = |source| LoadError::Read {
            path: what.clone(),
            source,
        };
        // Refuse an oversized file before reading it; `take` holds the read
        // to the limit should the file grow meanwhile.
        let file = std::fs::File::open(path).map_err(read_error)?;
        let size = file.metadata().map_err(read_error)?.len();
        self.check_size(&what, size)?;
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(self.inner.options.compile.max_size + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        self.load(&what, &bytes)
    }

    fn check_size(&self, what: &str, size: u64) -> Result<(), LoadError> {
        let max = self.inner.options.compile.max_size;
        if size > max {
            return Err(LoadError::TooLarge {
                what: what.to_owned(),
                size,
                max,
            });
        }
        Ok(())
    }

    /// The database connections manifests may grant.
    pub fn connections(&self) -> &Connections {
        &self.inner.options.connections
    }

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

pub(crate) fn engine_config(pool: Option<&RuntimeOptions>) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.consume_fuel(true);
    if let Some(options) = pool {
        let n = options.max_instances.max(1);
        let mut pooling = PoolingAllocationConfig::new();
        pooling
            .total_component_instances(n)
            .total_core_instances(n * 8)
            .total_memories(n * 2)
            .total_tables(n * 4)
            .total_stacks(n)
            .max_memory_size(MAX_MEMORY_BYTES as usize);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    }
    config
}

/// Advances the engine's epoch every tick until the runtime is dropped.
fn start_epoch_ticker(inner: Weak<Inner>) {
    std::thread::Builder::new()
        .name("housekeeper-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match inner.upgrade() {
                    Some(inner) => inner.engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .expect("spawn the epoch ticker thread");
}

fn check_header(what: &str, bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm {
            what: what.to_owned(),
        });
    }
    // Core modules are version 1, layer 0; components use layer 1.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(LoadError::CoreModule {
            what: what.to_owned(),
        });
    }
    Ok(())
}

pub(crate) fn one_line(e: &wasmtime::Error) -> String {
    format!("{e:#}")
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}
