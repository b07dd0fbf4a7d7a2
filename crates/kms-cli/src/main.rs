//! `kmsctl`: the command-line client of the KMS (key management on the control plane,
//! cryptography on the data plane) and `kmsctl dev up`, which runs both planes locally.

mod access_keys;
mod admin;
mod aliases;
mod args;
mod audit;
mod certs;
mod client;
mod config;
mod crypto;
mod crypto_ops;
mod dev;
mod errors;
mod files;
mod import;
mod instances;
mod keys;
mod lifecycle;
mod output;
mod tags;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use kms_types::{KeyOrigin, KeySpec, KeyUsage};

use crate::args::KeyArg;
use crate::client::{Planes, TlsFiles};
use crate::output::Format;

/// Default control-plane address.
const DEFAULT_CONTROL: &str = "http://127.0.0.1:7700";
/// Default data-plane address.
const DEFAULT_DATA: &str = "http://127.0.0.1:7701";

const MAIN_EXAMPLES: &str = "\
Examples:
  kmsctl dev up --dir .dev
  export KMS_PRINCIPAL=acs:ram::1234567890123456:root
  kmsctl create-key --alias alias/demo --description \"my first key\" --if-not-exists
  kmsctl encrypt --key alias/demo --plaintext 'hello' > blob.b64
  kmsctl decrypt --in blob.b64
  kmsctl --profile prod --output yaml describe-key --key alias/demo

Profiles: $XDG_CONFIG_HOME/kmsctl/config.toml (else ~/.config/kmsctl/config.toml, or the file
$KMSCTL_CONFIG names); deploy/config/kmsctl.toml documents every option.
Completion: source <(kmsctl completion bash)";

/// Command-line client of the self-hosted KMS.
///
/// Key management goes to the control plane (`--control`), encryption and decryption to the
/// data plane (`--data`). Every call is made as the principal given by `--principal` (or
/// `KMS_PRINCIPAL`, or the profile's), or over mTLS as the certificate's. Commands name the
/// key they work on with `--key`.
#[derive(Debug, Parser)]
#[command(name = "kmsctl", version, after_help = MAIN_EXAMPLES)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand accepts. Each defaults to the profile's value (`--profile`), then
/// to kmsctl's own default.
#[derive(Debug, Args)]
struct GlobalOpts {
    /// Control-plane address; `host:port` without a scheme means `http://host:port`
    /// [default: the profile's control, else http://127.0.0.1:7700]
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "KMS_CONTROL_ADDR",
        value_name = "URL",
        value_parser = parse_url
    )]
    control: Option<String>,
    /// Data-plane address; `host:port` without a scheme means `http://host:port`
    /// [default: the profile's data, else http://127.0.0.1:7701]
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "KMS_DATA_ADDR",
        value_name = "URL",
        value_parser = parse_url
    )]
    data: Option<String>,
    /// Principal ARN to call as, e.g. `acs:ram::1234567890123456:root`
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "KMS_PRINCIPAL",
        value_name = "ARN"
    )]
    principal: Option<String>,
    /// Profile of kmsctl's config file to take defaults from
    /// ($XDG_CONFIG_HOME/kmsctl/config.toml; deploy/config/kmsctl.toml shows every option)
    /// [default: the file's default_profile]
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "KMS_PROFILE",
        value_name = "NAME"
    )]
    profile: Option<String>,
    /// How to print responses, and errors on stderr: table (text for people), json or yaml
    /// [default: the profile's output, else table]
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_enum,
        ignore_case = true,
        value_name = "FORMAT"
    )]
    output: Option<OutputArg>,
    /// Print responses, and errors on stderr, as JSON: --output json
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        conflicts_with = "output"
    )]
    json: bool,
    /// CA certificate(s) (PEM) the planes' server certificates must chain to; with --cert and
    /// --cert-key, calls go over mTLS (https) and the principal is the certificate's
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "KMS_CA",
        value_name = "FILE"
    )]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) naming the caller's principal in a URI SAN, for mTLS
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "KMS_CERT",
        value_name = "FILE"
    )]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert (`--key` names the key a command works on)
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "KMS_KEY",
        value_name = "FILE"
    )]
    cert_key: Option<PathBuf>,
}

/// `--output` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OutputArg {
    /// Aligned `field: value` lines and tables, for people
    Table,
    /// One JSON document per response
    Json,
    /// One YAML document per response
    Yaml,
}

