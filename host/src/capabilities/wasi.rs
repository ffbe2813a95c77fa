//! The WASI side of the sandbox: filesystem through the manifest's
//! `grants.dirs` only, clocks and random; no environment variables, no
//! arguments, no sockets, no inherited stdio (stdout and stderr are captured
//! into the run's output).

use super::filesystem::{FsGuard, FsLimits, GuardedFs};
use super::output::{CapturedStdio, Output, Stream};
use crate::manifest::{DirGrant, DirMode};
use anyhow::Context as _;
use wasmtime_wasi::filesystem::WasiFilesystemCtxView;
use wasmtime_wasi::{FsPerms, ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView};

pub struct WasiCapability {
    ctx: WasiCtx,
    table: ResourceTable,
    fs: FsGuard,
}

impl WasiCapability {
    /// Preopens each granted directory; in a dry-run every one is read-only.
    /// With `fs_on_guest_thread`, filesystem calls run on the thread that
    /// runs the guest instead of hopping to tokio's blocking pool (about 3x
    /// faster for tasks that touch many files). `limits` caps what the run
    /// holds: its resource table never grows past `limits.handles`.
    pub fn new(
        dirs: &[DirGrant],
        dry_run: bool,
        fs_on_guest_thread: bool,
        output: &Output,
        limits: FsLimits,
    ) -> anyhow::Result<Self> {
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdout(CapturedStdio::new(output.clone(), Stream::Stdout))
            .stderr(CapturedStdio::new(output.clone(), Stream::Stderr))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .allow_blocking_current_thread(fs_on_guest_thread);
        for dir in dirs {
            let perms = match dir.mode {
                DirMode::Rw if !dry_run => FsPerms::ReadWrite,
                _ => FsPerms::ReadOnly,
            };
            builder
                .preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(anyhow::Error::from)
                .with_context(|| {
                    format!(
                        "granted directory {} (guest {}) cannot be opened",
                        dir.host.display(),
                        dir.guest
                    )
                })?;
        }
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.resources.handles as usize);
        Ok(WasiCapability {
            ctx: builder.build(),
            table,
            fs: FsGuard::new(limits, fs_on_guest_thread, output),
        })
    }

    /// `wasi:filesystem/types` of this run, under its caps.
    pub fn filesystem(&mut self) -> GuardedFs<'_> {
        GuardedFs {
            fs: WasiFilesystemCtxView {
                ctx: self.ctx.filesystem(),
                table: &mut self.table,
            },
            guard: &mut self.fs,
        }
    }

    pub fn view(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}
