//! kmsctl's own config file: named profiles, each a set of defaults for the global options
//! (plane addresses, principal, mTLS files, output format), chosen with `--profile` or
//! `KMS_PROFILE`. The file is `$KMSCTL_CONFIG`, else `$XDG_CONFIG_HOME/kmsctl/config.toml`,
//! else `~/.config/kmsctl/config.toml`; `deploy/config/kmsctl.toml` documents every option.
//! A flag or its environment variable wins over the profile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The environment variable naming the config file.
pub(crate) const CONFIG_ENV: &str = "KMSCTL_CONFIG";

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    /// The profile used when neither `--profile` nor `KMS_PROFILE` names one.
    #[serde(default)]
    pub(crate) default_profile: Option<String>,
    /// Profiles by name.
    #[serde(default)]
    pub(crate) profiles: BTreeMap<String, Profile>,
}

/// One profile: a default for each global option.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Profile {
    /// Control-plane address (`--control`).
    pub(crate) control: Option<String>,
    /// Data-plane address (`--data`).
    pub(crate) data: Option<String>,
    /// Principal ARN to call as (`--principal`).
    pub(crate) principal: Option<String>,
    /// CA certificate(s) of the planes (`--ca`).
    pub(crate) ca: Option<PathBuf>,
    /// Client certificate (`--cert`).
    pub(crate) cert: Option<PathBuf>,
    /// Its private key (`--cert-key`).
    pub(crate) cert_key: Option<PathBuf>,
    /// `table`, `json` or `yaml` (`--output`).
    pub(crate) output: Option<String>,
}

/// Where the config file is: `$KMSCTL_CONFIG`, `$XDG_CONFIG_HOME/kmsctl/config.toml` or
/// `$HOME/.config/kmsctl/config.toml`; `None` when none of them is set.
pub(crate) fn config_path() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(path) = var(CONFIG_ENV) {
        return Some(PathBuf::from(path));
    }
    let base = var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("kmsctl").join("config.toml"))
}

/// Reads and parses the config file at `path`; a missing file is an empty config.
pub(crate) fn load(path: &Path) -> anyhow::Result<ConfigFile> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    parse(&text).with_context(|| format!("{} is not a valid kmsctl config", path.display()))
}

fn parse(text: &str) -> anyhow::Result<ConfigFile> {
    let mut config: ConfigFile = toml::from_str(text)?;
    for (name, profile) in &mut config.profiles {
        if let Some(output) = &profile.output
            && !matches!(
                output.to_ascii_lowercase().as_str(),
                "table" | "json" | "yaml"
            )
        {
            anyhow::bail!(
                "profile {name:?}: output = {output:?}; expected \"table\", \"json\" or \"yaml\""
            );
        }
    }
    Ok(config)
}

/// The profile `wanted` names (`--profile` or `KMS_PROFILE`), else the file's
/// `default_profile`, else none; TLS file paths made absolute against the file's directory
/// and `~/` against `$HOME`.
pub(crate) fn select(
    config: ConfigFile,
    path: &Path,
    wanted: Option<&str>,
) -> anyhow::Result<Option<Profile>> {
    let from_file = wanted.is_none();
    let Some(name) = wanted.map(str::to_string).or(config.default_profile) else {
        return Ok(None);
    };
    let Some(mut profile) = config.profiles.get(&name).cloned() else {
        let known: Vec<&str> = config.profiles.keys().map(String::as_str).collect();
        let origin = if from_file {
            "default_profile names"
        } else {
            "--profile (or KMS_PROFILE) names"
        };
        anyhow::bail!(
            "{origin} the profile {name:?}, which {} does not define; {}",
            path.display(),
            if known.is_empty() {
                format!(
                    "it defines none: add a [profiles.{name}] table (deploy/config/kmsctl.toml \
                     shows every option)"
                )
            } else {
                format!("it defines {}", known.join(", "))
            }
        );
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    for file in [&mut profile.ca, &mut profile.cert, &mut profile.cert_key]
        .into_iter()
        .flatten()
    {
        *file = resolve(dir, file);
    }
    Ok(Some(profile))
}

/// `file` as written in a config in `dir`: `~/...` under `$HOME`, relative paths under `dir`.
fn resolve(dir: &Path, file: &Path) -> PathBuf {
    if let Ok(rest) = file.strip_prefix("~")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    dir.join(file)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const REFERENCE: &str = include_str!("../../../deploy/config/kmsctl.toml");

    /// The reference config parses, and its profiles together set every option, so each is
    /// documented there.
    #[test]
    fn reference_config_parses_and_shows_every_option() {
        let config = parse(REFERENCE).unwrap();
        let default = config.default_profile.clone().unwrap();
        assert!(config.profiles.contains_key(&default), "{default}");
        let every = serde_json::to_value(Profile::default()).unwrap();
        for option in every.as_object().unwrap().keys() {
            assert!(
                config
                    .profiles
                    .values()
                    .any(|p| { !serde_json::to_value(p).unwrap()[option].is_null() }),
                "no profile of deploy/config/kmsctl.toml sets {option}"
            );
        }
    }

    #[test]
    fn profiles_are_chosen_and_paths_resolved() {
        let text = "default_profile = \"dev\"\n\
                    [profiles.dev]\ncontrol = \"127.0.0.1:7700\"\n\
                    [profiles.prod]\nca = \"tls/ca.pem\"\ncert = \"/abs/c.pem\"\n";
        let path = Path::new("/etc/kmsctl/config.toml");
        let dev = select(parse(text).unwrap(), path, None).unwrap().unwrap();
        assert_eq!(dev.control.as_deref(), Some("127.0.0.1:7700"));
        let prod = select(parse(text).unwrap(), path, Some("prod"))
            .unwrap()
            .unwrap();
        assert_eq!(prod.ca, Some(PathBuf::from("/etc/kmsctl/tls/ca.pem")));
        assert_eq!(prod.cert, Some(PathBuf::from("/abs/c.pem")));
        let err = select(parse(text).unwrap(), path, Some("staging"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"staging\"") && err.contains("it defines dev, prod"),
            "{err}"
        );
        assert_eq!(
            select(ConfigFile::default(), path, None).unwrap(),
            None,
            "no file, no profile"
        );
    }

    #[test]
    fn unknown_options_and_outputs_are_refused() {
        let err = parse("[profiles.a]\ncontrol_addr = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("control_addr"), "{err}");
        let err = parse("[profiles.a]\noutput = \"xml\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"xml\"") && err.contains("\"yaml\""), "{err}");
    }
}
