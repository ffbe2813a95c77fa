//! The run's output: `log` messages and the guest's stdout and stderr, kept
//! in one capped buffer and forwarded to `tracing` with the task and run.
//!
//! Past the cap, further output is counted and dropped (also from `tracing`,
//! so a flooding guest cannot flood the host's logs either); the final text
//! says how much was dropped.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Default cap on a run's output, in bytes.
pub const DEFAULT_OUTPUT_CAP: usize = 64 * 1024;

/// A partial line longer than this is emitted as if it ended here.
const MAX_LINE: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    fn tag(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Shared handle to one run's output.
#[derive(Clone)]
pub struct Output {
    inner: Arc<Mutex<Inner>>,
    task: Arc<str>,
    run_id: Arc<str>,
}

struct Inner {
    text: String,
    cap: usize,
    dropped_bytes: usize,
    /// Unterminated stdout / stderr lines.
    pending: [Vec<u8>; 2],
}

impl Output {
    pub fn new(task: &str, run_id: &str, cap: usize) -> Self {
        Output {
            inner: Arc::new(Mutex::new(Inner {
                text: String::new(),
                cap,
                dropped_bytes: 0,
                pending: [Vec::new(), Vec::new()],
            })),
            task: task.into(),
            run_id: run_id.into(),
        }
    }

    pub fn log(&self, level: Level, message: &str) {
        let mut inner = self.lock();
        for line in message.lines() {
            self.append(&mut inner, level, level.tag(), line);
        }
        if message.is_empty() {
            self.append(&mut inner, level, level.tag(), "");
        }
    }

    /// Bytes the guest wrote to stdout or stderr; emitted line by line.
    pub fn write(&self, stream: Stream, mut bytes: &[u8]) {
        let mut inner = self.lock();
        let slot = stream as usize;
        while !bytes.is_empty() {
            let room = MAX_LINE - inner.pending[slot].len();
            let window = &bytes[..bytes.len().min(room)];
            let (take, line_end) = match window.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (window.len(), false),
            };
            inner.pending[slot].extend_from_slice(&bytes[..take]);
            bytes = &bytes[take + usize::from(line_end)..];
            if line_end || inner.pending[slot].len() >= MAX_LINE {
                self.flush_line(&mut inner, stream);
            }
        }
    }

    /// The captured text, with unterminated lines flushed and a marker if
    /// anything was dropped.
    pub fn finish(&self) -> String {
        let mut inner = self.lock();
        for stream in [Stream::Stdout, Stream::Stderr] {
            if !inner.pending[stream as usize].is_empty() {
                self.flush_line(&mut inner, stream);
            }
        }
        let mut text = inner.text.clone();
        if inner.dropped_bytes > 0 {
            text.push_str(&format!(
                "[output truncated: {} more bytes dropped past the {}-byte cap]\n",
                inner.dropped_bytes, inner.cap
            ));
        }
        text
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves only text behind; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flush_line(&self, inner: &mut Inner, stream: Stream) {
        let bytes = std::mem::take(&mut inner.pending[stream as usize]);
        let line = String::from_utf8_lossy(&bytes);
        let (level, tag) = match stream {
            Stream::Stdout => (Level::Info, "stdout"),
            // Guests write diagnostics of every kind to stderr.
            Stream::Stderr => (Level::Info, "stderr"),
        };
        self.append(inner, level, tag, &line);
    }

    fn append(&self, inner: &mut Inner, level: Level, tag: &str, line: &str) {
        let entry_len = tag.len() + line.len() + 4;
        if inner.dropped_bytes > 0 || inner.text.len() + entry_len > inner.cap {
            if inner.dropped_bytes == 0 {
                tracing::warn!(task = %self.task, run = %self.run_id, cap = inner.cap, "run output cap reached; dropping further output");
            }
            inner.dropped_bytes += line.len() + 1;
            return;
        }
        inner.text.push('[');
        inner.text.push_str(tag);
        inner.text.push_str("] ");
        inner.text.push_str(line);
        inner.text.push('\n');
        let (task, run) = (&*self.task, &*self.run_id);
        // The host's log may be a terminal: the task's text is shown, not sent.
        let line = crate::terminal::escape(line);
        match level {
            Level::Trace => tracing::trace!(task, run, source = tag, "{line}"),
            Level::Debug => tracing::debug!(task, run, source = tag, "{line}"),
            Level::Info => tracing::info!(task, run, source = tag, "{line}"),
            Level::Warn => tracing::warn!(task, run, source = tag, "{line}"),
            Level::Error => tracing::error!(task, run, source = tag, "{line}"),
        }
    }
}

/// The guest's stdout or stderr, captured into an [`Output`].
pub struct CapturedStdio {
    output: Output,
    stream: Stream,
}

impl CapturedStdio {
    pub fn new(output: Output, stream: Stream) -> Self {
        CapturedStdio { output, stream }
    }
}

impl IsTerminal for CapturedStdio {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedStdio {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(Writer {
            output: self.output.clone(),
            stream: self.stream,
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(Writer {
            output: self.output.clone(),
            stream: self.stream,
        })
    }
}

struct Writer {
    output: Output,
    stream: Stream,
}

impl OutputStream for Writer {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.output.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Writer {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Writer {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.output.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_and_streams_are_tagged_lines() {
        let out = Output::new("t", "r", 1024);
        out.log(Level::Warn, "careful");
        out.write(Stream::Stdout, b"hello ");
        out.write(Stream::Stderr, b"oops\n");
        out.write(Stream::Stdout, b"world\nand more");
        assert_eq!(
            out.finish(),
            "[warn] careful\n[stderr] oops\n[stdout] hello world\n[stdout] and more\n"
        );
    }

    #[test]
    fn output_past_the_cap_is_dropped_and_counted() {
        let out = Output::new("t", "r", 100);
        for i in 0..100 {
            out.log(Level::Info, &format!("line {i}"));
        }
        let text = out.finish();
        assert!(text.starts_with("[info] line 0\n"));
        let (kept, _) = text.split_once("[output truncated:").unwrap();
        assert!(kept.len() <= 100, "{text}");
        assert!(!text.contains("line 99"));
    }

    #[test]
    fn endless_lines_are_split() {
        let out = Output::new("t", "r", 1 << 20);
        out.write(Stream::Stdout, &vec![b'x'; MAX_LINE * 2 + 10]);
        assert_eq!(out.finish().lines().count(), 3);
    }
}
