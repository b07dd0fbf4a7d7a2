//! TOML configuration with `KMS_*` environment overrides.
//!
//! A file is parsed into a TOML table; then every environment variable `KMS_<PATH>` overrides
//! one entry, where `__` separates nesting levels and the rest is lowercased:
//! `KMS_LISTEN_ADDR` sets `listen_addr`, `KMS_HSM__USER_PIN` sets `hsm.user_pin`. A value that
//! replaces a string in the file stays a string; otherwise it is read as a TOML literal when it
//! parses as one (numbers, booleans, arrays, `"quoted"` strings), else as a string.

use std::path::Path;

use serde::de::DeserializeOwned;
use toml::{Table, Value};

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file or an override is not valid TOML for this config.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value breaks a rule.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Loads `path` (or an empty config) and applies overrides from `vars` whose names start with
/// `prefix` (normally `KMS_`, from [`std::env::vars`]).
pub fn load<T: DeserializeOwned>(
    path: Option<&Path>,
    prefix: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let base = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.display().to_string(),
                source,
            })?;
            text.parse::<Table>()
                .map_err(|e| ConfigError::Parse(format!("{}: {e}", p.display())))?
        }
        None => Table::new(),
    };
    let mut overrides: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with(prefix) && k.len() > prefix.len())
        .collect();
    overrides.sort();
    let with = |skip: Option<usize>| -> Result<Table, ConfigError> {
        let mut table = base.clone();
        for (i, (name, value)) in overrides.iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            let path: Vec<String> = name[prefix.len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            set_path(&mut table, &path, value)
                .map_err(|e| ConfigError::Parse(format!("environment variable {name}: {e}")))?;
        }
        Ok(table)
    };
    let error = match T::deserialize(Value::Table(with(None)?)) {
        Ok(config) => return Ok(config),
        Err(e) => e.to_string(),
    };
    // An override the config is better without is the one to name: an error that comes
    // from it sends the reader to the variable, not to a file that does not hold it.
    for (i, (name, _)) in overrides.iter().enumerate() {
        let without = T::deserialize(Value::Table(with(Some(i))?)).map_err(|e| e.to_string());
        if without.as_ref().err() != Some(&error) {
            return Err(ConfigError::Parse(format!(
                "environment variable {name}: {error}; a {prefix}* variable overrides the config \
                 entry it names ({prefix}SECTION__ENTRY), so unset it or name an entry the \
                 config has"
            )));
        }
    }
    Err(ConfigError::Parse(error))
}

fn parse_value(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

fn set_path(table: &mut Table, path: &[String], raw: &str) -> Result<(), String> {
    match path {
        [] => Err("empty name".into()),
        [last] => {
            let value = match table.get(last) {
                Some(Value::String(_)) => Value::String(raw.to_string()),
                _ => parse_value(raw),
            };
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            match entry {
                Value::Table(inner) => set_path(inner, rest, raw),
                _ => Err(format!("{first} is not a section")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        pin: String,
        #[serde(default)]
        size: u32,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        listen_addr: String,
        #[serde(default)]
        flag: bool,
        hsm: Inner,
    }

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_variable_that_names_no_setting_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "listen_addr = \"127.0.0.1:1\"\n[hsm]\npin = \"a\"\n").unwrap();
        let err = load::<Cfg>(
            Some(&p),
            "KMS_",
            vars(&[("KMS_DEV_DIR", "/tmp/x"), ("KMS_FLAG", "true")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("environment variable KMS_DEV_DIR"), "{err}");
        assert!(err.contains("unknown field `dev_dir`"), "{err}");
        assert!(!err.contains("KMS_FLAG"), "{err}");
        let err = load::<Cfg>(Some(&p), "KMS_", vars(&[("KMS_HSM__SIZE", "big")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("environment variable KMS_HSM__SIZE"), "{err}");
        // A file's own mistake is not blamed on a variable.
        std::fs::write(&p, "listen_addr = 1\n[hsm]\npin = \"a\"\n").unwrap();
        let err = load::<Cfg>(Some(&p), "KMS_", vars(&[("KMS_FLAG", "true")]))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("environment variable"), "{err}");
    }

    #[test]
    fn file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "listen_addr = \"127.0.0.1:1\"\n[hsm]\npin = \"a\"\n").unwrap();
        let c: Cfg = load(Some(&p), "KMS_", vars(&[])).unwrap();
        assert_eq!(c.listen_addr, "127.0.0.1:1");
        let c: Cfg = load(
            Some(&p),
            "KMS_",
            vars(&[
                ("KMS_HSM__PIN", "1234"),
                ("KMS_FLAG", "true"),
                ("KMS_HSM__SIZE", "7"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.hsm,
            Inner {
                pin: "1234".into(),
                size: 7
            }
        );
        assert!(c.flag);
    }

    #[test]
    fn errors_are_precise() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = load::<Cfg>(Some(&missing), "KMS_", vars(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "listen_addr = 5\n[hsm]\npin=\"x\"\n").unwrap();
        assert!(matches!(
            load::<Cfg>(Some(&p), "KMS_", vars(&[])),
            Err(ConfigError::Parse(_))
        ));
        std::fs::write(&p, "listen_addr = \"a\"\ntypo = 1\n[hsm]\npin=\"x\"\n").unwrap();
        let err = load::<Cfg>(Some(&p), "KMS_", vars(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("typo"), "{err}");
        std::fs::write(&p, "listen_addr = \"a\"\nflag = 1\n").unwrap();
        let err = load::<Cfg>(Some(&p), "KMS_", vars(&[("KMS_FLAG__X", "1")])).unwrap_err();
        assert!(err.to_string().contains("KMS_FLAG__X"), "{err}");
    }
}
