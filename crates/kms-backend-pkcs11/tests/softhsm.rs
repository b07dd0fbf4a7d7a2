//! The PKCS#11 backend against a real SoftHSM2 token in a temporary directory.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` when the module loads, and tests cannot set environment
//! variables (edition 2024, no unsafe), so `softhsm_end_to_end` re-runs this test binary with
//! the variable set and only `softhsm_inner` selected; `softhsm_inner` does nothing unless
//! the marker variable says it is that child.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use cryptoki::session::Session;
use cryptoki::types::Ulong;
use kms_backend::{Backend, BackendError, RootWrapper, SecretBytes, conformance};
use kms_backend_pkcs11::{Hsm, HsmError, HsmParams, init_token, write_softhsm_conf};
use secrecy::SecretString;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const CHILD_MARKER: &str = "KMS_PKCS11_SOFTHSM_CHILD";
const INNER_TEST: &str = "softhsm_inner";
const TOKEN: &str = "kms-test";
const ROOT_KEY: &str = "kms-root";
const USER_PIN: &str = "user-pin-5678";
const WRONG_PIN: &str = "wrong-pin-31337";

#[test]
fn softhsm_end_to_end() -> anyhow::Result<()> {
    if std::env::var_os(CHILD_MARKER).is_some() {
        return Ok(());
    }
    let dir = tempfile::TempDir::new()?;
    let conf = write_softhsm_conf(dir.path())?;
    let text = std::fs::read_to_string(&conf)?;
    let tokens = std::fs::canonicalize(dir.path().join("tokens"))?;
    ensure!(text.contains(&format!("directories.tokendir = {}\n", tokens.display())));

    let output = Command::new(std::env::current_exe()?)
        .args(["--exact", INNER_TEST, "--nocapture"])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD_MARKER, "1")
        .output()
        .context("re-running the test binary")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "inner test failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    ensure!(
        stdout.contains(&format!("test {INNER_TEST} ... ok")) && stdout.contains("1 passed"),
        "inner test did not run\n--- stdout\n{stdout}"
    );
    ensure!(
        tokens.read_dir()?.next().is_some(),
        "no token was written to the temporary directory"
    );
    dir.close()?;
    Ok(())
}

fn params() -> HsmParams {
    HsmParams {
        module_path: PathBuf::from(MODULE),
        token_label: TOKEN.to_owned(),
        user_pin: SecretString::from(USER_PIN),
        root_key_label: ROOT_KEY.to_owned(),
        max_sessions: 3,
    }
}

#[test]
fn softhsm_inner() -> anyhow::Result<()> {
    if std::env::var_os(CHILD_MARKER).is_none() {
        return Ok(());
    }
    let module = Path::new(MODULE);
    let so_pin = SecretString::from("so-pin-1234");
    let user_pin = SecretString::from(USER_PIN);
    ensure!(
        init_token(module, TOKEN, &so_pin, &user_pin)?,
        "first init_token did nothing"
    );
    ensure!(
        !init_token(module, TOKEN, &so_pin, &user_pin)?,
        "second init_token changed something"
    );

    let hsm = Hsm::open(&params())?;
    let mechanisms = hsm.mechanism_names();
    ensure!(
        mechanisms.iter().any(|m| m == "CKM_AES_GCM"),
        "{mechanisms:?}"
    );
    ensure!(hsm.name() == "pkcs11");
    let caps = hsm.capabilities();
    ensure!(
        caps.random && !caps.aead && caps.key_specs.is_empty(),
        "{caps:?}"
    );

    conformance::check_root_wrapper(&hsm);
    conformance::check_randomness(&hsm);
    check_wrap_errors(&hsm)?;
    check_concurrent_wrapping(&hsm)?;
    check_relogin_after_logout(&hsm)?;

    // A key that must never serve as root key, made while `hsm` holds the login.
    make_extractable_key("unsafe-root")?;

    let secret = SecretBytes::copy_from(b"0123456789abcdef0123456789abcdef");
    let blob = hsm.wrap_secret(b"key-version-1", &secret)?;
    drop(hsm);

    match Hsm::open(&HsmParams {
        root_key_label: "unsafe-root".to_owned(),
        ..params()
    }) {
        Err(HsmError::RootKeyUnsafe { label, reason }) => {
            ensure!(label == "unsafe-root", "{label}");
            ensure!(reason.contains("SENSITIVE"), "{reason}");
        }
        other => bail!("extractable root key accepted: {other:?}"),
    }

    // A second open (after C_Finalize and a fresh C_Initialize) finds the same root key.
    let hsm = Hsm::open(&params())?;
    ensure!(hsm.unwrap_secret(b"key-version-1", &blob)? == secret);
    // Two Hsm at once share the module; dropping one leaves the other working.
    let other = Hsm::open(&params())?;
    ensure!(other.unwrap_secret(b"key-version-1", &blob)? == secret);
    drop(other);
    ensure!(hsm.unwrap_secret(b"key-version-1", &blob)? == secret);
    drop(hsm);

    // With no Hsm holding the login, a wrong PIN is refused and never shown.
    match Hsm::open(&HsmParams {
        user_pin: SecretString::from(WRONG_PIN),
        ..params()
    }) {
        Err(err @ HsmError::LoginFailed { .. }) => {
            let debug = format!("{err:?}");
            let shown = format!("{debug} / {:#}", anyhow::Error::new(err));
            ensure!(!shown.contains(WRONG_PIN), "pin in error: {shown}");
            ensure!(!shown.contains(USER_PIN), "pin in error: {shown}");
            ensure!(shown.contains("PinIncorrect"), "{shown}");
        }
        other => bail!("wrong pin accepted: {other:?}"),
    }

    match Hsm::open(&HsmParams {
        token_label: "no-such-token".to_owned(),
        ..params()
    }) {
        Err(HsmError::TokenNotFound { label, found }) => {
            ensure!(label == "no-such-token");
            ensure!(found.iter().any(|l| l == TOKEN), "{found:?}");
        }
        other => bail!("missing token accepted: {other:?}"),
    }

    match Hsm::open(&HsmParams {
        module_path: PathBuf::from("/nonexistent/libpkcs11.so"),
        ..params()
    }) {
        Err(HsmError::ModuleLoad { .. }) => {}
        other => bail!("missing module accepted: {other:?}"),
    }
    Ok(())
}

