//! Compiling a component within bounds.
//!
//! Cranelift's time and memory grow with the shape of the code, not just its
//! size: a megabyte of nested blocks takes seconds and hundreds of MiB. A
//! component is refused above a size limit before anything reads it, and a
//! service compiles in a child process of its own binary
//! (`housekeeper __compile`) that the kernel holds to a memory limit
//! (`RLIMIT_DATA`) and the parent kills at a deadline. A compile that hits
//! a bound is a load error for that component only; the service's threads
//! never run Cranelift.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::one_line;

/// The argument that makes the binary a compile worker.
pub const WORKER_ARG: &str = "__compile";

pub const DEFAULT_MAX_SIZE: u64 = 128 << 20;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_MEMORY: u64 = 4 << 30;

/// Bounds on compiling one component.
#[derive(Debug, Clone)]
pub struct CompileLimits {
    /// Largest component file accepted, in bytes
    /// (`HOUSEKEEPER_MAX_COMPONENT_SIZE`).
    pub max_size: u64,
    /// Compile in a bounded child process; `None` compiles in this process
    /// (tests and benchmarks, which load only components they trust).
    pub isolated: Option<Isolated>,
}

impl Default for CompileLimits {
    fn default() -> Self {
        CompileLimits {
            max_size: DEFAULT_MAX_SIZE,
            isolated: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Isolated {
    /// The housekeeper binary to run as `__compile`.
    pub program: PathBuf,
    /// `HOUSEKEEPER_COMPILE_TIMEOUT`.
    pub timeout: Duration,
    /// `HOUSEKEEPER_COMPILE_MEMORY`: the child's data limit, in bytes.
    pub memory: u64,
}

impl Isolated {
    /// Compiling in this very binary, with the given bounds.
    pub fn current_exe(timeout: Duration, memory: u64) -> std::io::Result<Self> {
        Ok(Isolated {
            program: std::env::current_exe()?,
            timeout,
            memory,
        })
    }
}

/// Why compiling did not produce a component.
#[derive(Debug)]
pub enum CompileError {
    /// The component itself is invalid (the first line of wasmtime's error).
    Invalid(String),
    /// A bound was hit; the text names it.
    Bound(String),
}

/// Compiles `bytes` for `engine` within `limits`; with the compiled form
/// when a compile worker made it (ready for the on-disk cache as it is).
pub fn compile(
    engine: &Engine,
    bytes: &[u8],
    limits: &CompileLimits,
) -> Result<(Component, Option<Vec<u8>>), CompileError> {
    let Some(isolated) = &limits.isolated else {
        return Component::new(engine, bytes)
            .map(|c| (c, None))
            .map_err(|e| CompileError::Invalid(one_line(&e)));
    };
    let serialized = compile_in_child(isolated, bytes)?;
    // SAFETY: the bytes are what our own binary's `precompile_component`
    // wrote to the pipe just now, and wasmtime checks they were made by a
    // compatible engine before using them.
    let component = unsafe { Component::deserialize(engine, &serialized) }.map_err(|e| {
        CompileError::Invalid(format!(
            "the compile worker's output is unusable: {}",
            one_line(&e)
        ))
    })?;
    Ok((component, Some(serialized)))
}

fn compile_in_child(isolated: &Isolated, bytes: &[u8]) -> Result<Vec<u8>, CompileError> {
    let spawn_error = |e: std::io::Error| {
        CompileError::Bound(format!(
            "cannot start the compile worker {}: {e}",
            isolated.program.display()
        ))
    };
    let mut command = Command::new(&isolated.program);
    command
        .arg(WORKER_ARG)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let memory = isolated.memory;
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(move || {
            use rustix::process::{Resource, Rlimit, setrlimit};
            let limit = |n| Rlimit {
                current: Some(n),
                maximum: Some(n),
            };
            setrlimit(Resource::Data, limit(memory))?;
            setrlimit(Resource::Core, limit(0))?;
            // The worker never outlives the process that waits for it.
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(spawn_error)?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.take(16 * 1024).read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + isolated.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(spawn_error(e)),
        }
    };
    let _ = writer.join();
    let serialized = reader.join().unwrap_or_default();
    let message = errors.join().unwrap_or_default();
    let Some(status) = status else {
        return Err(CompileError::Bound(format!(
            "compiling took longer than {} (HOUSEKEEPER_COMPILE_TIMEOUT)",
            humantime::format_duration(isolated.timeout)
        )));
    };
    if status.success() {
        return Ok(serialized);
    }
    if message.contains("memory allocation of") || status.code().is_none() {
        return Err(CompileError::Bound(format!(
            "compiling needed more than {} of memory (HOUSEKEEPER_COMPILE_MEMORY)",
            human_bytes(memory)
        )));
    }
    let first = message
        .lines()
        .next()
        .unwrap_or("the compile worker failed");
    Err(CompileError::Invalid(first.to_owned()))
}

/// `housekeeper __compile`: a component on stdin, its compiled form on
/// stdout, the first line of any error on stderr.
pub fn worker_main() -> ExitCode {
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("cannot read the component: {e}");
        return ExitCode::FAILURE;
    }
    let compiled = Engine::new(&super::engine_config(None))
        .and_then(|engine| engine.precompile_component(&bytes));
    match compiled {
        Ok(out) => match std::io::stdout().lock().write_all(&out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cannot write the compiled component: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("{}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 30 && n % (1 << 30) == 0 {
        format!("{} GiB", n >> 30)
    } else {
        format!("{} MiB", n >> 20)
    }
}
