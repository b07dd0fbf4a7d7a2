//! [`Hsm`]: opening the token, the login, the root key, and running operations on pooled
//! sessions with one retry after a lost login.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::Ulong;
use kms_backend::{
    Backend, BackendError, Capabilities, GCM_IV_LEN, KeyHandle, KeyResidence, PublicKeyRef,
    SealedKey, SecretBytes,
};
use kms_types::{Algorithm, KeySpec};
use secrecy::SecretString;

use crate::error::{needs_relogin, to_backend_error};
use crate::keys::{BACKEND, Graveyard, HsmKey, Objects};
use crate::mechanisms::{OAEP_ROUTES, SIGN_ROUTES, missing_mechanisms};
use crate::module::ModuleRef;
use crate::pool::SessionPool;
use crate::{HsmError, HsmParams};

/// Root key length in bytes (AES-256).
const ROOT_KEY_LEN: usize = 32;

/// Distinguishes `Hsm`s in one process, so a key handle is only used by the `Hsm` that
/// loaded it.
static NEXT_HSM_ID: AtomicU64 = AtomicU64::new(1);

/// An open HSM token with its user logged in and its root key found.
///
/// Every method makes blocking PKCS#11 calls: run them on blocking threads
/// (`tokio::task::spawn_blocking` or a dedicated pool), never on an async worker. Sessions
/// come from a pool of at most `max_sessions`; a caller waits when all are in use.
pub struct Hsm {
    // Field order is drop order: sessions close before the module is finalized.
    pool: SessionPool,
    /// Held open for the life of the `Hsm`: SoftHSM2 logs the token out when the
    /// application's last session on it closes. It also owns the session objects of loaded
    /// keys (SoftHSM2 destroys session objects with the session that created them).
    keeper: Mutex<Session>,
    /// Counts keeper sessions: a re-login replaces the keeper, destroying the loaded keys'
    /// objects, and bumps this so that keys unwrap themselves again.
    epoch: AtomicU64,
    /// Objects of dropped key handles, destroyed by the next call.
    graveyard: Graveyard,
    id: u64,
    root_key: RwLock<ObjectHandle>,
    mechanisms: Vec<String>,
    slot: Slot,
    token_label: String,
    root_key_label: String,
    user_pin: SecretString,
    max_sessions: usize,
    module: ModuleRef,
}

impl fmt::Debug for Hsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hsm")
            .field("token_label", &self.token_label)
            .field("slot", &self.slot)
            .field("root_key_label", &self.root_key_label)
            .field("max_sessions", &self.max_sessions)
            .finish_non_exhaustive()
    }
}

impl Hsm {
    /// Loads the module, finds the token, logs the user in, checks the token's mechanisms
    /// and finds (or, on first start, generates) the root key.
    ///
    /// PKCS#11 logins are per process: while another `Hsm` in this process holds the login
    /// to the same token, C_Login answers "already logged in" without checking the PIN.
    pub fn open(params: &HsmParams) -> Result<Hsm, HsmError> {
        if params.max_sessions == 0 {
            return Err(HsmError::InvalidParams("max_sessions must be at least 1"));
        }
        let module = ModuleRef::acquire(&params.module_path)?;
        let ctx = module.ctx();
        let slot = find_token(ctx, &params.token_label)?;

        let available = ctx
            .get_mechanism_list(slot)
            .map_err(HsmError::pkcs11("listing the token's mechanisms"))?;
        let missing = missing_mechanisms(&available);
        if !missing.is_empty() {
            return Err(HsmError::MissingMechanisms {
                token: params.token_label.clone(),
                missing,
            });
        }
        let mechanisms = available.iter().map(ToString::to_string).collect();

        let keeper = ctx
            .open_rw_session(slot)
            .map_err(HsmError::pkcs11("opening the keeper session"))?;
        login(&keeper, &params.user_pin).map_err(|source| HsmError::LoginFailed {
            token: params.token_label.clone(),
            source,
        })?;
        let root_key = load_or_create_root_key(&keeper, &params.root_key_label)?;
        tracing::info!(
            token = %params.token_label,
            slot = %slot,
            root_key = %params.root_key_label,
            max_sessions = params.max_sessions,
            "hsm token opened"
        );

        Ok(Hsm {
            pool: SessionPool::new(ctx.clone(), slot, params.max_sessions),
            keeper: Mutex::new(keeper),
            epoch: AtomicU64::new(0),
            graveyard: Arc::new(Mutex::new(Vec::new())),
            id: NEXT_HSM_ID.fetch_add(1, Ordering::Relaxed),
            root_key: RwLock::new(root_key),
            mechanisms,
            slot,
            token_label: params.token_label.clone(),
            root_key_label: params.root_key_label.clone(),
            user_pin: params.user_pin.clone(),
            max_sessions: params.max_sessions,
            module,
        })
    }

