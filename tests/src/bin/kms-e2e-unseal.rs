//! Test tool: prints, one hex line per key version, the key material a stopped control plane's
//! sled store holds sealed, opened through the test token. The end-to-end tests use it to learn
//! the real material so they can prove it appears nowhere at rest. Needs `SOFTHSM2_CONF`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use kms_backend::RootWrapper;
use kms_backend_pkcs11::{Hsm, HsmParams};
use kms_e2e::{SOFTHSM_MODULE, TOKEN_LABEL, USER_PIN};
use kms_store::{SledStore, Store};

fn main() -> Result<()> {
    let sled_dir: PathBuf = std::env::args_os()
        .nth(1)
        .context("usage: kms-e2e-unseal SLED_DIR")?
        .into();
    let store = Arc::new(SledStore::open(&sled_dir)?);
    let hsm = Hsm::open(&HsmParams {
        module_path: SOFTHSM_MODULE.into(),
        token_label: TOKEN_LABEL.into(),
        user_pin: USER_PIN.to_string().into(),
        root_key_label: "kms-root-v1".into(),
        max_sessions: 1,
    })?;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.scan_prefix(b"k/", after.as_deref(), 100)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (_, value) in &page {
            let record =
                kms_control::schema::decode_key(value).map_err(|e| anyhow::anyhow!("{e}"))?;
            for v in &record.versions {
                let material = hsm
                    .unwrap_secret(v.id.as_bytes(), &v.wrapped_material)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                println!("{}", hex::encode(material.expose()));
            }
        }
    }
    Ok(())
}