impl OutputArg {
    /// The output the flags ask for: `--json`, `--output`, or none.
    fn from_flags(json: bool, output: Option<OutputArg>) -> Option<Self> {
        if json { Some(Self::Json) } else { output }
    }
}

impl GlobalOpts {
    /// The planes, the caller and the output: the flags (or their environment variables),
    /// else the profile's values, else kmsctl's defaults.
    fn resolve(self) -> anyhow::Result<(Planes, OutputArg)> {
        let profile = match config::config_path() {
            Some(path) => config::select(config::load(&path)?, &path, self.profile.as_deref())?,
            None if self.profile.is_some() => anyhow::bail!(
                "--profile needs kmsctl's config file, and neither {} nor XDG_CONFIG_HOME nor \
                 HOME says where it is",
                config::CONFIG_ENV
            ),
            None => None,
        }
        .unwrap_or_default();
        let address = |flag: Option<String>, from_profile: Option<String>, default: &str| match (
            flag,
            from_profile,
        ) {
            (Some(url), _) => Ok(url),
            (None, Some(url)) => parse_url(&url).map_err(|e| anyhow::anyhow!("the profile's {e}")),
            (None, None) => Ok(default.to_string()),
        };
        let output = match (
            OutputArg::from_flags(self.json, self.output),
            &profile.output,
        ) {
            (Some(o), _) => o,
            (None, Some(o)) => <OutputArg as clap::ValueEnum>::from_str(o, true)
                .map_err(|e| anyhow::anyhow!("the profile's output {o:?}: {e}"))?,
            (None, None) => OutputArg::Table,
        };
        let tls = tls_files(
            self.ca.or(profile.ca),
            self.cert.or(profile.cert),
            self.cert_key.or(profile.cert_key),
        )?;
        let planes = Planes {
            control: address(self.control, profile.control, DEFAULT_CONTROL)?,
            data: address(self.data, profile.data, DEFAULT_DATA)?,
            principal: self.principal.or(profile.principal),
            tls,
        };
        Ok((planes, output))
    }
}

/// The mTLS files, when all three are given; an error when only some are.
fn tls_files(
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> anyhow::Result<Option<TlsFiles>> {
    match (ca, cert, key) {
        (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles { ca, cert, key })),
        (None, None, None) => Ok(None),
        _ => anyhow::bail!(
            "mTLS needs all of --ca, --cert and --cert-key (or KMS_CA, KMS_CERT, KMS_KEY, or a \
             profile's ca, cert and cert_key); only some are set"
        ),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a key (CreateKey) and print its metadata
    #[command(after_help = "\
Examples:
  kmsctl create-key --alias alias/demo --description \"my first key\" --if-not-exists
  kmsctl create-key --instance kst-... --spec RSA_2048 --usage SIGN/VERIFY --tag env=dev
  kmsctl create-key --instance kst-... --rotation-days 90 --policy-file policy.json")]
    CreateKey(CreateKeyArgs),
    /// Show a key's metadata (DescribeKey)
    #[command(after_help = "\
Examples:
  kmsctl describe-key --key alias/demo
  kmsctl describe-key --json --key acs:kms:local:1234567890123456:key/key-...")]
    DescribeKey(DescribeKeyArgs),
    #[command(flatten)]
    Lifecycle(lifecycle::LifecycleCommand),
    #[command(flatten)]
    Aliases(aliases::AliasCommand),
    #[command(flatten)]
    Tags(tags::TagCommand),
    #[command(flatten)]
    Instances(instances::InstanceCommand),
    /// Encrypt up to 6 KiB with a symmetric key (Encrypt); prints the blob as base64
    #[command(after_help = "\
Examples:
  kmsctl encrypt --key alias/demo --plaintext 'hello' > blob.b64
  kmsctl encrypt --key alias/demo --in secret.txt --context app=web --out secret.blob")]
    Encrypt(EncryptArgs),
    /// Decrypt a ciphertext blob (Decrypt); prints the plaintext as is
    #[command(after_help = "\
Examples:
  kmsctl decrypt --in blob.b64
  kmsctl decrypt --in secret.blob --context app=web --out secret.txt
  kmsctl decrypt --ciphertext \"$(cat blob.b64)\" --base64")]
    Decrypt(DecryptArgs),
    #[command(flatten)]
    CryptoOps(crypto_ops::CryptoOpsCommand),
    #[command(flatten)]
    Import(import::ImportCommand),
    /// Run the service locally
    #[command(subcommand)]
    Dev(DevCommand),
    /// Work with audit logs
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Print a shell completion script for kmsctl
    ///
    /// Commands, flags and the values of enum flags complete; load the script in the shell's
    /// startup file.
    #[command(after_help = "\
