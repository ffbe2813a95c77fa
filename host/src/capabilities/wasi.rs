//! The WASI side of the sandbox: filesystem through the manifest's
//! `grants.dirs` only, clocks and random; no environment variables, no
//! arguments, no sockets, no inherited stdio (stdout and stderr are captured
//! into the run's output).

use super::filesystem::{FsGuard, FsLimits, GuardedFs};
use super::output::{CapturedStdio, Output, Stream};
use crate::capabilities::filesystem::WriteBudget;
use crate::manifest::{DirGrant, DirMode};
use anyhow::Context as _;
use std::sync::Arc;
use wasmtime_wasi::filesystem::WasiFilesystemCtxView;
use wasmtime_wasi::{FsPerms, ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView};

/// Filesystems through which the kernel exposes the host itself (its
/// processes' memory and environment, devices, kernel settings). No grant
/// may be one of them, lie inside one, or contain one: a grant of `/` would
/// reach `/proc` below it.
const KERNEL_FILESYSTEMS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "debugfs",
    "tracefs",
    "securityfs",
    "cgroup",
    "cgroup2",
    "bpf",
    "configfs",
    "fusectl",
    "mqueue",
    "pstore",
    "efivarfs",
    "binfmt_misc",
    "hugetlbfs",
    "nsfs",
];

/// Refuses `host` when it is, lies in or contains a mount of a
/// [`KERNEL_FILESYSTEMS`] filesystem, however the path is spelled
/// (symlinks, `..`, bind mounts: the check is on the canonical path against
/// this process's mount table).
/// `mountinfo` is this process's mount table.
pub fn refuse_kernel_filesystems(host: &std::path::Path, mountinfo: &str) -> anyhow::Result<()> {
    let Ok(real) = std::fs::canonicalize(host) else {
        // Not there: opening it fails with its own error.
        return Ok(());
    };
    if let Some((point, fstype)) = kernel_mount_touching(&real, mountinfo) {
        anyhow::bail!(
            "granted directory {} (really {}) {} {} ({fstype}), where the kernel exposes the host itself; grant a directory that holds only the task's files",
            host.display(),
            real.display(),
            if real.starts_with(&point) {
                "is inside"
            } else {
                "contains"
            },
            point.display()
        );
    }
    Ok(())
}

/// The first kernel filesystem mount at, above or below `path` in
/// `mountinfo` (the format of `/proc/self/mountinfo`).
fn kernel_mount_touching(
    path: &std::path::Path,
    mountinfo: &str,
) -> Option<(std::path::PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let point = unescape_mount_path(left.split(' ').nth(4)?);
        let fstype = right.split(' ').next()?;
        let kernel = KERNEL_FILESYSTEMS.contains(&fstype);
        (kernel && (path.starts_with(&point) || point.starts_with(path)))
            .then(|| (point, fstype.to_owned()))
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
/// Filesystems on this machine's own storage (or memory), where a
/// filesystem call always returns. On any other (NFS, SMB, FUSE, 9p, Ceph,
/// or one not named here) a call can wait for as long as a server or a
/// user-space process does: a run whose grants reach one makes its
/// filesystem calls on tokio's blocking pool, so that a call that hangs
/// holds a pool thread, and the run still ends at its deadline and frees
/// its guest worker.
const LOCAL_FILESYSTEMS: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "zfs", "bcachefs", "jfs", "reiserfs", "tmpfs",
    "ramfs", "rootfs", "overlay", "squashfs", "erofs", "vfat", "exfat", "iso9660",
];

/// Whether every filesystem `host` reaches (the mount holding it, and the
/// mounts below it) is a [`LOCAL_FILESYSTEMS`] one, by the mount table
/// `mountinfo`. A path that does not resolve is taken as remote.
fn on_local_filesystems(host: &std::path::Path, mountinfo: &str) -> bool {
    let Ok(real) = std::fs::canonicalize(host) else {
        return false;
    };
    local_mounts_only(&real, mountinfo)
}

/// [`on_local_filesystems`] for the canonical path `path`.
fn local_mounts_only(path: &std::path::Path, mountinfo: &str) -> bool {
    let mounts: Vec<(std::path::PathBuf, &str)> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = unescape_mount_path(left.split(' ').nth(4)?);
            Some((point, right.split(' ').next()?))
        })
        .collect();
    // The mount holding `path` is the last one listed at the longest
    // mount point above it (a later mount on the same point hides earlier).
    let holding = mounts
        .iter()
        .filter(|(point, _)| path.starts_with(point))
        .max_by_key(|(point, _)| point.components().count());
    let below = mounts
        .iter()
        .filter(|(point, _)| point.starts_with(path) && point != path);
    holding.is_some()
        && holding
            .into_iter()
            .chain(below)
            .all(|(_, fstype)| LOCAL_FILESYSTEMS.contains(fstype))
}

fn unescape_mount_path(text: &str) -> std::path::PathBuf {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let n = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |n, b| n * 8 + u32::from(b - b'0'));
            out.push(n as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    std::path::PathBuf::from(std::ffi::OsString::from_vec(out))
}

pub struct WasiCapability {
    ctx: WasiCtx,
    table: ResourceTable,
    fs: FsGuard,
}

/// The system's wall clock set to the database's, as the scheduler's is: a
/// task on a replica whose clock is off still sees the time its schedule
/// and the database go by (an age cut-off on a fast replica does not delete
/// early).
struct DatabaseWallClock {
    ahead: chrono::Duration,
}

impl wasmtime_wasi::HostWallClock for DatabaseWallClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_micros(1)
    }

    fn now(&self) -> std::time::Duration {
        let now = chrono::Utc::now() - self.ahead;
        let since_epoch = now - chrono::DateTime::UNIX_EPOCH;
        since_epoch.to_std().unwrap_or_default()
    }
}

