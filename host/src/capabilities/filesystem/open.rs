//! Opening a path: wasmtime-wasi's sandboxed resolution and permission
//! checks, with every file opened `O_NONBLOCK` and anything but a regular
//! file or a directory refused, so that no open waits on a special file.

use super::accounting::{WriteBudget, entry_cost};
use std::os::unix::fs::FileTypeExt;
use std::sync::Arc;
use wasmtime_wasi::OpenMode;
use wasmtime_wasi::filesystem::{Descriptor, Dir, File};
use wasmtime_wasi::p2::bindings::filesystem::types::{self, ErrorCode};

/// Why an open was refused.
pub(super) enum Refused {
    Error(ErrorCode),
    Special { path: String, kind: &'static str },
}

impl From<std::io::Error> for Refused {
    fn from(e: std::io::Error) -> Self {
        Refused::Error(e.into())
    }
}

impl From<rustix::io::Errno> for Refused {
    fn from(e: rustix::io::Errno) -> Self {
        Refused::Error(std::io::Error::from(e).into())
    }
}

/// `open-at` as wasmtime-wasi does it (`Dir::open_at`: the same flags, the
/// same permission checks, the same sandboxed path resolution from
/// cap-primitives), except that the file is opened `O_NONBLOCK` and anything
/// but a regular file or a directory is closed again and refused. Opening a
/// FIFO without `O_NONBLOCK` blocks until the other end is opened, which a
/// guest could wait for forever; with it, the open returns at once (or
/// fails, `ENXIO`, for a FIFO opened to write or a socket), and checking the
/// type of what was opened — not of what a path named a moment earlier —
/// leaves nothing to race. An open that creates a file spends the write
/// budget's charge for a new entry first (given back if the open fails).
pub(super) async fn open_at(
    dir: Dir,
    path_flags: types::PathFlags,
    path: String,
    oflags: types::OpenFlags,
    flags: types::DescriptorFlags,
    blocking_current_thread: bool,
    budget: Arc<WriteBudget>,
) -> Result<Descriptor, Refused> {
    use cap_primitives::fs::{FollowSymlinks, OpenOptions};
    use types::{DescriptorFlags, OpenFlags, PathFlags};

    let mut create = false;
    let mut open_mode = OpenMode::empty();
    let mut opts = OpenOptions::new();
    if oflags.contains(OpenFlags::CREATE) {
        if oflags.contains(OpenFlags::EXCLUSIVE) {
            opts.create_new(true);
        } else {
            opts.create(true);
        }
        create = true;
        opts.write(true);
        open_mode |= OpenMode::WRITE;
    }
    if oflags.contains(OpenFlags::TRUNCATE) {
        opts.truncate(true).write(true);
        open_mode |= OpenMode::WRITE;
    }
    if flags.contains(DescriptorFlags::READ) {
        opts.read(true);
        open_mode |= OpenMode::READ;
    }
    if flags.contains(DescriptorFlags::WRITE) {
        opts.write(true);
        open_mode |= OpenMode::WRITE;
    } else {
        opts.read(true);
        open_mode |= OpenMode::READ;
    }
    let follow = if path_flags.contains(PathFlags::SYMLINK_FOLLOW) {
        FollowSymlinks::Yes
    } else {
        FollowSymlinks::No
    };
    opts._cap_fs_ext_follow(follow);
    opts._cap_fs_ext_nonblock(true);
    if flags.intersects(
        DescriptorFlags::FILE_INTEGRITY_SYNC
            | DescriptorFlags::DATA_INTEGRITY_SYNC
            | DescriptorFlags::REQUESTED_WRITE_SYNC,
    ) {
        return Err(Refused::Error(ErrorCode::Unsupported));
    }
    if oflags.contains(OpenFlags::DIRECTORY)
        && oflags.intersects(OpenFlags::CREATE | OpenFlags::EXCLUSIVE | OpenFlags::TRUNCATE)
    {
        return Err(Refused::Error(ErrorCode::Invalid));
    }
    if dir.perms.write_not_permitted() && (create || open_mode.contains(OpenMode::WRITE)) {
        return Err(Refused::Error(ErrorCode::NotPermitted));
    }

    enum Opened {
        Dir(std::fs::File),
        File(std::fs::File),
    }
    let start = dir.dir.clone();
    let want_dir = oflags.contains(OpenFlags::DIRECTORY);
    let exclusive = oflags.contains(OpenFlags::EXCLUSIVE);
    let open = move || -> Result<Opened, Refused> {
        // Whether this open makes a new entry: an exclusive create always
        // does; a plain one when nothing is there yet.
        let charged = if create
            && (exclusive
                || matches!(
                    cap_primitives::fs::stat(&start, path.as_ref(), follow),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound
                )) {
            let cost = entry_cost(&path, "");
            budget
                .charge(cost)
                .map_err(|_| Refused::Error(ErrorCode::Quota))?;
            cost
        } else {
            0
        };
        let opened = cap_primitives::fs::open(&start, path.as_ref(), &opts);
        if opened.is_err() {
            budget.refund(charged);
        }
        let file = match opened {
            Ok(file) => file,
            // What the kernel says when a socket or a FIFO without a reader
            // is opened without blocking.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) => {
                let kind = cap_primitives::fs::stat(&start, path.as_ref(), follow)
                    .map(|m| {
                        use cap_primitives::fs::FileTypeExt as _;
                        let t = m.file_type();
                        special_kind([
                            t.is_fifo(),
                            t.is_socket(),
                            t.is_char_device(),
                            t.is_block_device(),
                        ])
                    })
                    .unwrap_or("a special file");
                return Err(Refused::Special { path, kind });
            }
            Err(e) => return Err(e.into()),
        };
        let file_type = file.metadata()?.file_type();
        if file_type.is_dir() {
            Ok(Opened::Dir(file))
        } else if want_dir {
            Err(Refused::Error(ErrorCode::NotDirectory))
        } else if file_type.is_file() {
            // Reads and writes of a regular file ignore O_NONBLOCK on Linux
            // anyway; clear it so the descriptor is what the guest asked for.
            let flags = rustix::fs::fcntl_getfl(&file)?;
            rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)?;
            Ok(Opened::File(file))
        } else {
            Err(Refused::Special {
                path,
                kind: special_kind([
                    file_type.is_fifo(),
                    file_type.is_socket(),
                    file_type.is_char_device(),
                    file_type.is_block_device(),
                ]),
            })
        }
    };
    let opened = if blocking_current_thread {
        open()?
    } else {
        wasmtime_wasi::runtime::spawn_blocking(open).await?
    };
    Ok(match opened {
        Opened::Dir(d) => {
            Descriptor::Dir(Dir::new(d, dir.perms, open_mode, blocking_current_thread))
        }
        Opened::File(f) => {
            Descriptor::File(File::new(f, dir.perms, open_mode, blocking_current_thread))
        }
    })
}

/// A special file's kind in words, from its `[fifo, socket, char, block]`
/// flags.
fn special_kind(is: [bool; 4]) -> &'static str {
    match is {
        [true, ..] => "a FIFO",
        [_, true, ..] => "a socket",
        [_, _, true, _] => "a character device",
        [_, _, _, true] => "a block device",
        _ => "a special file",
    }
}
