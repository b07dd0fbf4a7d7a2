//! Token setup for development and tests: a SoftHSM2 configuration in a directory, and
//! initialising a token with its SO and user PINs.

use std::io;
use std::path::{Path, PathBuf};

use cryptoki::session::UserType;
use secrecy::SecretString;

use crate::HsmError;
use crate::module::ModuleRef;

/// Longest token label PKCS#11 stores (`CK_TOKEN_INFO.label` is 32 bytes).
const MAX_LABEL_LEN: usize = 32;

/// Initialises a token labelled `label` with `so_pin` and sets its user PIN to `user_pin`.
///
/// Returns `false` and changes nothing if an initialised token with that label exists,
/// `true` after initialising a slot's uninitialised token. The module is initialised and
/// finalized within the call (unless an [`crate::Hsm`] in this process is using it), so a
/// later [`crate::Hsm::open`], in this process or another, sees the new token.
pub fn init_token(
    module_path: &Path,
    label: &str,
    so_pin: &SecretString,
    user_pin: &SecretString,
) -> Result<bool, HsmError> {
    if label.is_empty() || label.len() > MAX_LABEL_LEN {
        return Err(HsmError::InvalidParams("token label must be 1 to 32 bytes"));
    }
    let module = ModuleRef::acquire(module_path)?;
    let ctx = module.ctx();
    let slots = ctx
        .get_slots_with_token()
        .map_err(HsmError::pkcs11("listing slots"))?;
    let mut free = None;
    for slot in slots {
        let info = ctx
            .get_token_info(slot)
            .map_err(HsmError::pkcs11("reading token info"))?;
        if info.token_initialized() {
            if info.label() == label {
                return Ok(false);
            }
        } else if free.is_none() {
            free = Some(slot);
        }
    }
    let Some(slot) = free else {
        return Err(HsmError::NoFreeSlot {
            label: label.to_owned(),
        });
    };
    ctx.init_token(slot, so_pin, label)
        .map_err(HsmError::pkcs11("initialising the token"))?;
    let session = ctx
        .open_rw_session(slot)
        .map_err(HsmError::pkcs11("opening a session on the new token"))?;
    session
        .login(UserType::So, Some(so_pin))
        .map_err(|source| HsmError::LoginFailed {
            token: label.to_owned(),
            source,
        })?;
    session
        .init_pin(user_pin)
        .map_err(HsmError::pkcs11("setting the user pin"))?;
    // Closing the last session logs out too; a failed C_Logout changes nothing here.
    if let Err(e) = session.logout() {
        tracing::debug!(error = %e, "C_Logout after token setup failed");
    }
    drop(session);
    tracing::info!(token = %label, slot = %slot, "initialised hsm token");
    Ok(true)
}

/// Writes `dir/softhsm2.conf` pointing SoftHSM2 at a fresh `dir/tokens/`, and returns the
/// configuration's path.
///
/// SoftHSM2 reads the path from the `SOFTHSM2_CONF` environment variable when the module
/// is loaded, so set it for the process (or child process) before the first
/// [`crate::Hsm::open`] or [`init_token`].
pub fn write_softhsm_conf(dir: &Path) -> io::Result<PathBuf> {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens)?;
    let tokens = std::fs::canonicalize(&tokens)?;
    let Some(tokens_str) = tokens.to_str().filter(|s| !s.contains(['\n', '\r'])) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "token directory path is not a single line of utf-8",
        ));
    };
    let conf = tokens.with_file_name("softhsm2.conf");
    let text = format!(
        "directories.tokendir = {tokens_str}\n\
         objectstore.backend = file\n\
         log.level = ERROR\n\
         slots.removable = false\n"
    );
    std::fs::write(&conf, text)?;
    Ok(conf)
}
