//! Typed reads of the manifest's `[config]` table. A value of the wrong type
//! is an [`Error::InvalidConfig`] naming the key, so a task can `?` it.

use crate::Error;
use crate::bindings::housekeeper::task::config::{self as host, Value};
use crate::sql::Ident;
use crate::time::Age;

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

/// A string that must be set: "`key` is required" otherwise.
pub fn required(key: &str) -> Result<String, Error> {
    string(key)?.ok_or_else(|| Error::InvalidConfig(format!("`{key}` is required")))
}

/// A table name that must be set, checked and quoted ([`Ident`]).
pub fn table(key: &str) -> Result<Ident, Error> {
    Ident::parse(key, &required(key)?)
}

/// A table or column name, checked and quoted, if set.
pub fn ident(key: &str) -> Result<Option<Ident>, Error> {
    string(key)?
        .map(|name| Ident::parse(key, &name))
        .transpose()
}

pub fn ident_or(key: &str, default: &str) -> Result<Ident, Error> {
    Ident::parse(key, &string_or(key, default)?)
}

/// Names given as a list (`["a", "b"]`) or as text separated by commas;
/// none when unset.
pub fn idents(key: &str) -> Result<Vec<Ident>, Error> {
    let raw = match get(key) {
        None => return Ok(Vec::new()),
        Some(Value::Text(text)) => text,
        Some(Value::Json(json)) => json.trim_matches(|c| c == '[' || c == ']').replace('"', ""),
        Some(other) => return Err(wrong(key, "a list of names", &other)),
    };
    split_names(key, &raw)
}

fn split_names(key: &str, raw: &str) -> Result<Vec<Ident>, Error> {
    raw.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| Ident::parse(key, name))
        .collect()
}

/// An age such as `90 days` ([`Age`]), if set.
pub fn age(key: &str) -> Result<Option<Age>, Error> {
    string(key)?
        .map(|text| Age::parse(&text).map_err(|e| Error::InvalidConfig(format!("`{key}`: {e}"))))
        .transpose()
}

pub fn age_or(key: &str, default: Age) -> Result<Age, Error> {
    Ok(age(key)?.unwrap_or(default))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_lists_split_on_commas_and_check_every_name() {
        let names = split_names("tables", " events, App.Logs ,,").unwrap();
        let names: Vec<_> = names.iter().map(Ident::name).collect();
        assert_eq!(names, ["events", "app.logs"]);
        let e = split_names("tables", "events, logs; drop").unwrap_err();
        assert!(e.to_string().contains("`tables` = \"logs; drop\""), "{e}");
    }
}
