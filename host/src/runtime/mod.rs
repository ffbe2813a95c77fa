//! The sandbox: one wasmtime `Engine`, compilation and pre-instantiation of
//! components, and runs under fuel, memory, deadline and output limits.
//!
//! This is the only module (with `capabilities/`, which implements the WIT
//! imports) that touches wasmtime. Callers get plain types: [`TaskComponent`]
//! is opaque, [`RunResult`](crate::model::RunResult) and
//! [`TaskInfo`](crate::model::TaskInfo) are data.

mod cache;
pub mod compile;
pub(crate) mod limits;
mod load;
pub mod report;
mod run;

use crate::bindings;
pub use crate::capabilities::budget::MemoryBudget;
use crate::capabilities::output::DEFAULT_OUTPUT_CAP;
use crate::capabilities::sql::{Connections, SqlLimits};
use crate::capabilities::{self, HasCapabilities, RunCapabilities};
use crate::manifest::{DatabaseGrant, DirGrant, MAX_MEMORY_BYTES, Manifest, ResourceLimits};
use crate::model::{ConfigMap, RunStatus, Trigger};
use chrono::{DateTime, Utc};
use compile::CompileLimits;
use limits::MemoryLimiter;
use std::sync::{Arc, Weak};
use std::time::Duration;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi::{WasiCtxView, WasiView};

/// How often the engine's epoch advances: the granularity of deadlines and
/// of the guest's cooperative yields.
const EPOCH_TICK: Duration = Duration::from_millis(10);

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

    /// The database connections manifests may grant.
    pub fn connections(&self) -> &Connections {
        &self.inner.options.connections
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

pub(crate) fn one_line(e: &wasmtime::Error) -> String {
    format!("{e:#}")
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}
