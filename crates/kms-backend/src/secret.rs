//! Secret byte strings that zeroize on drop and never print.

use std::fmt;

use zeroize::Zeroizing;

/// Key material or data-key plaintext. Zeroized on drop; `Debug` prints `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `bytes`; the buffer is zeroized when this value drops.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Copies `bytes` into a new secret.
    pub fn copy_from(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }

    /// The secret bytes. Keep the borrow short and never log it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Mutable access, for a backend filling or decrypting in place.
    pub fn expose_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }

    /// Shortens the secret to `len` bytes; the cut bytes are zeroized.
    pub fn truncate(&mut self, len: usize) {
        if len < self.0.len() {
            use zeroize::Zeroize;
            self.0[len..].zeroize();
            self.0.truncate(len);
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_bytes() {
        let s = SecretBytes::copy_from(b"top secret");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(s.expose(), b"top secret");
    }
}
