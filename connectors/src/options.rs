//! WITH options: taken one by one by a connector's config, leftovers rejected.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::error::{ConnectorError, Result};

/// The WITH options of one table, for one connector.
#[derive(Debug, Clone)]
pub struct Options {
    connector: String,
    values: BTreeMap<String, String>,
}

impl Options {
    pub fn new(connector: impl Into<String>, values: BTreeMap<String, String>) -> Self {
        Options { connector: connector.into(), values }
    }

    fn error(&self, key: &str, reason: impl Into<String>) -> ConnectorError {
        ConnectorError::Option { connector: self.connector.clone(), key: key.to_string(), reason: reason.into() }
    }

    /// A required option.
    pub fn take_str(&mut self, key: &str) -> Result<String> {
        self.values.remove(key).ok_or_else(|| self.error(key, "required"))
    }

    /// An optional option.
    pub fn take_opt(&mut self, key: &str) -> Option<String> {
        self.values.remove(key)
    }

    /// An optional option parsed with `FromStr`.
    pub fn take_parsed<T>(&mut self, key: &str) -> Result<Option<T>>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.values.remove(key) {
            None => Ok(None),
            Some(v) => v.trim().parse::<T>().map(Some).map_err(|e| self.error(key, format!("'{v}': {e}"))),
        }
    }

    /// Takes every option starting with `prefix`, keyed without it.
    pub fn take_prefixed(&mut self, prefix: &str) -> BTreeMap<String, String> {
        let keys: Vec<String> = self.values.keys().filter(|k| k.starts_with(prefix)).cloned().collect();
        keys.into_iter()
            .filter_map(|k| self.values.remove(&k).map(|v| (k[prefix.len()..].to_string(), v)))
            .collect()
    }

    /// Rejects every option no one took.
    pub fn ensure_empty(&self) -> Result<()> {
        match self.values.keys().next() {
            None => Ok(()),
            Some(key) => Err(self.error(key, "unknown option")),
        }
    }

    pub fn connector(&self) -> &str {
        &self.connector
    }
}

/// Parses `true`/`false` options.
pub fn parse_bool(connector: &str, key: &str, value: Option<String>, default: bool) -> Result<bool> {
    match value.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(ConnectorError::Option {
            connector: connector.to_string(),
            key: key.to_string(),
            reason: format!("'{other}' is not true or false"),
        }),
    }
}
