//! Argument values shared by the commands: enum flags that take the names kmsctl prints and the
//! API's names in any case, keys named by `--key` (or, as before, by the first argument), key
//! references checked before any call, and RFC 3339 times. Each refusal names the value and
//! what would be accepted.

use std::ffi::OsStr;
use std::time::UNIX_EPOCH;

use clap::builder::{PossibleValue, TypedValueParser};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};
use kms_proto::convert::WireEnum;
use kms_proto::kms::v1 as pb;
use kms_types::ids::KEY_REF_FORMS;
use kms_types::{
    Algorithm, DataKeySpec, DomainError, InstanceType, KeyOrigin, KeyRef, KeySpec, KeyState,
    KeyUsage, ProtectionLevel,
};

/// Lowercase, without the separators people and the API put between words.
fn norm(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '_' | '-' | '/' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

/// A value parser for a domain enum: accepts the name kmsctl prints (`PendingDeletion`,
/// `Aliyun_AES_256`), the API's name with or without its prefix (`KEY_STATE_PENDING_DELETION`,
/// `PENDING_DELETION`), in any case and with `_`, `-` or `/` between words or none. Help,
/// completion and the refusal list the printed names.
#[derive(Clone, Debug)]
pub(crate) struct Named<T: 'static> {
    /// The value and every normalised form that names it; the first form is the printed name.
    values: Vec<(T, &'static str, Vec<String>)>,
}

impl<T: Copy + Send + Sync + 'static> Named<T> {
    /// `all` values, shown by `shown`, with the API's name from `api` (`KEY_STATE_ENABLED`),
    /// whose `prefix` (`KEY_STATE_`) may be left out.
    fn new(
        all: &[T],
        shown: fn(T) -> &'static str,
        api: impl Fn(T) -> Option<&'static str>,
        prefix: &str,
    ) -> Self {
        let values = all
            .iter()
            .map(|&v| {
                let mut forms = vec![norm(shown(v))];
                if let Some(api) = api(v) {
                    forms.push(norm(api));
                    if let Some(short) = api.strip_prefix(prefix) {
                        forms.push(norm(short));
                    }
                }
                (v, shown(v), forms)
            })
            .collect();
        Self { values }
    }
}

impl<T: Copy + PartialEq + Send + Sync + 'static> Named<T> {
    /// Only the values in `keep`, in that order.
    fn only(mut self, keep: &[T]) -> Self {
        self.values.retain(|(v, _, _)| keep.contains(v));
        self.values
            .sort_by_key(|(v, _, _)| keep.iter().position(|k| k == v));
        self
    }
}

impl<T: Copy + Send + Sync + 'static> TypedValueParser for Named<T> {
    type Value = T;

    fn parse_ref(&self, cmd: &Command, arg: Option<&Arg>, value: &OsStr) -> Result<T, clap::Error> {
        let text = value.to_string_lossy();
        let wanted = norm(&text);
        if let Some((v, _, _)) = self
            .values
            .iter()
            .find(|(_, _, forms)| forms.contains(&wanted))
        {
            return Ok(*v);
        }
        let mut err = clap::Error::new(ErrorKind::InvalidValue).with_cmd(cmd);
        if let Some(arg) = arg {
            err.insert(
                ContextKind::InvalidArg,
                ContextValue::String(arg.to_string()),
            );
        }
        err.insert(
            ContextKind::InvalidValue,
            ContextValue::String(text.into_owned()),
        );
        err.insert(
            ContextKind::ValidValue,
            ContextValue::Strings(self.values.iter().map(|(_, s, _)| s.to_string()).collect()),
        );
        Err(err)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            self.values
                .iter()
                .map(|(_, shown, _)| PossibleValue::new(*shown)),
        ))
    }
}

/// The API's name of a domain value, through its wire number.
fn api_name<T: WireEnum, P: TryFrom<i32>>(
    v: T,
    name: fn(&P) -> &'static str,
) -> Option<&'static str> {
    P::try_from(v.to_wire()).ok().map(|p| name(&p))
}

/// `--spec` of keys.
pub(crate) fn key_spec() -> Named<KeySpec> {
    Named::new(
        KeySpec::ALL,
        KeySpec::display_name,
        |v| api_name(v, pb::KeySpec::as_str_name),
        "KEY_SPEC_",
    )
}

/// `--usage`.
pub(crate) fn key_usage() -> Named<KeyUsage> {
    Named::new(
        KeyUsage::ALL,
        KeyUsage::display_name,
        |v| api_name(v, pb::KeyUsage::as_str_name),
        "KEY_USAGE_",
    )
}

