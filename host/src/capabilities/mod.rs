//! Host capabilities: the only way a guest reaches the host. One module per
//! WIT interface, each with its per-run state, its `Host` implementation and
//! its `add_to_linker`.

pub mod budget;
pub mod config;
pub mod filesystem;
pub mod log;
pub mod output;
pub mod sql;
pub mod wasi;

use crate::manifest::DirGrant;
use crate::model::ConfigMap;
use output::Output;
use wasmtime::component::Linker;

/// Everything one run may use, built from its grants.
pub struct RunCapabilities {
    pub wasi: wasi::WasiCapability,
    pub log: log::LogCapability,
    pub config: config::ConfigCapability,
    pub sql: sql::SqlCapability,
}

impl RunCapabilities {
    pub fn new(
        dirs: &[DirGrant],
        dry_run: bool,
        fs_on_guest_thread: bool,
        config: ConfigMap,
        output: &Output,
        mut sql: sql::SqlCapability,
        fs_limits: filesystem::FsLimits,
        clock_ahead: chrono::Duration,
    ) -> anyhow::Result<Self> {
        let wasi = wasi::WasiCapability::new(
            dirs,
            dry_run,
            fs_on_guest_thread,
            output,
            fs_limits,
            clock_ahead,
        )?;
        // One write budget for files and for SQLite's temporary files.
        sql.charge_writes_to(wasi.write_budget());
        Ok(RunCapabilities {
            wasi,
            log: log::LogCapability::new(output.clone()),
            config: config::ConfigCapability::new(config),
            sql,
        })
    }
}

/// A store's data that carries a run's capabilities.
pub trait HasCapabilities: Send + 'static {
    fn capabilities(&mut self) -> &mut RunCapabilities;
}

/// Adds the housekeeper interfaces and puts the capped
/// `wasi:filesystem/types` in place of wasmtime-wasi's. The rest of WASI is
/// added by the runtime, which owns the store type that implements
/// `WasiView`, before this is called.
pub fn add_to_linker<T: HasCapabilities>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    filesystem::add_to_linker(linker, |t: &mut T| t.capabilities().wasi.filesystem())?;
    log::add_to_linker(linker, |t: &mut T| &mut t.capabilities().log)?;
    config::add_to_linker(linker, |t: &mut T| &mut t.capabilities().config)?;
    sql::add_to_linker(linker, |t: &mut T| &mut t.capabilities().sql)?;
    Ok(())
}
