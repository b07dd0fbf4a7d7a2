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
use cryptoki::object::{AttributeType, KeyType, ObjectClass};
use cryptoki::session::Session;
use cryptoki::session::UserType;
use cryptoki::types::Ulong;
use kms_backend::conformance::TestKey;
use kms_backend::{
    Backend, BackendError, GCM_IV_LEN, KeyResidence, PublicKeyRef, RootWrapper, SecretBytes,
    conformance,
};
use kms_backend_pkcs11::{Hsm, HsmError, HsmParams, init_token, write_softhsm_conf};
use kms_backend_soft::SoftBackend;
use kms_types::{Algorithm, KeySpec};
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
    // The inner run's report (Wycheproof counts per group), shown with --nocapture.
    println!("{stdout}");
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
        caps.random
            && caps.aead
            && caps.key_specs == KeySpec::ALL
            && caps.residence == KeyResidence::Device,
        "{caps:?}"
    );

    conformance::check_root_wrapper(&hsm);
    conformance::check_randomness(&hsm);

    // Every operation on HSM keys, and interop with the software backend both ways.
    let hsm_keys = conformance::run_all(&hsm);
    let soft = SoftBackend::new();
    let soft_keys = conformance::make_keys(&soft);
    conformance::check_cross(&hsm, &hsm_keys, &soft, &soft_keys);
    let groups = conformance::wycheproof::run_all(&hsm);
    // ECDSA x2, PKCS#1 x3, PSS x3, OAEP x5, AES-GCM 128, 192 and 256.
    ensure!(groups.len() == 16, "{groups:?}");

    check_session_objects(&hsm)?;
    check_loaded_keys_survive_logout(&hsm, &hsm_keys)?;
    check_unload_destroys_objects(&hsm)?;
    drop(hsm_keys);
    check_wrap_errors(&hsm)?;
    check_concurrent_wrapping(&hsm)?;
    check_relogin_after_logout(&hsm)?;

    // A key that must never serve as root key, made while `hsm` holds the login.
    make_extractable_key("unsafe-root")?;

    let secret = SecretBytes::copy_from(b"0123456789abcdef0123456789abcdef");
    let blob = hsm.wrap_secret(b"key-version-1", &secret)?;
    // Secrets derived from the root key: stable per label, unrelated across labels.
    let derived = hsm.derive_secret(b"import-digest")?;
    ensure!(derived.len() == 32 && derived != SecretBytes::new(vec![0; 32]));
    ensure!(hsm.derive_secret(b"import-digest")? == derived);
    ensure!(hsm.derive_secret(b"something-else")? != derived);
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
    ensure!(
        hsm.derive_secret(b"import-digest")? == derived,
        "a derived secret changed with a new session"
    );
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

/// What the key handling is built on: in SoftHSM2 a session object is usable and
/// destroyable from every session of the process, dies with the session that created it, and
/// (if private) with a logout, for good.
fn check_session_objects(hsm: &Hsm) -> anyhow::Result<()> {
    let creator = foreign_session()?;
    let other = foreign_session()?;
    let template = [
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::ValueLen(Ulong::try_from(32usize)?),
    ];
    let key = creator.generate_key(&Mechanism::AesKeyGen, &template)?;
    ensure!(
        other.get_attributes(key, &[AttributeType::Class]).is_ok(),
        "a session object is invisible to another session"
    );
    let ct = other.encrypt(&Mechanism::AesEcb, key, &[0u8; 16])?;
    ensure!(ct.len() == 16);
    let doomed = creator.generate_key(&Mechanism::AesKeyGen, &template)?;
    other.destroy_object(doomed)?;
    drop(creator);
    match other.get_attributes(key, &[AttributeType::Class]) {
        Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => {}
        other => bail!("session object outlived its session: {other:?}"),
    }
    // A public session object survives a logout; a private one does not, even after login.
    let public = other.create_object(&[
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Token(false),
        Attribute::Private(false),
        Attribute::EcParams(kms_backend::P256_EC_PARAMS.to_vec()),
        Attribute::EcPoint(p256_generator_octet_string()),
    ])?;
    let private = other.generate_key(&Mechanism::AesKeyGen, &template)?;
    other.logout()?;
    ensure!(
        other
            .get_attributes(public, &[AttributeType::Class])
            .is_ok()
    );
    other.login(UserType::User, Some(&SecretString::from(USER_PIN)))?;
    ensure!(
        other
            .get_attributes(private, &[AttributeType::Class])
            .is_err(),
        "a private session object survived a logout"
    );
    other.destroy_object(public)?;
    // The hsm logs in again by itself on its next call.
    let mut random = [0u8; 8];
    hsm.fill_random(&mut random)?;
    Ok(())
}

