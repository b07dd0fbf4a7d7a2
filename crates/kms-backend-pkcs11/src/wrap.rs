//! Sealing key material under the root key with AES-GCM inside the HSM, and the sealed
//! format: `format byte | IV (12) | ciphertext | tag (16)`. Format `0x01` is a secret sealed
//! for the host ([`RootWrapper`]); `0x02` is an HSM-resident key (`keys.rs`).

use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::types::Ulong;
use kms_backend::{BackendError, GCM_IV_LEN, GCM_TAG_LEN, RootWrapper, SecretBytes};

use crate::Hsm;

/// The format version byte that starts every sealed secret.
const FORMAT_V1: u8 = 0x01;
/// Associated data before the caller's context; names the scheme so that nothing else sealed
/// under the root key can pass for a wrapped secret.
const AAD_PREFIX: &[u8] = b"kms-root-wrap-v1\0";
const HEADER_LEN: usize = 1 + GCM_IV_LEN;
/// The shortest valid blob: header and tag around an empty ciphertext.
const MIN_LEN: usize = HEADER_LEN + GCM_TAG_LEN;

fn aad(context: &[u8]) -> Vec<u8> {
    [AAD_PREFIX, context].concat()
}

/// Splits a sealed secret into its IV and `ciphertext | tag`.
#[cfg(test)]
fn parse_wrapped(wrapped: &[u8]) -> Result<([u8; GCM_IV_LEN], &[u8]), BackendError> {
    parse_sealed(FORMAT_V1, wrapped)
}

/// Splits a blob of format `format` into its IV and `ciphertext | tag`.
fn parse_sealed(format: u8, wrapped: &[u8]) -> Result<([u8; GCM_IV_LEN], &[u8]), BackendError> {
    let Some((&version, rest)) = wrapped.split_first() else {
        return Err(BackendError::InvalidInput("wrapped secret is empty"));
    };
    if version != format {
        return Err(BackendError::InvalidInput(
            "unknown wrapped secret format version",
        ));
    }
    if wrapped.len() < MIN_LEN {
        return Err(BackendError::InvalidInput("wrapped secret too short"));
    }
    let (iv, sealed) = rest.split_at(GCM_IV_LEN);
    let iv = <[u8; GCM_IV_LEN]>::try_from(iv)
        .map_err(|_| BackendError::InvalidInput("wrapped secret too short"))?;
    Ok((iv, sealed))
}

impl Hsm {
    /// AES-GCM under the root key: `format | IV | ciphertext | tag`, IV from the HSM.
    pub(crate) fn seal_under_root(
        &self,
        format: u8,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        let (iv, sealed) = self.run(|session, root_key| {
            let mut iv = [0u8; GCM_IV_LEN];
            session.generate_random_slice(&mut iv)?;
            let sealed = {
                let params = GcmParams::new(&mut iv, aad, Ulong::try_from(GCM_TAG_LEN * 8)?)?;
                session.encrypt(&Mechanism::AesGcm(params), root_key, plaintext)?
            };
            Ok((iv, sealed))
        })?;
        if sealed.len() != plaintext.len() + GCM_TAG_LEN {
            return Err(BackendError::Internal(format!(
                "aes-gcm output of {} bytes for {} bytes of input",
                sealed.len(),
                plaintext.len()
            )));
        }
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.push(format);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`Hsm::seal_under_root`] sealed with the same `format` and `aad`; the
    /// plaintext goes straight into zeroizing memory.
    pub(crate) fn open_under_root(
        &self,
        format: u8,
        aad: &[u8],
        wrapped: &[u8],
    ) -> Result<SecretBytes, BackendError> {
        let (iv, sealed) = parse_sealed(format, wrapped)?;
        self.run(|session, root_key| {
            let mut iv = iv;
            let params = GcmParams::new(&mut iv, aad, Ulong::try_from(GCM_TAG_LEN * 8)?)?;
            session
                .decrypt(&Mechanism::AesGcm(params), root_key, sealed)
                .map(SecretBytes::new)
        })
    }
}

impl RootWrapper for Hsm {
    fn wrap_secret(&self, context: &[u8], secret: &SecretBytes) -> Result<Vec<u8>, BackendError> {
        self.seal_under_root(FORMAT_V1, &aad(context), secret.expose())
    }

    fn unwrap_secret(&self, context: &[u8], wrapped: &[u8]) -> Result<SecretBytes, BackendError> {
        self.open_under_root(FORMAT_V1, &aad(context), wrapped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(ciphertext_len: usize) -> Vec<u8> {
        let mut b = vec![FORMAT_V1];
        b.extend((0..GCM_IV_LEN + ciphertext_len + GCM_TAG_LEN).map(|i| i as u8));
        b
    }

    #[test]
    fn parses_a_well_formed_blob() {
        let b = blob(32);
        let (iv, sealed) = match parse_wrapped(&b) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(&iv[..], &b[1..HEADER_LEN]);
        assert_eq!(sealed, &b[HEADER_LEN..]);
        assert_eq!(sealed.len(), 32 + GCM_TAG_LEN);
        // An empty secret seals to header and tag only.
        assert!(parse_wrapped(&blob(0)).is_ok());
    }

    #[test]
    fn every_truncation_is_refused() {
        let b = blob(0);
        for len in 0..b.len() {
            assert!(
                matches!(parse_wrapped(&b[..len]), Err(BackendError::InvalidInput(_))),
                "length {len} accepted"
            );
        }
        let b = blob(32);
        for len in 0..MIN_LEN {
            assert!(matches!(
                parse_wrapped(&b[..len]),
                Err(BackendError::InvalidInput(_))
            ));
        }
    }

    #[test]
    fn unknown_versions_are_refused() {
        for version in (0..=u8::MAX).filter(|v| *v != FORMAT_V1) {
            let mut b = blob(16);
            b[0] = version;
            assert!(matches!(
                parse_wrapped(&b),
                Err(BackendError::InvalidInput(_))
            ));
        }
    }

    #[test]
    fn aad_binds_scheme_and_context() {
        assert_eq!(aad(b"ctx"), b"kms-root-wrap-v1\0ctx");
        assert_ne!(aad(b"a"), aad(b"b"));
    }
}