/// `--state`.
pub(crate) fn key_state() -> Named<KeyState> {
    Named::new(
        KeyState::ALL,
        KeyState::display_name,
        |v| api_name(v, pb::KeyState::as_str_name),
        "KEY_STATE_",
    )
}

/// `--protection`.
pub(crate) fn protection_level() -> Named<ProtectionLevel> {
    Named::new(
        ProtectionLevel::ALL,
        ProtectionLevel::display_name,
        |v| api_name(v, pb::ProtectionLevel::as_str_name),
        "PROTECTION_LEVEL_",
    )
}

/// `--origin`: `Aliyun_KMS` (or `kms`) and `EXTERNAL`.
pub(crate) fn key_origin() -> Named<KeyOrigin> {
    Named::new(
        KeyOrigin::ALL,
        KeyOrigin::display_name,
        |v| api_name(v, pb::KeyOrigin::as_str_name),
        "KEY_ORIGIN_",
    )
}

/// `--type` of instances.
pub(crate) fn instance_type() -> Named<InstanceType> {
    Named::new(
        InstanceType::ALL,
        InstanceType::display_name,
        |v| api_name(v, pb::InstanceType::as_str_name),
        "INSTANCE_TYPE_",
    )
}

/// `--spec` of data keys.
pub(crate) fn data_key_spec() -> Named<DataKeySpec> {
    Named::new(
        DataKeySpec::ALL,
        DataKeySpec::display_name,
        |v| api_name(v, pb::DataKeySpec::as_str_name),
        "DATA_KEY_SPEC_",
    )
}

fn algorithms(keep: &[Algorithm]) -> Named<Algorithm> {
    Named::new(
        Algorithm::ALL,
        Algorithm::display_name,
        |v| api_name(v, pb::Algorithm::as_str_name),
        "ALGORITHM_",
    )
    .only(keep)
}

/// Signing algorithms, for `sign` and `verify`.
pub(crate) fn signing_algorithm() -> Named<Algorithm> {
    algorithms(&[
        Algorithm::RsaPssSha256,
        Algorithm::RsaPkcs1Sha256,
        Algorithm::EcdsaSha256,
    ])
}

/// RSAES-OAEP, for asymmetric encryption and for wrapping data keys to a public key.
pub(crate) fn oaep_algorithm() -> Named<Algorithm> {
    algorithms(&[Algorithm::RsaesOaepSha256, Algorithm::RsaesOaepSha1])
}

/// Algorithms to wrap key material for import with.
pub(crate) fn import_wrapping_algorithm() -> Named<Algorithm> {
    algorithms(&[
        Algorithm::RsaesOaepSha256,
        Algorithm::RsaesOaepSha1,
        Algorithm::RsaAesKeyWrapSha256,
    ])
}

/// A key reference as the service takes it: refused here, before any call, with the forms
/// accepted.
pub(crate) fn key_ref(s: &str) -> Result<String, String> {
    match KeyRef::parse(s) {
        Ok(_) => Ok(s.to_string()),
        // The key-id refusal lists the forms itself.
        Err(DomainError::InvalidParameter {
            field: "KeyId",
            reason,
        }) => Err(reason),
        Err(other) => Err(format!("{other}; a key is named by {KEY_REF_FORMS}")),
    }
}

/// An RFC 3339 time, as a protobuf timestamp.
pub(crate) fn rfc3339_time(s: &str) -> Result<prost_types::Timestamp, String> {
    const EXAMPLE: &str = "e.g. 2027-01-01T00:00:00Z or 2027-01-01T09:30:00+08:00";
    let t = humantime::parse_rfc3339_weak(s.trim()).map_err(|_| {
        format!("{s:?} is not an RFC 3339 time: give a date, a time and a zone, {EXAMPLE}")
    })?;
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{s:?} is before 1970; {EXAMPLE}"))?;
    Ok(prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).map_err(|_| format!("{s:?} is too late"))?,
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    })
}

/// The key a command works on: `--key KEY`, or, as in earlier versions, the first argument
/// (hidden from help).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyArg {
    /// Key id, alias or key ARN, as given.
    pub(crate) key: String,
}

/// Argument ids of [`KeyArg`].
const KEY_FLAG: &str = "key";
const KEY_POSITIONAL: &str = "key_positional";

