//! Leveled messages. They land in the run's output and in the host's logs.

use crate::bindings::housekeeper::task::log::{Level, log};

pub fn trace(message: impl AsRef<str>) {
    log(Level::Trace, message.as_ref());
}

pub fn debug(message: impl AsRef<str>) {
    log(Level::Debug, message.as_ref());
}

pub fn info(message: impl AsRef<str>) {
    log(Level::Info, message.as_ref());
}

pub fn warn(message: impl AsRef<str>) {
    log(Level::Warn, message.as_ref());
}

pub fn error(message: impl AsRef<str>) {
    log(Level::Error, message.as_ref());
}
