//! Process-wide bookkeeping of loaded PKCS#11 modules: one C_Initialize and one C_Finalize
//! per module, however many [`crate::Hsm`]s and setup calls use it.
//!
//! A module's state is per process (the loader hands out the same library for the same
//! path), so a second C_Initialize answers `CKR_CRYPTOKI_ALREADY_INITIALIZED`, and cryptoki
//! 0.12 no longer calls C_Finalize when a `Pkcs11` drops. This registry counts users and
//! finalizes when the last one goes, so a later open in the same process initialises the
//! module afresh (and SoftHSM2 rereads its token directory). A module that something else in
//! the process initialised is used but never finalized here.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};

use crate::HsmError;

struct Entry {
    key: PathBuf,
    ctx: Pkcs11,
    users: usize,
    /// Whether our C_Initialize succeeded, so the matching C_Finalize is ours to call.
    owned: bool,
}

/// Loaded modules. Held across C_Initialize and C_Finalize (startup and shutdown only, never
/// during an operation) so that an initialise cannot race a finalize of the same module.
static MODULES: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// A counted use of an initialised module; the last one to drop finalizes it.
pub(crate) struct ModuleRef {
    key: PathBuf,
    ctx: Pkcs11,
}

impl ModuleRef {
    /// Loads and initialises the module at `path` (with OS locking), or joins the users of
    /// the copy already initialised in this process.
    pub(crate) fn acquire(path: &Path) -> Result<ModuleRef, HsmError> {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut modules = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = modules.iter_mut().find(|e| e.key == key) {
            entry.users += 1;
            return Ok(ModuleRef {
                key,
                ctx: entry.ctx.clone(),
            });
        }
        let ctx = Pkcs11::new(path).map_err(|source| HsmError::ModuleLoad {
            path: path.to_path_buf(),
            source,
        })?;
        let owned = match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => true,
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, Function::Initialize)) => {
                tracing::warn!(
                    module = %path.display(),
                    "pkcs#11 module already initialised elsewhere in this process; it will not be finalized here"
                );
                false
            }
            Err(e) => return Err(HsmError::pkcs11("initialising the pkcs#11 module")(e)),
        };
        modules.push(Entry {
            key: key.clone(),
            ctx: ctx.clone(),
            users: 1,
            owned,
        });
        Ok(ModuleRef { key, ctx })
    }

    /// The cryptoki context.
    pub(crate) fn ctx(&self) -> &Pkcs11 {
        &self.ctx
    }
}

impl Drop for ModuleRef {
    fn drop(&mut self) {
        let mut modules = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(pos) = modules.iter().position(|e| e.key == self.key) else {
            return;
        };
        let entry = &mut modules[pos];
        entry.users = entry.users.saturating_sub(1);
        if entry.users > 0 {
            return;
        }
        let entry = modules.swap_remove(pos);
        if entry.owned
            && let Err(e) = entry.ctx.finalize()
        {
            tracing::warn!(error = %e, "C_Finalize failed");
        }
    }
}