impl WasiCapability {
    /// Preopens each granted directory; in a dry-run every one is read-only.
    /// With `fs_on_guest_thread`, filesystem calls run on the thread that
    /// runs the guest instead of hopping to tokio's blocking pool (about 3x
    /// faster for tasks that touch many files), when every grant is on
    /// local storage (see [`LOCAL_FILESYSTEMS`]). `limits` caps what the run
    /// holds: its resource table never grows past `limits.handles`.
    pub fn new(
        dirs: &[DirGrant],
        dry_run: bool,
        fs_on_guest_thread: bool,
        output: &Output,
        limits: FsLimits,
        clock_ahead: chrono::Duration,
    ) -> anyhow::Result<Self> {
        let mountinfo = if dirs.is_empty() {
            String::new()
        } else {
            std::fs::read_to_string("/proc/self/mountinfo")
                .context("cannot read /proc/self/mountinfo to check the granted directories")?
        };
        let fs_on_guest_thread = fs_on_guest_thread
            && dirs
                .iter()
                .all(|d| on_local_filesystems(&d.host, &mountinfo));
        let mut builder = WasiCtxBuilder::new();
        if !clock_ahead.is_zero() {
            builder.wall_clock(DatabaseWallClock { ahead: clock_ahead });
        }
        builder
            .stdout(CapturedStdio::new(output.clone(), Stream::Stdout))
            .stderr(CapturedStdio::new(output.clone(), Stream::Stderr))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .allow_blocking_current_thread(fs_on_guest_thread);
        for dir in dirs {
            refuse_kernel_filesystems(&dir.host, &mountinfo)?;
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

    /// The run's write budget (`limits.write_bytes`).
    pub(crate) fn write_budget(&self) -> Arc<WriteBudget> {
        self.fs.write_budget()
    }

    pub fn view(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:21 / /proc rw,nosuid - proc proc rw
24 22 0:22 / /sys rw - sysfs sysfs rw
25 22 0:5 / /dev rw - devtmpfs udev rw
26 22 0:30 / /srv/logs rw - ext4 /dev/vdb rw
27 22 0:21 / /srv/with\\040space/p rw - proc proc rw
";

    #[test]
    fn only_grants_on_local_storage_keep_filesystem_calls_on_the_guest_thread() {
        let table = "\
30 1 0:40 / / rw - overlay overlay rw
31 30 8:1 / /srv/logs rw - ext4 /dev/vdb rw
32 30 0:50 / /mnt/share rw - nfs4 server:/export rw
33 30 0:51 / /mnt/sshfs rw - fuse.sshfs user@host:/ rw
34 30 0:52 / /srv/mixed/smb rw - cifs //server/share rw
35 30 0:53 / /srv/shadowed rw - nfs server:/a rw
36 30 8:2 / /srv/shadowed rw - xfs /dev/vdc rw
37 30 0:54 / /srv/again rw - xfs /dev/vdd rw
38 30 0:55 / /srv/again rw - 9p tag rw
39 30 0:56 / /srv/with\\040space rw - fuse.rclone remote: rw
40 30 0:57 / /srv/unknown rw - somefs none rw
41 30 0:58 / /run/tmp rw - tmpfs tmpfs rw
";
        for (path, local) in [
            ("/srv/logs", true),
            ("/srv/logs/app/2026", true),
            ("/var/lib/data", true),
            ("/run/tmp/x", true),
            ("/mnt/share", false),
            ("/mnt/share/deep/er", false),
            ("/mnt", false),
            ("/mnt/sshfs/x", false),
            ("/srv/mixed", false),
            ("/srv/shadowed/x", true),
            ("/srv/again/x", false),
            ("/srv/with space/x", false),
            ("/srv/unknown", false),
            ("/", false),
        ] {
            assert_eq!(local_mounts_only(Path::new(path), table), local, "{path}");
        }
        assert!(
            !local_mounts_only(Path::new("/srv/logs"), ""),
            "no mount table: not local"
        );
    }

    #[test]
    fn grants_at_in_or_around_kernel_filesystems_are_found() {
        for (path, point) in [
            ("/proc", "/proc"),
            ("/proc/self", "/proc"),
            ("/sys/kernel", "/sys"),
            ("/dev", "/dev"),
            ("/", "/proc"),
            ("/srv/with space", "/srv/with space/p"),
        ] {
            let found = kernel_mount_touching(Path::new(path), MOUNTINFO);
            assert_eq!(
                found.map(|(p, _)| p),
                Some(Path::new(point).to_owned()),
                "{path}"
            );
        }
        for path in [
            "/srv/logs",
            "/srv/logs/app",
            "/var/log",
            "/procfs",
            "/srv/with",
        ] {
            assert_eq!(
                kernel_mount_touching(Path::new(path), MOUNTINFO),
                None,
                "{path}"
            );
        }
    }

    #[test]
    fn this_machine_s_proc_and_root_are_refused_however_spelled() {
        let tmp = tempfile::tempdir().unwrap();
        let link = tmp.path().join("p");
        std::os::unix::fs::symlink("/proc", &link).unwrap();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for path in [
            Path::new("/proc"),
            Path::new("/proc/self"),
            Path::new("/"),
            Path::new("/proc/../proc/./self/.."),
            link.as_path(),
        ] {
            let err = refuse_kernel_filesystems(path, &mounts)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("where the kernel exposes the host"),
                "{path:?}: {err}"
            );
        }
        refuse_kernel_filesystems(tmp.path(), &mounts).unwrap();
    }
}
