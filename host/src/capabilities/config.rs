//! `housekeeper:task/config`: read-only access to the manifest's `[config]`
//! with `--config` overrides already applied.

use crate::bindings::housekeeper::task::config::{self as wit, Host, Value};
use crate::model::{ConfigMap, ConfigValue};
use wasmtime::component::{HasSelf, Linker};

pub struct ConfigCapability {
    values: ConfigMap,
}

impl ConfigCapability {
    pub fn new(values: ConfigMap) -> Self {
        ConfigCapability { values }
    }
}

impl Host for ConfigCapability {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Value>> {
        Ok(self.values.get(&key).map(|v| match v {
            ConfigValue::Text(s) => Value::Text(s.clone()),
            ConfigValue::Integer(i) => Value::Integer(*i),
            ConfigValue::Float(f) => Value::Float(*f),
            ConfigValue::Boolean(b) => Value::Boolean(*b),
            ConfigValue::Json(j) => Value::Json(j.clone()),
        }))
    }

    fn keys(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.values.keys().cloned().collect())
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut ConfigCapability,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<ConfigCapability>>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_keys_are_visible() {
        let mut values = ConfigMap::new();
        values.insert("dir".into(), ConfigValue::Text("/logs".into()));
        values.insert("max_age_days".into(), ConfigValue::Integer(7));
        let mut config = ConfigCapability::new(values);
        assert!(matches!(config.get("dir".into()).unwrap(), Some(Value::Text(d)) if d == "/logs"));
        assert!(matches!(
            config.get("max_age_days".into()).unwrap(),
            Some(Value::Integer(7))
        ));
        assert!(config.get("DATABASE_URL".into()).unwrap().is_none());
        assert_eq!(config.keys().unwrap(), ["dir", "max_age_days"]);
    }
}