Examples:
  source <(kmsctl completion bash)                      # in ~/.bashrc
  kmsctl completion zsh > \"${fpath[1]}/_kmsctl\"          # then restart zsh
  kmsctl completion fish > ~/.config/fish/completions/kmsctl.fish")]
    Completion(CompletionArgs),
    /// Back up and restore the control plane's store (operators)
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Manage the AccessKey pairs of the HTTP gateway (operators)
    #[command(subcommand)]
    AccessKey(access_keys::AccessKeyCommand),
}

#[derive(Debug, Args)]
struct CompletionArgs {
    /// The shell to complete in
    #[arg(value_enum, ignore_case = true, value_name = "SHELL")]
    shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
struct CreateKeyArgs {
    /// KMS instance to create the key in; without it, the account's default key is created
    #[arg(long, value_name = "ID")]
    instance: Option<String>,
    /// Key spec (any case). A software instance offers Aliyun_AES_256, RSA_2048, RSA_3072,
    /// EC_P256, EC_P256K; a hardware instance also Aliyun_AES_192, Aliyun_AES_128, RSA_4096;
    /// the default key is Aliyun_AES_256
    #[arg(long, value_name = "SPEC", default_value = "Aliyun_AES_256", value_parser = args::key_spec())]
    spec: KeySpec,
    /// Key usage: ENCRYPT/DECRYPT or SIGN/VERIFY [default: the usual one for the spec]
    #[arg(long, value_name = "USAGE", value_parser = args::key_usage())]
    usage: Option<KeyUsage>,
    /// Where the key material comes from: Aliyun_KMS (or kms) generates it, EXTERNAL waits for
    /// an import
    #[arg(long, value_name = "ORIGIN", default_value = "Aliyun_KMS", value_parser = args::key_origin())]
    origin: KeyOrigin,
    /// Description, at most 8,192 characters
    #[arg(long, value_name = "TEXT")]
    description: Option<String>,
    /// Alias for the new key, `alias/NAME`
    #[arg(long, value_name = "alias/NAME")]
    alias: Option<String>,
    /// Tag the key; repeatable
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_pair)]
    tags: Vec<(String, String)>,
    /// Turn on automatic rotation every N days (7–365)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    rotation_days: Option<u32>,
    /// Turn automatic rotation off (it is on by default for the default key and symmetric keys
    /// in a software instance; keys with imported material never rotate automatically)
    #[arg(long, conflicts_with = "rotation_days")]
    no_rotation: bool,
    /// Key policy (JSON) to attach instead of the default policy
    #[arg(long, value_name = "FILE")]
    policy_file: Option<PathBuf>,
    /// When the key already exists, print it instead of failing: the account's default key
    /// (without --instance), or the key --alias names, if its spec, usage, origin and instance
    /// are the ones asked for. Safe to run again, as in a script
    #[arg(long)]
    if_not_exists: bool,
}

#[derive(Debug, Args)]
struct DescribeKeyArgs {
    #[command(flatten)]
    key: KeyArg,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["plaintext", "input"])))]
