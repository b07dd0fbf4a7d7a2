//! Test tool: prints, one hex line per key version, the key material a stopped control plane's
//! sled store (a directory) or a backup file holds sealed, opened through the test token. The
//! end-to-end tests use it to learn the real material so they can prove it appears nowhere at
//! rest. Versions of HSM keys are left out: their material is wrapped for the HSM alone and
//! never exists in plaintext outside it. Needs `SOFTHSM2_CONF`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kms_backend::RootWrapper;
use kms_backend_pkcs11::{Hsm, HsmParams};
use kms_control::schema::KEY_PREFIX;
use kms_e2e::{SOFTHSM_MODULE, TOKEN_LABEL, USER_PIN};
use kms_store::{SledStore, Store};
use kms_types::ProtectionLevel;

fn main() -> Result<()> {
    let path: PathBuf = std::env::args_os()
        .nth(1)
        .context("usage: kms-e2e-unseal SLED_DIR|BACKUP_FILE")?
        .into();
    let records = if path.is_dir() {
        key_records_in_sled(&path)?
    } else {
        key_records_in_backup(&path)?
    };
    let hsm = Hsm::open(&HsmParams {
        module_path: SOFTHSM_MODULE.into(),
        token_label: TOKEN_LABEL.into(),
        user_pin: USER_PIN.to_string().into(),
        root_key_label: "kms-root-v1".into(),
        max_sessions: 1,
    })?;
    for value in &records {
        let record = kms_control::schema::decode_key(value).map_err(|e| anyhow::anyhow!("{e}"))?;
        if record.protection == ProtectionLevel::Hsm {
            continue;
        }
        for v in &record.versions {
            let material = hsm
                .unwrap_secret(v.id.as_bytes(), &v.wrapped_material)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", hex::encode(material.expose()));
        }
    }
    Ok(())
}

/// The values of the key records in a sled store.
fn key_records_in_sled(dir: &Path) -> Result<Vec<Vec<u8>>> {
    let store = SledStore::open(dir)?;
    let mut records = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.scan_prefix(KEY_PREFIX, after.as_deref(), 100)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        records.extend(page.into_iter().map(|(_, value)| value));
    }
    Ok(records)
}

/// The values of the key records in a backup file, which must be whole.
fn key_records_in_backup(file: &Path) -> Result<Vec<Vec<u8>>> {
    let open = || std::fs::File::open(file).map(std::io::BufReader::new);
    kms_store::backup::verify(open()?)?;
    let mut reader = kms_store::backup::BackupReader::open(open()?)?;
    let mut records = Vec::new();
    while let Some((key, value)) = reader.next_entry()? {
        if key.starts_with(KEY_PREFIX) {
            records.push(value);
        }
    }
    Ok(records)
}