    /// Names of every mechanism the token offers (that cryptoki knows), for a startup log.
    pub fn mechanism_names(&self) -> Vec<String> {
        self.mechanisms.clone()
    }

    /// Runs `op` on a pooled session with the root key's handle. After a lost login or a
    /// dead session it logs in again through a fresh session and retries once.
    pub(crate) fn run<T>(
        &self,
        mut op: impl FnMut(&Session, ObjectHandle) -> Result<T, CkError>,
    ) -> Result<T, BackendError> {
        self.reap();
        match self.attempt(&mut op) {
            Err(e) if needs_relogin(&e) => {
                tracing::warn!(token = %self.token_label, error = %e, "hsm login or session lost; logging in again");
                self.relogin()?;
                self.attempt(&mut op).map_err(to_backend_error)
            }
            result => result.map_err(to_backend_error),
        }
    }

    /// What the session pool has done: sessions open, the cap, waits for a free one.
    pub fn session_stats(&self) -> crate::SessionStats {
        self.pool.stats()
    }

    /// Like [`Hsm::run`], for an operation with a loaded key: makes sure the key's objects
    /// exist in this epoch (unwrapping them again after a lost login) and passes them on.
    pub(crate) fn run_with_key<T>(
        &self,
        key: &HsmKey,
        mut op: impl FnMut(&Session, Objects) -> Result<T, CkError>,
    ) -> Result<T, BackendError> {
        self.reap();
        let mut attempt = || -> Result<T, CkError> {
            let objects = key.objects(self)?;
            self.pool.with_session(|session| op(session, objects))
        };
        match attempt() {
            Err(e) if needs_relogin(&e) => {
                tracing::warn!(token = %self.token_label, error = %e, "hsm login or session lost; logging in again");
                self.relogin()?;
                attempt().map_err(to_backend_error)
            }
            result => result.map_err(to_backend_error),
        }
    }

    /// Runs `op` on the keeper session, which owns loaded keys' objects, with the root key
    /// and the keeper's epoch. Holds the keeper lock for the call: only loads and destroys of
    /// key objects come here.
    pub(crate) fn with_keeper<T>(
        &self,
        op: impl FnOnce(&Session, ObjectHandle, u64) -> Result<T, CkError>,
    ) -> Result<T, CkError> {
        let keeper = self.keeper.lock().unwrap_or_else(PoisonError::into_inner);
        let epoch = self.epoch.load(Ordering::SeqCst);
        let root_key = *self.root_key.read().unwrap_or_else(PoisonError::into_inner);
        op(&keeper, root_key, epoch)
    }