struct EncryptArgs {
    /// Key id, alias (`alias/...`) or ARN
    #[arg(long, value_name = "KEY", value_parser = args::key_ref)]
    key: String,
    /// Plaintext to encrypt (UTF-8 text)
    #[arg(long, value_name = "TEXT")]
    plaintext: Option<String>,
    /// Read the plaintext from FILE (`-` for stdin)
    #[arg(long = "in", value_name = "FILE")]
    input: Option<PathBuf>,
    /// Encryption context entry; repeatable; decryption needs the same entries
    #[arg(long = "context", value_name = "K=V", value_parser = parse_pair)]
    context: Vec<(String, String)>,
    /// Write the raw ciphertext blob to FILE instead of printing base64
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Check the request (key, permission, state) without encrypting
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["ciphertext", "input"])))]
struct DecryptArgs {
    /// Ciphertext blob, base64
    #[arg(long, value_name = "BASE64")]
    ciphertext: Option<String>,
    /// Read the ciphertext blob from FILE, raw bytes or base64 (`-` for stdin)
    #[arg(long = "in", value_name = "FILE")]
    input: Option<PathBuf>,
    /// Encryption context entry; repeatable; must equal the one given at encryption
    #[arg(long = "context", value_name = "K=V", value_parser = parse_pair)]
    context: Vec<(String, String)>,
    /// Write the plaintext to FILE instead of stdout
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Print the plaintext as base64 (for binary plaintext)
    #[arg(long)]
    base64: bool,
    /// Check the request (blob, key, permission, state) without decrypting
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Subcommand)]
enum DevCommand {
    /// Start kms-data and kms-control in the foreground, with a SoftHSM token under DIR
    ///
    /// Creates DIR (SoftHSM token, sled data, logs, generated configs) on first use and
    /// reuses it afterwards, so keys survive a restart. Makes a software and a hardware KMS
    /// instance for the dev account on the first start and reuses those on every later one
    /// (their ids are kept in DIR/instances.json; dev.json names them). Stops both planes on
    /// Ctrl-C.
    #[command(after_help = "\
Examples:
  kmsctl dev up --dir .dev
  kmsctl dev up --dir .dev --mtls
  kmsctl dev up --dir /tmp/kms --control-addr 127.0.0.1:8700 --data-addr 127.0.0.1:8701")]
    Up(dev::UpArgs),
    /// Make a CA and the certificates for a local mTLS stack (development only)
    ///
    /// Writes a CA, a server certificate per plane (SANs localhost, 127.0.0.1 and each --san)
    /// and a client certificate per principal, naming it in a URI SAN. Private keys are mode
    /// 0600. Every run makes a new CA and replaces the files.
    #[command(after_help = "\
Examples:
  kmsctl dev certs --dir .dev/tls
  kmsctl dev certs --dir .dev/tls --principal acs:ram::1234567890123456:user/alice
  kmsctl dev certs --dir tls --san kms-control --san kms-data")]
    Certs(certs::CertsArgs),
}

/// Whether `kmsctl dev certs` got `--principal` on its own command line. The global
/// `--principal` (and `KMS_PRINCIPAL`) share the name, and clap shares their values, so only a
/// command-line value counts as a list of certificate principals.
fn cert_principals_given(matches: &ArgMatches) -> bool {
    matches
        .subcommand_matches("dev")
        .and_then(|m| m.subcommand_matches("certs"))
        .and_then(|m| m.value_source("principal"))
        == Some(clap::parser::ValueSource::CommandLine)
}

/// Parses `KEY=VALUE`: the key must be non-empty; the value may be empty and may hold `=`.
fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.to_string(), v.to_string())),
        Some(_) => Err(format!("{s:?} has an empty key; expected KEY=VALUE")),
        None => Err(format!("{s:?} has no `=`; expected KEY=VALUE")),
    }
}

/// Normalises an address: `host:port` gets `http://`; only `http` and `https` are accepted.
fn parse_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    let (scheme, rest) = s.split_once("://").unwrap_or(("http", s));
    if !matches!(scheme, "http" | "https") {
        return Err(format!(
            "unsupported scheme {scheme:?} in {s:?}; use http:// or https://"
        ));
    }
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err(format!(
            "the address {s:?} names no host; expected HOST:PORT or a URL"
        ));
    }
    let url = format!("{scheme}://{rest}");
    tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| format!("{s:?} is not a valid address: {e}"))?;
    Ok(url)
}

/// Collects `K=V` pairs into a map; a key given twice is refused.
fn pairs_to_map(pairs: &[(String, String)], what: &str) -> anyhow::Result<HashMap<String, String>> {
    let mut map = HashMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        if map.insert(k.clone(), v.clone()).is_some() {
            anyhow::bail!("{what} key {k:?} is given more than once");
        }
    }
    Ok(map)
}

#[tokio::main]
async fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        Err(err) => return errors::usage(err),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => return errors::usage(err),
    };
    let structured = match OutputArg::from_flags(cli.global.json, cli.global.output) {
        Some(OutputArg::Yaml) => {
            output::set_syntax(output::Syntax::Yaml);
            true
        }
        Some(OutputArg::Json) => true,
        Some(OutputArg::Table) | None => false,
    };
    let result = match cli.command {
        Command::Dev(DevCommand::Up(args)) => dev::up(args).await,
        Command::Dev(DevCommand::Certs(args)) => {
            certs::certs(args, cert_principals_given(&matches))
        }
        Command::Completion(args) => {
            let mut out = Vec::new();
            clap_complete::generate(args.shell, &mut Cli::command(), "kmsctl", &mut out);
            output::write_stdout(&out).map(|()| ExitCode::SUCCESS)
        }
        command => match cli.global.resolve() {
            Ok((planes, chosen)) => {
                let format = match chosen {
                    OutputArg::Table => Format::Human,
                    OutputArg::Json => Format::Json,
                    OutputArg::Yaml => {
                        output::set_syntax(output::Syntax::Yaml);
                        Format::Json
                    }
                };
                return finish(run(&planes, format, command).await, format == Format::Json);
            }
            Err(err) => Err(err),
        },
    };
    finish(result, structured)
}

