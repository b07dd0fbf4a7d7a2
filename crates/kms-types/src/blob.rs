//! The ciphertext blob, format version 1:
//! `magic "KMS1" | key-version id (16) | IV (12) | ciphertext | tag (16)`.
//!
//! The header (magic, version id, IV) is authenticated as part of the AAD, so a blob cannot be
//! re-pointed at another key version. Parsing never panics; anything malformed is
//! `InvalidCiphertext`.

use crate::error::DomainError;
use crate::ids::KeyVersionId;

/// The format-1 magic.
pub const MAGIC_V1: &[u8; 4] = b"KMS1";
/// IV length.
pub const IV_LEN: usize = 12;
/// GCM tag length.
pub const TAG_LEN: usize = 16;
/// Header length: magic, version id, IV.
pub const HEADER_LEN: usize = 4 + 16 + IV_LEN;

/// A parsed ciphertext blob, borrowing its sealed part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiphertextBlob<'a> {
    /// The key version whose material sealed it.
    pub key_version_id: KeyVersionId,
    /// The GCM nonce.
    pub iv: [u8; IV_LEN],
    /// Ciphertext followed by the tag.
    pub sealed: &'a [u8],
}

/// The header bytes for a version and IV; also the first part of the AAD.
pub fn header(key_version_id: &KeyVersionId, iv: &[u8; IV_LEN]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC_V1);
    h[4..20].copy_from_slice(key_version_id.as_bytes());
    h[20..].copy_from_slice(iv);
    h
}

/// The AAD for sealing: header followed by the canonical encryption context.
pub fn aad(header: &[u8; HEADER_LEN], canonical_context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(HEADER_LEN + canonical_context.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(canonical_context);
    aad
}

/// Joins a header and sealed bytes into a blob.
pub fn assemble(header: &[u8; HEADER_LEN], sealed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
    out.extend_from_slice(header);
    out.extend_from_slice(sealed);
    out
}

impl<'a> CiphertextBlob<'a> {
    /// Parses a blob. Wrong magic, or too short to hold at least one byte of ciphertext and
    /// the tag, is `InvalidCiphertext`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DomainError> {
        if bytes.len() < HEADER_LEN + 1 + TAG_LEN || !bytes.starts_with(MAGIC_V1) {
            return Err(DomainError::InvalidCiphertext);
        }
        let mut version = [0u8; 16];
        version.copy_from_slice(&bytes[4..20]);
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&bytes[20..HEADER_LEN]);
        Ok(Self {
            key_version_id: KeyVersionId::from_bytes(version),
            iv,
            sealed: &bytes[HEADER_LEN..],
        })
    }

    /// The header of this blob.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        header(&self.key_version_id, &self.iv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (KeyVersionId, [u8; IV_LEN], Vec<u8>) {
        let v = KeyVersionId::generate();
        let iv = [9u8; IV_LEN];
        let blob = assemble(&header(&v, &iv), &[1u8; 1 + TAG_LEN]);
        (v, iv, blob)
    }

    #[test]
    fn round_trip() {
        let (v, iv, blob) = sample();
        let parsed = CiphertextBlob::parse(&blob).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.key_version_id, v);
        assert_eq!(parsed.iv, iv);
        assert_eq!(parsed.sealed, &[1u8; 1 + TAG_LEN][..]);
        assert_eq!(&parsed.header()[..], &blob[..HEADER_LEN]);
    }

    #[test]
    fn every_truncation_is_refused() {
        let (_, _, blob) = sample();
        for len in 0..blob.len() {
            assert_eq!(
                CiphertextBlob::parse(&blob[..len]),
                Err(DomainError::InvalidCiphertext),
                "length {len}"
            );
        }
    }

    #[test]
    fn other_magic_is_refused() {
        let (_, _, blob) = sample();
        for i in 0..4 {
            let mut b = blob.clone();
            b[i] ^= 0x20;
            assert_eq!(
                CiphertextBlob::parse(&b),
                Err(DomainError::InvalidCiphertext)
            );
        }
        let mut v2 = blob.clone();
        v2[3] = b'2';
        assert_eq!(
            CiphertextBlob::parse(&v2),
            Err(DomainError::InvalidCiphertext)
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u32 = 0x1234_5678;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x & 0xff) as u8
                })
                .collect();
            let _ = CiphertextBlob::parse(&bytes);
            let mut with_magic = MAGIC_V1.to_vec();
            with_magic.extend_from_slice(&bytes);
            let parsed = CiphertextBlob::parse(&with_magic);
            assert_eq!(parsed.is_ok(), with_magic.len() > HEADER_LEN + TAG_LEN);
        }
    }
}