    /// The current keeper epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn graveyard(&self) -> Graveyard {
        Arc::clone(&self.graveyard)
    }

    /// Destroys the objects of dropped keys. Objects of an older epoch died with their
    /// keeper session and are forgotten; their handle numbers may name new objects now.
    pub(crate) fn reap(&self) {
        let buried = {
            let mut graveyard = self
                .graveyard
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if graveyard.is_empty() {
                return;
            }
            std::mem::take(&mut *graveyard)
        };
        let result = self.with_keeper(|session, _, epoch| {
            for buried in buried
                .iter()
                .filter(|b| b.hsm == self.id && b.epoch == epoch)
            {
                if let Err(e) = session.destroy_object(buried.object) {
                    tracing::debug!(error = %e, "destroying an unloaded key object failed");
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            tracing::debug!(error = %e, "reaping unloaded key objects failed");
        }
    }

    fn attempt<T>(
        &self,
        op: &mut impl FnMut(&Session, ObjectHandle) -> Result<T, CkError>,
    ) -> Result<T, CkError> {
        let root_key = *self.root_key.read().unwrap_or_else(PoisonError::into_inner);
        self.pool.with_session(|session| op(session, root_key))
    }

    /// Logs in through a fresh session that becomes the new keeper, drops the idle sessions
    /// and looks the root key up again (a logout invalidates handles of private objects).
    fn relogin(&self) -> Result<(), BackendError> {
        let fresh = self
            .module
            .ctx()
            .open_rw_session(self.slot)
            .map_err(to_backend_error)?;
        login(&fresh, &self.user_pin).map_err(to_backend_error)?;
        let handle = match find_root_key(&fresh, &self.root_key_label).map_err(to_backend_error)? {
            RootKeyLookup::Found(handle) => handle,
            RootKeyLookup::Absent => {
                return Err(BackendError::Internal(
                    "root key no longer on the token".to_owned(),
                ));
            }
            RootKeyLookup::Unsafe(reason) => {
                return Err(BackendError::Internal(format!(
                    "root key unusable: {reason}"
                )));
            }
        };
        let old = {
            let mut keeper = self.keeper.lock().unwrap_or_else(PoisonError::into_inner);
            // Loaded keys' objects die with the old keeper: a new epoch makes keys reload.
            self.epoch.fetch_add(1, Ordering::SeqCst);
            std::mem::replace(&mut *keeper, fresh)
        };
        // C_CloseSession of the old keeper, outside the lock; the new keeper holds the login.
        drop(old);
        *self
            .root_key
            .write()
            .unwrap_or_else(PoisonError::into_inner) = handle;
        self.pool.drain_idle();
        Ok(())
    }
}

impl Backend for Hsm {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        // Every mechanism these need was checked at open (REQUIRED_MECHANISMS).
        Capabilities {
            key_specs: KeySpec::ALL.to_vec(),
            sign_algorithms: SIGN_ROUTES.iter().map(|&(a, _)| a).collect(),
            encryption_algorithms: OAEP_ROUTES.iter().map(|&(a, _)| a).collect(),
            aead: true,
            random: true,
            residence: KeyResidence::Device,
        }
    }

    fn generate_sealed(&self, spec: KeySpec, context: &[u8]) -> Result<SealedKey, BackendError> {
        self.generate_hsm_key(spec, context)
    }

    fn import_sealed(
        &self,
        spec: KeySpec,
        context: &[u8],
        material: &SecretBytes,
    ) -> Result<SealedKey, BackendError> {
        self.import_hsm_key(spec, context, material)
    }

    fn load_sealed(
        &self,
        spec: KeySpec,
        context: &[u8],
        sealed: &[u8],
    ) -> Result<KeyHandle, BackendError> {
        self.load_hsm_key(spec, context, sealed)
    }

    fn unload(&self, key: KeyHandle) -> Result<(), BackendError> {
        let last = key.clones() == 1;
        drop(key);
        if last {
            self.reap();
        }
        Ok(())
    }

    fn public_key(&self, key: &KeyHandle) -> Result<Vec<u8>, BackendError> {
        let key = self.hsm_key(key)?;
        if key.spec().is_symmetric() {
            return Err(BackendError::InvalidInput("aes keys have no public key"));
        }
        Ok(key.spki().to_vec())
    }

    fn aead_encrypt(
        &self,
        key: &KeyHandle,
        iv: &[u8; GCM_IV_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        crate::encrypt::seal(self, self.hsm_key(key)?, iv, aad, plaintext)
    }

    fn aead_decrypt(
        &self,
        key: &KeyHandle,
        iv: &[u8; GCM_IV_LEN],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> Result<SecretBytes, BackendError> {
        crate::encrypt::open(self, self.hsm_key(key)?, iv, aad, ciphertext_and_tag)
    }

    fn sign(
        &self,
        key: &KeyHandle,
        algorithm: Algorithm,
        digest: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        crate::sign::sign(self, self.hsm_key(key)?, algorithm, digest)
    }

    fn verify(
        &self,
        key: PublicKeyRef<'_>,
        algorithm: Algorithm,
        digest: &[u8],
        signature: &[u8],
    ) -> Result<bool, BackendError> {
        crate::sign::verify(self, key, algorithm, digest, signature)
    }

    fn asym_encrypt(
        &self,
        key: PublicKeyRef<'_>,
        algorithm: Algorithm,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        crate::asym::encrypt(self, key, algorithm, plaintext)
    }

    fn asym_decrypt(
        &self,
        key: &KeyHandle,
        algorithm: Algorithm,
        ciphertext: &[u8],
    ) -> Result<SecretBytes, BackendError> {
        crate::asym::decrypt(self, self.hsm_key(key)?, algorithm, ciphertext)
    }

    fn fill_random(&self, out: &mut [u8]) -> Result<(), BackendError> {
        if out.is_empty() {
            return Ok(());
        }
        self.run(|session, _| session.generate_random_slice(&mut out[..]))
    }
}

/// C_Login as the user; a login already held by this application is fine.
fn login(session: &Session, pin: &SecretString) -> Result<(), CkError> {
    let mut attempt = 1;
    loop {
        match session.login(UserType::User, Some(pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => return Ok(()),
            // SoftHSM2 keeps a token's state in files that a login also rewrites: a process
            // that logs in while another (a replica starting beside it) rewrites them can read
            // them half-written and answer CKR_GENERAL_ERROR. A moment later the files are
            // whole again; a wrong PIN is never retried.
            Err(e @ CkError::Pkcs11(RvError::GeneralError, _)) if attempt < LOGIN_ATTEMPTS => {
                tracing::warn!(attempt, error = %e, "hsm login failed; trying again");
                std::thread::sleep(std::time::Duration::from_millis(25 << attempt));
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Logins tried before a general error from the token is final (about 0.75 s in all).
const LOGIN_ATTEMPTS: u32 = 5;

/// The slot whose initialised token carries `label`.
fn find_token(ctx: &Pkcs11, label: &str) -> Result<Slot, HsmError> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(HsmError::pkcs11("listing slots"))?;
    let mut found = Vec::new();
    let mut matching = Vec::new();
    for slot in slots {
        let info = ctx
            .get_token_info(slot)
            .map_err(HsmError::pkcs11("reading token info"))?;
        if !info.token_initialized() {
            continue;
        }
        if info.label() == label {
            matching.push(slot);
        }
        found.push(info.label().to_owned());
    }
    match matching.as_slice() {
        [] => Err(HsmError::TokenNotFound {
            label: label.to_owned(),
            found,
        }),
        [slot, rest @ ..] => {
            if !rest.is_empty() {
                tracing::warn!(token = %label, slots = matching.len(), "several tokens carry this label; using the first");
            }
            Ok(*slot)
        }
    }
}

enum RootKeyLookup {
    Found(ObjectHandle),
    Absent,
    Unsafe(String),
}

/// Finds the single AES token key labelled `label` and checks that it is safe to use.
fn find_root_key(session: &Session, label: &str) -> Result<RootKeyLookup, CkError> {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    let handles = session.find_objects(&template)?;
    let handle = match handles.as_slice() {
        [] => return Ok(RootKeyLookup::Absent),
        [handle] => *handle,
        many => {
            return Ok(RootKeyLookup::Unsafe(format!(
                "{} keys carry this label",
                many.len()
            )));
        }
    };
    Ok(match root_key_problem(session, handle)? {
        None => RootKeyLookup::Found(handle),
        Some(reason) => RootKeyLookup::Unsafe(reason.to_owned()),
    })
}

/// What makes the key at `handle` unfit to be the root key, if anything.
fn root_key_problem(
    session: &Session,
    handle: ObjectHandle,
) -> Result<Option<&'static str>, CkError> {
    let attributes = session.get_attributes(
        handle,
        &[
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::Private,
            AttributeType::ValueLen,
            AttributeType::Encrypt,
            AttributeType::Decrypt,
            AttributeType::Wrap,
            AttributeType::Unwrap,
        ],
    )?;
    let (mut sensitive, mut extractable, mut private, mut len, mut encrypt, mut decrypt) =
        (false, true, false, 0, false, false);
    let (mut wrap, mut unwrap) = (false, false);
    for attribute in attributes {
        match attribute {
            Attribute::Sensitive(v) => sensitive = v,
            Attribute::Extractable(v) => extractable = v,
            Attribute::Private(v) => private = v,
            Attribute::ValueLen(v) => len = usize::from(v),
            Attribute::Encrypt(v) => encrypt = v,
            Attribute::Decrypt(v) => decrypt = v,
            Attribute::Wrap(v) => wrap = v,
            Attribute::Unwrap(v) => unwrap = v,
            _ => {}
        }
    }
    Ok(if !sensitive {
        Some("not CKA_SENSITIVE")
    } else if extractable {
        Some("CKA_EXTRACTABLE")
    } else if !private {
        Some("not CKA_PRIVATE")
    } else if len != ROOT_KEY_LEN {
        Some("not an AES-256 key")
    } else if !(encrypt && decrypt) {
        Some("not allowed to encrypt and decrypt")
    } else if !(wrap && unwrap) {
        // HSM-resident keys are wrapped under it (CKM_AES_KEY_WRAP_PAD).
        Some("not allowed to wrap and unwrap")
    } else {
        None
    })
}

/// Finds the root key, or generates it inside the token on first start.
fn load_or_create_root_key(session: &Session, label: &str) -> Result<ObjectHandle, HsmError> {
    let unsafe_key = |reason: String| HsmError::RootKeyUnsafe {
        label: label.to_owned(),
        reason,
    };
    match find_root_key(session, label).map_err(HsmError::pkcs11("finding the root key"))? {
        RootKeyLookup::Found(handle) => return Ok(handle),
        RootKeyLookup::Unsafe(reason) => return Err(unsafe_key(reason)),
        RootKeyLookup::Absent => {}
    }
    let value_len =
        Ulong::try_from(ROOT_KEY_LEN).map_err(HsmError::pkcs11("generating the root key"))?;
    let template = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::ValueLen(value_len),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(HsmError::pkcs11("generating the root key"))?;
    // Look it up again rather than trusting the new handle: this also catches a second
    // process that generated one at the same moment.
    match find_root_key(session, label).map_err(HsmError::pkcs11("finding the root key"))? {
        RootKeyLookup::Found(handle) => {
            tracing::info!(root_key = %label, "generated a new root key in the hsm");
            Ok(handle)
        }
        RootKeyLookup::Unsafe(reason) => Err(unsafe_key(reason)),
        RootKeyLookup::Absent => Err(unsafe_key("generated but not found".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_sessions_is_refused_before_loading_anything() {
        let params = HsmParams {
            module_path: "/nonexistent/module.so".into(),
            token_label: "kms".to_owned(),
            user_pin: SecretString::from("1234"),
            root_key_label: "kms-root".to_owned(),
            max_sessions: 0,
        };
        assert!(matches!(
            Hsm::open(&params),
            Err(HsmError::InvalidParams(_))
        ));
    }
}