/// The exit code of a command's result, its error reported on stderr (as a document when
/// `structured`).
fn finish(result: anyhow::Result<ExitCode>, structured: bool) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            errors::report(&err, structured);
            ExitCode::FAILURE
        }
    }
}

/// Runs a command that calls the planes.
async fn run(planes: &Planes, format: Format, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::CreateKey(args) => keys::create_key(planes, format, args).await,
        Command::DescribeKey(args) => keys::describe_key(planes, format, args).await,
        Command::Lifecycle(command) => lifecycle::run(planes, format, command).await,
        Command::Aliases(command) => aliases::run(planes, format, command).await,
        Command::Tags(command) => tags::run(planes, format, command).await,
        Command::Instances(command) => instances::run(planes, format, command).await,
        Command::Import(command) => import::run(planes, format, command).await,
        Command::Encrypt(args) => crypto::encrypt(planes, format, args).await,
        Command::Decrypt(args) => crypto::decrypt(planes, format, args).await,
        Command::CryptoOps(command) => crypto_ops::run(planes, format, command).await,
        Command::Audit(command) => audit::run(planes, command, format).await,
        Command::Admin(command) => admin::run(planes, format, command).await,
        Command::AccessKey(command) => access_keys::run(planes, format, command).await,
        Command::Dev(_) | Command::Completion(_) => {
            anyhow::bail!("this command calls no plane")
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn pairs() {
        let ok = [
            ("a=b", ("a", "b")),
            ("app=web=1", ("app", "web=1")),
            ("k=", ("k", "")),
            ("Dept=R&D", ("Dept", "R&D")),
        ];
        for (input, (k, v)) in ok {
            assert_eq!(
                parse_pair(input),
                Ok((k.to_string(), v.to_string())),
                "{input}"
            );
        }
        for (input, msg) in [
            ("novalue", "no `=`"),
            ("=v", "empty key"),
            ("", "no `=`"),
            (" =v", "empty key"),
        ] {
            let err = parse_pair(input).unwrap_err();
            assert!(
                err.contains(msg) && err.contains("KEY=VALUE"),
                "{input}: {err}"
            );
        }
    }

    #[test]
    fn bad_pair_is_a_usage_error() {
        let err = Cli::try_parse_from([
            "kmsctl",
            "encrypt",
            "--key",
            "alias/k",
            "--plaintext",
            "x",
            "--context",
            "oops",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(err.to_string().contains("KEY=VALUE"), "{err}");
    }

    #[test]
    fn duplicate_context_keys_are_refused() {
        let pairs = vec![
            ("a".to_string(), "1".to_string()),
            ("a".to_string(), "2".to_string()),
        ];
        assert!(pairs_to_map(&pairs, "context").is_err());
        let pairs = vec![
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
        ];
        assert_eq!(pairs_to_map(&pairs, "context").unwrap().len(), 2);
    }

    #[test]
    fn addresses() {
        let cases = [
            ("127.0.0.1:7700", Ok("http://127.0.0.1:7700")),
            ("http://127.0.0.1:7700", Ok("http://127.0.0.1:7700")),
            ("https://kms.example.com", Ok("https://kms.example.com")),
            ("http://localhost:7701/", Ok("http://localhost:7701")),
            (" localhost:7701 ", Ok("http://localhost:7701")),
            ("[::1]:7700", Ok("http://[::1]:7700")),
            ("", Err("no host")),
            ("ftp://host:21", Err("scheme")),
            ("http://", Err("no host")),
            ("https:///", Err("no host")),
            ("host name:1", Err("not a valid address")),
        ];
        for (input, want) in cases {
            match (parse_url(input), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{input:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{input:?}: {got}"),
                (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn globals_and_env_defaults() {
        let cli = Cli::try_parse_from([
            "kmsctl",
            "describe-key",
            "alias/x",
            "--control",
            "10.0.0.1:1",
            "--json",
        ])
        .unwrap();
        assert_eq!(cli.global.control.as_deref(), Some("http://10.0.0.1:1"));
        assert!(cli.global.json);
    }

    #[test]
    fn create_key_flags() {
        let cli = Cli::try_parse_from([
            "kmsctl",
            "create-key",
            "--spec",
            "rsa_2048",
            "--usage",
            "sign/verify",
            "--origin",
            "external",
            "--tag",
            "env=dev",
            "--tag",
            "team=kms",
        ])
        .unwrap();
        let Command::CreateKey(args) = cli.command else {
            panic!("not create-key");
        };
        assert_eq!(args.spec, KeySpec::Rsa2048);
        assert_eq!(args.usage, Some(KeyUsage::SignVerify));
        assert_eq!(args.origin, KeyOrigin::External);
        assert_eq!(args.tags.len(), 2);

        let both = Cli::try_parse_from([
            "kmsctl",
            "create-key",
            "--rotation-days",
            "30",
            "--no-rotation",
        ]);
        assert!(both.is_err());
        let bad_spec = Cli::try_parse_from(["kmsctl", "create-key", "--spec", "AES_512"]);
        assert!(bad_spec.is_err());
    }

    #[test]
    fn mtls_options_go_together() {
        let parse = |args: &[&str]| {
            let mut all = vec!["kmsctl"];
            all.extend_from_slice(args);
            all.extend_from_slice(&["describe-key", "alias/k"]);
            let g = Cli::try_parse_from(all).unwrap().global;
            tls_files(g.ca, g.cert, g.cert_key)
        };
        let tls = parse(&["--ca", "ca.pem", "--cert", "c.pem", "--cert-key", "k.pem"])
            .unwrap()
            .unwrap();
        assert_eq!(tls.cert, PathBuf::from("c.pem"));
        assert!(parse(&[]).unwrap().is_none());
        let err = parse(&["--ca", "ca.pem", "--cert", "c.pem"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--cert-key") && err.contains("KMS_KEY"),
            "{err}"
        );
        // `encrypt --key` still names the key to encrypt with.
        let cli = Cli::try_parse_from([
            "kmsctl",
            "--cert-key",
            "k.pem",
            "encrypt",
            "--key",
            "alias/demo",
            "--plaintext",
            "x",
        ])
        .unwrap();
        let Command::Encrypt(args) = cli.command else {
            panic!("not encrypt");
        };
        assert_eq!(args.key, "alias/demo");
        assert_eq!(cli.global.cert_key, Some(PathBuf::from("k.pem")));
    }

    #[test]
    fn dev_certs_principals() {
        let matches = |args: &[&str]| Cli::command().try_get_matches_from(args).unwrap();
        let m = matches(&[
            "kmsctl",
            "dev",
            "certs",
            "--dir",
            "d",
            "--principal",
            "acs:ram::1:root",
            "--principal",
            "acs:ram::2:root",
        ]);
        assert!(cert_principals_given(&m));
        let cli = Cli::from_arg_matches(&m).unwrap();
        let Command::Dev(DevCommand::Certs(_)) = cli.command else {
            panic!("not dev certs");
        };
        assert!(!cert_principals_given(&matches(&[
            "kmsctl", "dev", "certs", "--dir", "d"
        ])));
        // The global --principal still works for the other commands.
        let cli = Cli::try_parse_from([
            "kmsctl",
            "--principal",
            "acs:ram::1:root",
            "describe-key",
            "alias/k",
        ])
        .unwrap();
        assert_eq!(cli.global.principal.as_deref(), Some("acs:ram::1:root"));
    }

    #[test]
    fn audit_verify_parses() {
        let cli = Cli::try_parse_from(["kmsctl", "audit", "verify", "a.log"]).unwrap();
        assert!(matches!(cli.command, Command::Audit(_)));
        assert!(Cli::try_parse_from(["kmsctl", "audit", "verify"]).is_err());
    }

    #[test]
    fn encrypt_needs_exactly_one_source() {
        assert!(Cli::try_parse_from(["kmsctl", "encrypt", "--key", "alias/k"]).is_err());
        assert!(
            Cli::try_parse_from([
                "kmsctl",
                "encrypt",
                "--key",
                "alias/k",
                "--plaintext",
                "x",
                "--in",
                "f"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["kmsctl", "decrypt", "--in", "f"]).is_ok());
    }
}
