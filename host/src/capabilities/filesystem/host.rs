//! `wasi:filesystem/types` for the guest: every call of the interface,
//! most of them passed straight to wasmtime-wasi, the others counted
//! against the run's caps (opens, listings, writes, new entries) first.

use super::GuardedFs;
use super::accounting::{WriteBudgetSpent, entry_cost, listing_cost, writable_file, write_cost};
use super::open::{Refused, open_at};
use crate::capabilities::output::Level;
use std::sync::Arc;
use wasmtime::component::Resource;
use wasmtime_wasi::filesystem::Descriptor;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self, ErrorCode, HostDescriptor, HostDirectoryEntryStream,
};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, FsError, FsResult, ReaddirIterator};

impl types::Host for GuardedFs<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<ErrorCode> {
        self.fs.convert_error_code(err)
    }

    fn filesystem_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        if self
            .fs
            .table
            .get(&err)?
            .downcast_ref::<WriteBudgetSpent>()
            .is_some()
        {
            return Ok(Some(ErrorCode::Quota));
        }
        self.fs.filesystem_error_code(err)
    }
}

impl HostDescriptor for GuardedFs<'_> {
    async fn open_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        oflags: types::OpenFlags,
        flags: types::DescriptorFlags,
    ) -> FsResult<Resource<Descriptor>> {
        let dir = match self.fs.table.get(&fd)? {
            Descriptor::Dir(d) => d.clone(),
            Descriptor::File(_) => return Err(ErrorCode::NotDirectory.into()),
        };
        if self.guard.descriptors_full() {
            return Err(self.guard.descriptors_exhausted());
        }
        let blocking = self.guard.blocking_current_thread;
        let budget = self.guard.budget.clone();
        let opened = match open_at(dir, path_flags, path, oflags, flags, blocking, budget).await {
            Ok(opened) => opened,
            Err(Refused::Error(code)) => return Err(code.into()),
            Err(Refused::Special { path, kind }) => {
                self.guard.output.log(
                    Level::Warn,
                    &format!(
                        "refused to open {path:?}: it is {kind}; a task may open only regular files and directories (`not-permitted`)"
                    ),
                );
                return Err(ErrorCode::NotPermitted.into());
            }
        };
        let handle = Arc::downgrade(match &opened {
            Descriptor::File(f) => &f.file,
            Descriptor::Dir(d) => &d.dir,
        });
        let fd = match self.fs.table.push(opened) {
            Ok(fd) => fd,
            Err(e) => return Err(self.guard.table_error(e)),
        };
        self.guard.opened.push(handle);
        Ok(fd)
    }

    async fn read_directory(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<ReaddirIterator>> {
        if self.guard.listings >= self.guard.limits.dir_streams {
            return Err(self.guard.listings_exhausted());
        }
        // wasmtime-wasi reads the whole directory into host memory at once:
        // what that will hold is counted first, without holding it, and
        // taken from the run's memory budget until the listing is dropped.
        let (entries, bytes) = match self.fs.table.get(&fd)? {
            Descriptor::Dir(d) => {
                let dir = d.dir.clone();
                let count = move || listing_cost(&dir);
                if self.guard.blocking_current_thread {
                    count()?
                } else {
                    wasmtime_wasi::runtime::spawn_blocking(count).await?
                }
            }
            // wasmtime-wasi refuses it.
            Descriptor::File(_) => (0, 0),
        };
        if !self.guard.memory.take(bytes) {
            return Err(self.guard.listing_memory_exhausted(entries, bytes));
        }
        match self.fs.read_directory(fd).await {
            Ok(stream) => {
                self.guard.listings += 1;
                self.guard.listing_bytes.insert(stream.rep(), bytes);
                Ok(stream)
            }
            Err(e) => {
                self.guard.memory.give_back(bytes);
                Err(self.guard.fs_error(e))
            }
        }
    }

    async fn write(
        &mut self,
        fd: Resource<Descriptor>,
        buffer: Vec<u8>,
        offset: types::Filesize,
    ) -> FsResult<types::Filesize> {
        if let Some(file) = writable_file(self.fs.table, &fd)? {
            let cost = write_cost(&file, Some(offset), buffer.len() as u64)?;
            self.guard
                .budget
                .charge(cost)
                .map_err(|_| ErrorCode::Quota)?;
        }
        self.fs.write(fd, buffer, offset).await
    }

    async fn set_size(&mut self, fd: Resource<Descriptor>, size: types::Filesize) -> FsResult<()> {
        if let Some(file) = writable_file(self.fs.table, &fd)? {
            let growth = size.saturating_sub(file.metadata()?.len());
            self.guard
                .budget
                .charge(growth)
                .map_err(|_| ErrorCode::Quota)?;
        }
        self.fs.set_size(fd, size).await
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynOutputStream>> {
        let file = writable_file(self.fs.table, &fd)?;
        let stream = self.fs.write_via_stream(fd, offset);
        self.budgeted(stream, file, Some(offset))
    }

    fn append_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<DynOutputStream>> {
        let file = writable_file(self.fs.table, &fd)?;
        let stream = self.fs.append_via_stream(fd);
        self.budgeted(stream, file, None)
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynInputStream>> {
        self.fs
            .read_via_stream(fd, offset)
            .map_err(|e| self.guard.fs_error(e))
    }

    fn drop(&mut self, fd: Resource<Descriptor>) -> wasmtime::Result<()> {
        HostDescriptor::drop(&mut self.fs, fd)
    }

    async fn advise(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
        len: types::Filesize,
        advice: types::Advice,
    ) -> FsResult<()> {
        self.fs.advise(fd, offset, len, advice).await
    }

    async fn sync_data(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.fs.sync_data(fd).await
    }

    async fn get_flags(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorFlags> {
        self.fs.get_flags(fd).await
    }

    async fn get_type(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorType> {
        self.fs.get_type(fd).await
    }

    async fn set_times(
        &mut self,
        fd: Resource<Descriptor>,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.fs.set_times(fd, atim, mtim).await
    }

    async fn read(
        &mut self,
        fd: Resource<Descriptor>,
        len: types::Filesize,
        offset: types::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        self.fs.read(fd, len, offset).await
    }

    async fn sync(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.fs.sync(fd).await
    }

    async fn create_directory_at(
        &mut self,
        fd: Resource<Descriptor>,
        path: String,
    ) -> FsResult<()> {
        let cost = self.charge_entry(&fd, entry_cost(&path, ""))?;
        let made = self.fs.create_directory_at(fd, path).await;
        self.refund_unless_made(made, cost)
    }

    async fn stat(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorStat> {
        self.fs.stat(fd).await
    }

    async fn stat_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::DescriptorStat> {
        self.fs.stat_at(fd, path_flags, path).await
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.fs.set_times_at(fd, path_flags, path, atim, mtim).await
    }

    async fn link_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path_flags: types::PathFlags,
        old_path: String,
        new_descriptor: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        // A hard link takes no inode, but an entry in its directory.
        let cost = self.charge_entry(&new_descriptor, entry_cost(&new_path, ""))?;
        let made = self
            .fs
            .link_at(fd, old_path_flags, old_path, new_descriptor, new_path)
            .await;
        self.refund_unless_made(made, cost)
    }

    async fn readlink_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<String> {
        self.fs.readlink_at(fd, path).await
    }

    async fn remove_directory_at(
        &mut self,
        fd: Resource<Descriptor>,
        path: String,
    ) -> FsResult<()> {
        self.fs.remove_directory_at(fd, path).await
    }

    async fn rename_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path: String,
        new_fd: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        // Not charged: a rename removes the entry it adds, and moves no
        // inode, so the run holds no more entries than it was charged for.
        self.fs.rename_at(fd, old_path, new_fd, new_path).await
    }

    async fn symlink_at(
        &mut self,
        fd: Resource<Descriptor>,
        src_path: String,
        dest_path: String,
    ) -> FsResult<()> {
        // The target is stored with the link: `src_path` is its content.
        let cost = self.charge_entry(&fd, entry_cost(&dest_path, &src_path))?;
        let made = self.fs.symlink_at(fd, src_path, dest_path).await;
        self.refund_unless_made(made, cost)
    }

    async fn unlink_file_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        self.fs.unlink_file_at(fd, path).await
    }

    async fn is_same_object(
        &mut self,
        a: Resource<Descriptor>,
        b: Resource<Descriptor>,
    ) -> wasmtime::Result<bool> {
        self.fs.is_same_object(a, b).await
    }

    async fn metadata_hash(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<types::MetadataHashValue> {
        self.fs.metadata_hash(fd).await
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        self.fs.metadata_hash_at(fd, path_flags, path).await
    }
}

impl HostDirectoryEntryStream for GuardedFs<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<ReaddirIterator>,
    ) -> FsResult<Option<types::DirectoryEntry>> {
        self.fs.read_directory_entry(stream).await
    }

    fn drop(&mut self, stream: Resource<ReaddirIterator>) -> wasmtime::Result<()> {
        let rep = stream.rep();
        HostDirectoryEntryStream::drop(&mut self.fs, stream)?;
        self.guard.listings = self.guard.listings.saturating_sub(1);
        if let Some(bytes) = self.guard.listing_bytes.remove(&rep) {
            self.guard.memory.give_back(bytes);
        }
        Ok(())
    }
}