impl Args for KeyArg {
    fn augment_args(cmd: Command) -> Command {
        cmd.arg(
            Arg::new(KEY_FLAG)
                .long("key")
                .value_name("KEY")
                .help(
                    "The key: its id (key-...), an alias (alias/...) or its ARN \
                     (acs:kms:<region>:<account>:key/key-...)",
                )
                .value_parser(key_ref)
                .required_unless_present(KEY_POSITIONAL)
                .conflicts_with(KEY_POSITIONAL),
        )
        .arg(
            Arg::new(KEY_POSITIONAL)
                .value_name("KEY")
                .help("The key, as --key")
                .value_parser(key_ref)
                .hide(true),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for KeyArg {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        matches
            .get_one::<String>(KEY_FLAG)
            .or_else(|| matches.get_one::<String>(KEY_POSITIONAL))
            .map(|key| Self { key: key.clone() })
            .ok_or_else(|| {
                clap::Error::raw(
                    ErrorKind::MissingRequiredArgument,
                    "name the key with --key KEY\n",
                )
            })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// Parses `--value s` with `p`, as a command does.
    fn parse<T: Copy + Send + Sync + 'static>(p: &Named<T>, s: &str) -> Result<T, String> {
        Command::new("t")
            .arg(Arg::new("value").long("value").value_parser(p.clone()))
            .try_get_matches_from(["t", "--value", s])
            .map(|m| *m.get_one::<T>("value").unwrap())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn enum_flags_take_printed_and_api_names_in_any_case() {
        let states = key_state();
        for (input, want) in [
            ("Enabled", KeyState::Enabled),
            ("enabled", KeyState::Enabled),
            ("ENABLED", KeyState::Enabled),
            ("KEY_STATE_ENABLED", KeyState::Enabled),
            ("PendingDeletion", KeyState::PendingDeletion),
            ("pending-deletion", KeyState::PendingDeletion),
            ("PENDING_DELETION", KeyState::PendingDeletion),
            ("pendingimport", KeyState::PendingImport),
        ] {
            assert_eq!(parse(&states, input), Ok(want), "{input}");
        }
        for (input, want) in [
            ("Aliyun_AES_256", KeySpec::AliyunAes256),
            ("aliyun_aes_256", KeySpec::AliyunAes256),
            ("KEY_SPEC_RSA_2048", KeySpec::Rsa2048),
            ("rsa_2048", KeySpec::Rsa2048),
            ("ec_p256k", KeySpec::EcP256K),
        ] {
            assert_eq!(parse(&key_spec(), input), Ok(want), "{input}");
        }
        assert_eq!(parse(&key_origin(), "kms"), Ok(KeyOrigin::Kms));
        assert_eq!(parse(&key_origin(), "Aliyun_KMS"), Ok(KeyOrigin::Kms));
        assert_eq!(parse(&key_origin(), "external"), Ok(KeyOrigin::External));
        assert_eq!(parse(&key_usage(), "sign/verify"), Ok(KeyUsage::SignVerify));
        assert_eq!(
            parse(&instance_type(), "software"),
            Ok(InstanceType::Software)
        );
        assert_eq!(parse(&data_key_spec(), "aes_128"), Ok(DataKeySpec::Aes128));
    }

    #[test]
    fn refusals_list_the_printed_names() {
        let err = parse(&key_spec(), "aes256").unwrap_err();
        assert!(err.contains("'aes256'"), "{err}");
        assert!(
            err.contains("Aliyun_AES_256") && err.contains("EC_P256K"),
            "{err}"
        );
        // Signing offers only signing algorithms.
        let err = parse(&signing_algorithm(), "RSAES_OAEP_SHA_1").unwrap_err();
        assert!(
            err.contains("RSA_PSS_SHA_256, RSA_PKCS1_SHA_256, ECDSA_SHA_256")
                && !err.contains("OAEP_SHA_256"),
            "{err}"
        );
        let shown: Vec<String> = signing_algorithm()
            .possible_values()
            .unwrap()
            .map(|v| v.get_name().to_string())
            .collect();
        assert_eq!(
            shown,
            ["RSA_PSS_SHA_256", "RSA_PKCS1_SHA_256", "ECDSA_SHA_256"]
        );
    }

    #[test]
    fn key_refs_are_checked_with_the_forms() {
        assert!(key_ref("alias/demo").is_ok());
        assert!(key_ref("key-0123456789abcdef0123456789abcdef").is_ok());
        let err = key_ref("demo").unwrap_err();
        assert!(
            err.contains("\"demo\" is not a key id") && err.contains(KEY_REF_FORMS),
            "{err}"
        );
        let err = key_ref("alias/a b").unwrap_err();
        assert!(
            err.contains("letters, digits") && err.contains(KEY_REF_FORMS),
            "{err}"
        );
    }

    #[test]
    fn times_show_an_example() {
        assert_eq!(
            rfc3339_time("2030-01-02T03:04:05Z").unwrap().seconds,
            1_893_553_445
        );
        let err = rfc3339_time("2020-01-01").unwrap_err();
        assert!(
            err.contains("RFC 3339") && err.contains("2027-01-01T00:00:00Z"),
            "{err}"
        );
    }
}
