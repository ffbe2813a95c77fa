//! Typed reads of the manifest's `[config]` table. A value of the wrong type
//! is an [`Error::InvalidConfig`] naming the key, so a task can `?` it.

use crate::Error;
use crate::bindings::housekeeper::task::config::{self as host, Value};

pub use crate::bindings::housekeeper::task::config::Value as RawValue;

/// The raw value of `key`, if set.
pub fn get(key: &str) -> Option<Value> {
    host::get(key)
}

/// Every key that is set.
pub fn keys() -> Vec<String> {
    host::keys()
}

fn wrong(key: &str, expected: &str, got: &Value) -> Error {
    let got = match got {
        Value::Text(s) => format!("text {s:?}"),
        Value::Integer(i) => format!("integer {i}"),
        Value::Float(f) => format!("float {f}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Json(j) => format!("value {j}"),
    };
    Error::InvalidConfig(format!("`{key}` must be {expected}, got {got}"))
}

pub fn string(key: &str) -> Result<Option<String>, Error> {
    match get(key) {
        None => Ok(None),
        Some(Value::Text(s)) => Ok(Some(s)),
        Some(other) => Err(wrong(key, "a string", &other)),
    }
}

pub fn string_or(key: &str, default: &str) -> Result<String, Error> {
    Ok(string(key)?.unwrap_or_else(|| default.to_owned()))
}

/// A non-negative integer. Text holding digits is accepted too, since values
/// given as `--config key=value` may arrive as text.
pub fn u64(key: &str) -> Result<Option<u64>, Error> {
    match get(key) {
        None => Ok(None),
        Some(Value::Integer(i)) if i >= 0 => Ok(Some(i as u64)),
        Some(Value::Text(s)) if s.trim().parse::<u64>().is_ok() => Ok(s.trim().parse().ok()),
        Some(other) => Err(wrong(key, "a non-negative integer", &other)),
    }
}

pub fn f64(key: &str) -> Result<Option<f64>, Error> {
    match get(key) {
        None => Ok(None),
        Some(Value::Float(f)) => Ok(Some(f)),
        Some(Value::Integer(i)) => Ok(Some(i as f64)),
        Some(Value::Text(s)) if s.trim().parse::<f64>().is_ok() => Ok(s.trim().parse().ok()),
        Some(other) => Err(wrong(key, "a number", &other)),
    }
}

pub fn bool(key: &str) -> Result<Option<bool>, Error> {
    match get(key) {
        None => Ok(None),
        Some(Value::Boolean(b)) => Ok(Some(b)),
        Some(Value::Text(s)) if s == "true" || s == "false" => Ok(Some(s == "true")),
        Some(other) => Err(wrong(key, "true or false", &other)),
    }
}

pub fn bool_or(key: &str, default: bool) -> Result<bool, Error> {
    Ok(bool(key)?.unwrap_or(default))
}
