//! `housekeeper:task/log`: leveled messages into the run's output.

use super::output::{Level, Output};
use crate::bindings::housekeeper::task::log::{self as wit, Host};
use wasmtime::component::{HasSelf, Linker};

pub struct LogCapability {
    output: Output,
}

impl LogCapability {
    pub fn new(output: Output) -> Self {
        LogCapability { output }
    }
}

impl Host for LogCapability {
    fn log(&mut self, level: wit::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            wit::Level::Trace => Level::Trace,
            wit::Level::Debug => Level::Debug,
            wit::Level::Info => Level::Info,
            wit::Level::Warn => Level::Warn,
            wit::Level::Error => Level::Error,
        };
        self.output.log(level, &message);
        Ok(())
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut LogCapability,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<LogCapability>>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_land_in_the_output_with_their_level() {
        let output = Output::new("t", "r", 1024);
        let mut log = LogCapability::new(output.clone());
        log.log(wit::Level::Error, "disk full".into()).unwrap();
        log.log(wit::Level::Debug, "two\nlines".into()).unwrap();
        assert_eq!(
            output.finish(),
            "[error] disk full\n[debug] two\n[debug] lines\n"
        );
    }
}
