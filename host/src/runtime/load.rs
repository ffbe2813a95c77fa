//! Loading a component: its size and header checked before compiling,
//! one compiled copy per distinct content (from the disk cache when it
//! has one), compile failures that hit a bound remembered by content.

use super::compile::{self, CompileError};
use super::{LoadError, Runtime, TaskComponent, cache, one_line};
use crate::bindings;
use sha2::{Digest, Sha256};
use std::io::Read as _;
use std::path::Path;
use std::sync::{Arc, Weak};

/// At most this many remembered compile failures; past it they are
/// forgotten (and would be compiled again).
const MAX_REMEMBERED_FAILURES: usize = 1024;

impl Runtime {
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
