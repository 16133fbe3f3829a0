//! Typed access to the JSON objects of diffusers configs, with errors naming the file and the
//! key, and diffusers' own reading of `null` (Python's `None`).

use anyhow::{bail, Result};
use serde_json::{Map, Value};

/// Typed access to one JSON object with errors naming `origin` and the key.
pub(super) struct Keys<'a> {
    pub(super) map: &'a Map<String, Value>,
    pub(super) origin: &'a str,
}

impl Keys<'_> {
    pub(super) fn err(&self, key: &str, what: &str) -> anyhow::Error {
        let got = self.map.get(key).map(|v| v.to_string()).unwrap_or_default();
        let got: String = got.chars().take(60).collect();
        anyhow::anyhow!("{}: key {key:?} {what} (got {got})", self.origin)
    }
    /// The value, `None` when absent or null (for the keys where null means "none").
    pub(super) fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }
    /// The value, `None` when absent; null is an error (diffusers would pass `None` on and fail).
    pub(super) fn present(&self, key: &str) -> Result<Option<&Value>> {
        match self.map.get(key) {
            Some(Value::Null) => Err(self.err(key, "must not be null")),
            v => Ok(v),
        }
    }
    /// A JSON integer (`2.0` is a float to Python, and diffusers fails on it where it counts).
    pub(super) fn int(&self, key: &str, default: i64) -> Result<i64> {
        match self.present(key)? {
            None => Ok(default),
            Some(v) => v
                .as_i64()
                .ok_or_else(|| self.err(key, "must be an integer")),
        }
    }
    /// An integer, or `None` when absent or null (keys whose default is null).
    pub(super) fn opt_int(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.err(key, "must be an integer or null")),
        }
    }
    pub(super) fn float(&self, key: &str, default: f64) -> Result<f64> {
        match self.present(key)? {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(|| self.err(key, "must be a finite number")),
        }
    }
    /// A flag as diffusers reads it: absent takes the default, null is Python's falsy `None`.
    pub(super) fn boolean(&self, key: &str, default: bool) -> Result<bool> {
        match self.map.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(false),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(key, "must be true or false")),
        }
    }
    pub(super) fn string(&self, key: &str, default: &str) -> Result<String> {
        match self.present(key)? {
            None => Ok(default.to_string()),
            Some(v) => v
                .as_str()
                .map(String::from)
                .ok_or_else(|| self.err(key, "must be a string")),
        }
    }
    pub(super) fn one_of(&self, key: &str, default: &str, allowed: &[&str]) -> Result<String> {
        let s = self.string(key, default)?;
        if !allowed.contains(&s.as_str()) {
            bail!(
                "{}: key {key:?} = {s:?} is not supported by a3ft (supported: {})",
                self.origin,
                allowed.join(", ")
            );
        }
        Ok(s)
    }
    pub(super) fn list(&self, key: &str) -> Result<Option<&Vec<Value>>> {
        self.list_of_at_most(key, 64)
    }
    pub(super) fn list_of_at_most(&self, key: &str, max: usize) -> Result<Option<&Vec<Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) if a.len() <= max => Ok(Some(a)),
            Some(Value::Array(a)) => Err(self.err(
                key,
                &format!("has {} entries, above the limit of {max}", a.len()),
            )),
            Some(_) => Err(self.err(key, "must be a list")),
        }
    }
    pub(super) fn int_list(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.present(key)?;
        let Some(a) = self.list(key)? else {
            return Ok(None);
        };
        a.iter()
            .map(|v| {
                v.as_i64()
                    .ok_or_else(|| self.err(key, "must be a list of whole numbers"))
            })
            .collect::<Result<_>>()
            .map(Some)
    }
    pub(super) fn str_list(&self, key: &str) -> Result<Option<Vec<String>>> {
        self.present(key)?;
        let Some(a) = self.list(key)? else {
            return Ok(None);
        };
        a.iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| self.err(key, "must be a list of strings"))
            })
            .collect::<Result<_>>()
            .map(Some)
    }
    /// Refuses keys outside `known` (keys starting with `_` are diffusers' bookkeeping, checked by
    /// [`as_diffusers_reads`]).
    pub(super) fn only(&self, known: &[&str], ignored: &[&str]) -> Result<()> {
        for k in self.map.keys() {
            if !k.starts_with('_') && !known.contains(&k.as_str()) && !ignored.contains(&k.as_str())
            {
                bail!("{}: key {k:?} is not a UNet2DModel/scheduler option a3ft knows; it cannot build this model exactly", self.origin);
            }
        }
        Ok(())
    }
}

/// diffusers' reserved (`_`-prefixed) config keys that change nothing it builds: `ConfigMixin`
/// drops every `_` key before it calls `__init__` (`_class_name` is checked by the readers).
const BOOKKEEPING_KEYS: &[&str] = &[
    "_class_name",
    "_diffusers_version",
    "_name_or_path",
    "_commit_hash",
];
/// The reserved key that does change the build: `extract_init_dict` drops every key it lists,
/// so that `__init__`'s defaults apply instead of the values written beside it.
const USE_DEFAULT_VALUES: &str = "_use_default_values";

/// A UNet or scheduler config as diffusers builds from it: the keys `_use_default_values` lists
/// are dropped (diffusers' defaults apply, as a3ft's readers default them) and so is the list
/// itself, which diffusers never saves either. Any other reserved key is refused: a3ft cannot
/// know that diffusers ignores it. Applied when a folder is read, when a run's config is read
/// and before an export is written, so that no path builds or writes another network than
/// diffusers builds from the same file.
pub fn as_diffusers_reads(map: &Map<String, Value>, origin: &str) -> Result<Map<String, Value>> {
    let mut out = map.clone();
    if let Some(list) = out.remove(USE_DEFAULT_VALUES) {
        let names: Option<Vec<&str>> = list
            .as_array()
            .and_then(|a| a.iter().map(Value::as_str).collect());
        let Some(names) = names else {
            let got: String = list.to_string().chars().take(60).collect();
            bail!("{origin}: key {USE_DEFAULT_VALUES:?} must be a list of key names (got {got})");
        };
        for name in names {
            if name.starts_with('_') {
                bail!("{origin}: key {USE_DEFAULT_VALUES:?} lists the reserved key {name:?}; it may only list options");
            }
            out.remove(name);
        }
    }
    if let Some(k) = out
        .keys()
        .find(|k| k.starts_with('_') && !BOOKKEEPING_KEYS.contains(&k.as_str()))
    {
        bail!(
            "{origin}: key {k:?} is a reserved diffusers key a3ft does not know (known: {}, {USE_DEFAULT_VALUES}); it cannot tell whether diffusers builds the same model",
            BOOKKEEPING_KEYS.join(", ")
        );
    }
    Ok(out)
}

/// `_class_name`, which must be a string when present.
pub(super) fn class_name<'a>(map: &'a Map<String, Value>, origin: &str) -> Result<Option<&'a str>> {
    match map.get("_class_name") {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => bail!("{origin}: key \"_class_name\" must be a string (got {other})"),
    }
}

/// A JSON object from text, for the config and scheduler tests.
#[cfg(test)]
pub(crate) fn obj(s: &str) -> Map<String, Value> {
    serde_json::from_str(s).unwrap()
}