fn check_wrap_errors(hsm: &Hsm) -> anyhow::Result<()> {
    let secret = SecretBytes::copy_from(&[7u8; 32]);
    let blob = hsm.wrap_secret(b"ctx", &secret)?;
    ensure!(
        blob.len() == 1 + 12 + 32 + 16 && blob[0] == 0x01,
        "{} bytes",
        blob.len()
    );

    let empty = hsm.wrap_secret(b"ctx", &SecretBytes::new(Vec::new()))?;
    ensure!(hsm.unwrap_secret(b"ctx", &empty)?.is_empty());

    ensure!(matches!(
        hsm.unwrap_secret(b"other", &blob),
        Err(BackendError::AuthenticationFailed)
    ));
    for index in [1, 13, blob.len() - 1] {
        let mut tampered = blob.clone();
        tampered[index] ^= 0x01;
        let result = hsm.unwrap_secret(b"ctx", &tampered);
        ensure!(
            matches!(result, Err(BackendError::AuthenticationFailed)),
            "byte {index}: {result:?}"
        );
    }
    let mut version = blob.clone();
    version[0] = 0x02;
    ensure!(matches!(
        hsm.unwrap_secret(b"ctx", &version),
        Err(BackendError::InvalidInput(_))
    ));
    for len in 0..29 {
        ensure!(matches!(
            hsm.unwrap_secret(b"ctx", &blob[..len]),
            Err(BackendError::InvalidInput(_))
        ));
    }
    // A ciphertext cut short but still long enough to parse fails authentication.
    ensure!(matches!(
        hsm.unwrap_secret(b"ctx", &blob[..blob.len() - 1]),
        Err(BackendError::AuthenticationFailed)
    ));
    // The sessions that saw errors were discarded; the pool still works.
    ensure!(hsm.unwrap_secret(b"ctx", &blob)? == secret);
    Ok(())
}

fn check_concurrent_wrapping(hsm: &Hsm) -> anyhow::Result<()> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8u8)
            .map(|worker| {
                scope.spawn(move || -> anyhow::Result<()> {
                    for round in 0..25u8 {
                        let context = [worker, round];
                        let secret = SecretBytes::copy_from(&[worker ^ round; 32]);
                        let blob = hsm.wrap_secret(&context, &secret)?;
                        ensure!(hsm.unwrap_secret(&context, &blob)? == secret);
                        let mut random = [0u8; 16];
                        hsm.fill_random(&mut random)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            match worker.join() {
                Ok(result) => result?,
                Err(_) => bail!("worker panicked"),
            }
        }
        Ok(())
    })
}

/// A second cryptoki context on the module this process already initialised (the library
/// state is per process), with a read-write session on the test token.
fn foreign_session() -> anyhow::Result<Session> {
    let ctx = Pkcs11::new(MODULE)?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, Function::Initialize)) => {}
        other => bail!("expected the module to be initialised already: {other:?}"),
    }
    for slot in ctx.get_slots_with_token()? {
        if ctx.get_token_info(slot)?.label() == TOKEN {
            return Ok(ctx.open_rw_session(slot)?);
        }
    }
    bail!("test token not found")
}

/// Someone else in the process logs the token out: the cached root key handle and every
/// session's login are gone, and the next operations must log in again by themselves.
fn check_relogin_after_logout(hsm: &Hsm) -> anyhow::Result<()> {
    let secret = SecretBytes::copy_from(&[9u8; 32]);
    let blob = hsm.wrap_secret(b"relogin", &secret)?;

    let session = foreign_session()?;
    session.logout()?;
    let again = hsm.wrap_secret(b"relogin", &secret)?;
    ensure!(hsm.unwrap_secret(b"relogin", &again)? == secret);

    session.logout()?;
    ensure!(hsm.unwrap_secret(b"relogin", &blob)? == secret);
    Ok(())
}

fn make_extractable_key(label: &str) -> anyhow::Result<()> {
    let session = foreign_session()?;
    session.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::ValueLen(Ulong::try_from(32usize)?),
            Attribute::Label(label.as_bytes().to_vec()),
        ],
    )?;
    Ok(())
}