fn p256_generator_octet_string() -> Vec<u8> {
    let mut der = vec![0x04, 0x41, 0x04];
    der.extend_from_slice(&[
        0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40,
        0xf2, 0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98,
        0xc2, 0x96, 0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c,
        0x0f, 0x9e, 0x16, 0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68,
        0x37, 0xbf, 0x51, 0xf5,
    ]);
    der
}

/// A logout destroys every loaded key object; cached handles unwrap themselves again.
fn check_loaded_keys_survive_logout(hsm: &Hsm, keys: &[TestKey]) -> anyhow::Result<()> {
    let digest = [0x11u8; 32];
    let iv = [1u8; GCM_IV_LEN];
    let Some(aes) = keys.iter().find(|k| k.spec == KeySpec::AliyunAes192) else {
        bail!("no aes-192 key");
    };
    let Some(ec) = keys.iter().find(|k| k.spec == KeySpec::EcP256K) else {
        bail!("no secp256k1 key");
    };
    let sealed = hsm.aead_encrypt(&aes.handle, &iv, b"aad", b"before logout")?;
    foreign_session()?.logout()?;
    ensure!(
        hsm.aead_decrypt(&aes.handle, &iv, b"aad", &sealed)?
            .expose()
            == b"before logout"
    );
    let signature = hsm.sign(&ec.handle, Algorithm::EcdsaSha256, &digest)?;
    ensure!(hsm.verify(
        PublicKeyRef::Handle(&ec.handle),
        Algorithm::EcdsaSha256,
        &digest,
        &signature
    )?);
    Ok(())
}

/// Dropping the last handle of a key destroys its objects in the HSM; other keys live on.
fn check_unload_destroys_objects(hsm: &Hsm) -> anyhow::Result<()> {
    let count = || -> anyhow::Result<usize> {
        let session = foreign_session()?;
        Ok(session
            .find_objects(&[
                Attribute::Token(false),
                Attribute::Class(ObjectClass::SECRET_KEY),
            ])?
            .len())
    };
    let sealed = hsm.generate_sealed(KeySpec::AliyunAes256, b"unload")?;
    let mut random = [0u8; 4];
    hsm.fill_random(&mut random)?;
    let before = count()?;
    let handle = hsm.load_sealed(KeySpec::AliyunAes256, b"unload", &sealed.sealed)?;
    ensure!(count()? == before + 1, "loading made no object");
    let clone = handle.clone();
    hsm.unload(handle)?;
    ensure!(
        count()? == before + 1,
        "unloading one of two clones destroyed the object"
    );
    hsm.unload(clone)?;
    ensure!(
        count()? == before,
        "unloading the last clone left the object"
    );
    // A plain drop queues the objects; the next call destroys them.
    let handle = hsm.load_sealed(KeySpec::AliyunAes256, b"unload", &sealed.sealed)?;
    drop(handle);
    hsm.fill_random(&mut random)?;
    let again = hsm.load_sealed(KeySpec::AliyunAes256, b"unload", &sealed.sealed)?;
    ensure!(
        count()? == before + 1,
        "a dropped handle's object was not destroyed"
    );
    drop(again);
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
