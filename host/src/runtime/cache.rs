//! On-disk cache of compiled components: `<dir>/<content-sha256>-<engine>.cwasm`,
//! where `<engine>` fingerprints the wasmtime build and configuration.
//!
//! An entry is `sha256(payload) || payload`. Loading checks the digest
//! before wasmtime ever sees the bytes, and wasmtime checks that the
//! payload was made by a compatible engine; anything that fails either
//! check is compiled afresh and rewritten. Entries are written to a
//! temporary name and renamed, so a crash never leaves half an entry.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Feeds whatever `Hash` writes into SHA-256, for a fingerprint that does
/// not depend on std's hasher.
struct Fingerprint(Sha256);

impl Hasher for Fingerprint {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        0
    }
}

/// Hex fingerprint of what makes compiled code compatible with `engine`.
pub fn engine_fingerprint(engine: &Engine) -> String {
    let mut hasher = Fingerprint(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(&hasher.0.finalize()[..12])
}

pub struct CompileCache {
    dir: PathBuf,
    engine_fingerprint: String,
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Compiled,
    Cached,
}

impl CompileCache {
    pub fn new(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(CompileCache {
            dir: dir.to_owned(),
            engine_fingerprint: engine_fingerprint(engine),
        })
    }

    fn path(&self, content_hash: &str) -> PathBuf {
        self.dir
            .join(format!("{content_hash}-{}.cwasm", self.engine_fingerprint))
    }

    /// The component whose bytes have the SHA-256 `content_hash`, from the
    /// cache when a valid entry exists, else from `compile` and stored.
    ///
    /// `compile` may hand back the component's serialized form too (a compile
    /// worker's output is exactly that), which is then stored as it is.
    pub fn load<E>(
        &self,
        engine: &Engine,
        content_hash: &str,
        compile: impl FnOnce() -> Result<(Component, Option<Vec<u8>>), E>,
    ) -> Result<(Component, Source), E> {
        let path = self.path(content_hash);
        if let Some(component) = self.read(engine, &path) {
            return Ok((component, Source::Cached));
        }
        let (component, serialized) = compile()?;
        if let Err(e) = self.write(&path, &component, serialized) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the compile cache entry");
        }
        Ok((component, Source::Compiled))
    }

    fn read(&self, engine: &Engine, path: &Path) -> Option<Component> {
        let entry = std::fs::read(path).ok()?;
        let valid = entry.len() > 32 && Sha256::digest(&entry[32..])[..] == entry[..32];
        if !valid {
            tracing::warn!(path = %path.display(), "corrupt compile cache entry; recompiling");
            return None;
        }
        // SAFETY: the payload is byte for byte what `Component::serialize`
        // wrote into our own cache directory (the digest above proves it was
        // not truncated or altered since), and wasmtime checks that it was
        // produced by a compatible engine before using it.
        match unsafe { Component::deserialize(engine, &entry[32..]) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unusable compile cache entry; recompiling");
                None
            }
        }
    }

    fn write(
        &self,
        path: &Path,
        component: &Component,
        serialized: Option<Vec<u8>>,
    ) -> anyhow::Result<()> {
        let payload = match serialized {
            Some(bytes) => bytes,
            None => component.serialize().map_err(anyhow::Error::from)?,
        };
        let mut entry = Sha256::digest(&payload).to_vec();
        entry.extend_from_slice(&payload);
        // Unique per write: two loads of the same content may race here.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
        std::fs::write(&tmp, &entry)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}
