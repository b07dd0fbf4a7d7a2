//! The SoftHSM side of `kmsctl dev up`: the module, and the token made once and reused.

use super::*;

/// Where SoftHSM's PKCS#11 module may live, in order of preference.
pub(super) const MODULE_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
];
pub(super) const TOKEN_LABEL: &str = "kms";

/// The first SoftHSM module path that exists.
pub(super) fn find_module() -> anyhow::Result<PathBuf> {
    MODULE_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the SoftHSM module libsofthsm2.so is not in any of {}: install the Debian \
                 package `softhsm2` (scripts/ensure-deps.sh does)",
                MODULE_CANDIDATES.join(", ")
            )
        })
}

/// Writes a new secret file with mode 0600.
pub(super) fn write_secret(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

pub(super) fn new_pin() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Creates the token on first use; reuses it when `hsm.pin` exists.
pub(super) async fn ensure_token(layout: &Layout) -> anyhow::Result<()> {
    if layout.user_pin.exists() {
        println!("reusing the SoftHSM token in {}", layout.tokens.display());
        return Ok(());
    }
    let has_tokens = std::fs::read_dir(&layout.tokens)
        .with_context(|| format!("cannot read {}", layout.tokens.display()))?
        .next()
        .is_some();
    if has_tokens {
        anyhow::bail!(
            "{} holds a token but {} is missing, so the token cannot be opened; remove {} to \
             start afresh",
            layout.tokens.display(),
            layout.user_pin.display(),
            layout.dir.display()
        );
    }
    let so_pin = new_pin();
    let user_pin = new_pin();
    let output = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", TOKEN_LABEL, "--so-pin"])
        .arg(&so_pin)
        .arg("--pin")
        .arg(&user_pin)
        .env("SOFTHSM2_CONF", &layout.softhsm_conf)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!(
                "softhsm2-util not found: install the Debian package `softhsm2` \
                 (`sudo apt-get install softhsm2`, or scripts/ensure-deps.sh)"
            ),
            _ => anyhow::anyhow!("cannot run softhsm2-util: {e}"),
        })?;
    if !output.status.success() {
        anyhow::bail!(
            "softhsm2-util --init-token failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    // The user pin file goes last: its presence means "the token is ready".
    write_secret(&layout.so_pin, &so_pin)?;
    write_secret(&layout.user_pin, &user_pin)?;
    println!(
        "initialised SoftHSM token {TOKEN_LABEL:?} in {}",
        layout.tokens.display()
    );
    Ok(())
}
