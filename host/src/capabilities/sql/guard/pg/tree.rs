//! Reading libpg_query's parse tree as JSON: a node's kind and body, its
//! fields, names, constants and the relations it names.

use super::{Denial, Relation, refused};
use serde_json::Value;

/// `{"node": {"Kind": body}}` → `("Kind", body)`.
pub(super) fn unwrap_node(value: &Value) -> Option<(&str, &Value)> {
    let inner = value.as_object()?.get("node")?.as_object()?;
    if inner.len() != 1 {
        return None;
    }
    inner.iter().next().map(|(k, v)| (k.as_str(), v))
}

pub(super) fn field<'a>(body: &'a Value, key: &str) -> &'a Value {
    body.get(key).unwrap_or(&Value::Null)
}

pub(super) fn list<'a>(body: &'a Value, key: &str) -> &'a [Value] {
    body.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

pub(super) fn int(body: &Value, key: &str) -> i64 {
    body.get(key).and_then(Value::as_i64).unwrap_or(0)
}

pub(super) fn flag(body: &Value, key: &str) -> bool {
    body.get(key).and_then(Value::as_bool).unwrap_or(false)
}

pub(super) fn text<'a>(body: &'a Value, key: &str) -> &'a str {
    body.get(key).and_then(Value::as_str).unwrap_or("")
}

pub(super) fn present(value: &Value) -> bool {
    !value.is_null()
}

/// The `sval`s of a list of `String` nodes (a qualified name).
pub(super) fn strings(items: &[Value]) -> Option<Vec<String>> {
    items
        .iter()
        .map(|item| match unwrap_node(item) {
            Some(("String", s)) => Some(text(s, "sval").to_owned()),
            _ => None,
        })
        .collect()
}

pub(super) fn is_range_var(body: &Value) -> bool {
    body.get("relname").is_some() && body.get("relpersistence").is_some()
}

pub(super) fn is_func_call(body: &Value) -> bool {
    body.get("funcname").is_some() && body.get("agg_star").is_some()
}

pub(super) fn is_select(body: &Value) -> bool {
    body.get("larg").is_some() && body.get("target_list").is_some()
}

pub(super) fn relation(body: &Value) -> Result<Relation, Denial> {
    let part = |key: &str| -> Result<Option<String>, Denial> {
        let value = text(body, key);
        if value.contains('.') {
            return Err(refused(format!(
                "the name \"{value}\" contains `.`: a table name with a dot cannot be granted"
            )));
        }
        Ok((!value.is_empty()).then(|| value.to_owned()))
    };
    if part("catalogname")?.is_some() {
        return Err(refused("a database-qualified name is not allowed"));
    }
    let name = part("relname")?.ok_or_else(|| refused("a relation without a name"))?;
    Ok(Relation {
        schema: part("schemaname")?,
        name,
    })
}

/// The name a `DROP TABLE` object list gives.
pub(super) fn dropped(object: &Value) -> Result<Relation, Denial> {
    let parts = match unwrap_node(object) {
        Some(("List", l)) => strings(list(l, "items")),
        _ => None,
    }
    .ok_or_else(|| refused("DROP TABLE names a table by a name it cannot read"))?;
    if parts.iter().any(|p| p.contains('.')) {
        return Err(refused("a table name containing `.` cannot be granted"));
    }
    match parts.as_slice() {
        [name] => Ok(Relation {
            schema: None,
            name: name.clone(),
        }),
        [schema, name] => Ok(Relation {
            schema: Some(schema.clone()),
            name: name.clone(),
        }),
        _ => Err(refused("a database-qualified name is not allowed")),
    }
}

pub(super) fn strings_only(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .filter_map(|item| match unwrap_node(item) {
            Some(("String", s)) => Some(text(s, "sval").to_owned()),
            _ => None,
        })
        .collect()
}

/// A constant's value node (`{"Sval": {"sval": …}}` → `("String", …)`).
fn constant(value: &Value) -> Option<(&str, &Value)> {
    match unwrap_node(value)? {
        ("AConst", c) => {
            let (kind, inner) = c.get("val")?.as_object()?.iter().next()?;
            let kind = match kind.as_str() {
                "Sval" => "String",
                "Ival" => "Integer",
                "Fval" => "Float",
                "Boolval" => "Boolean",
                _ => return None,
            };
            Some((kind, inner))
        }
        (kind @ ("String" | "Integer" | "Float" | "Boolean"), inner) => Some((kind, inner)),
        _ => None,
    }
}

pub(super) fn string_constant(value: &Value) -> Option<String> {
    match constant(value)? {
        ("String", s) => Some(text(s, "sval").to_owned()),
        _ => None,
    }
}
