//! The operating system's generator (through `ring`) as a `rand_core` generator, for the
//! RustCrypto crates (`rsa`, `p256`, `k256`).

use ring::rand::{SecureRandom, SystemRandom};
use rsa::rand_core::{TryCryptoRng, TryRng};

/// The system generator failed.
#[derive(Debug, thiserror::Error)]
#[error("system random generator failed")]
pub(crate) struct RngFailed;

/// `ring`'s [`SystemRandom`] seen as a fallible cryptographic `rand_core` generator.
pub(crate) struct SysRng<'a>(pub(crate) &'a SystemRandom);

impl TryRng for SysRng<'_> {
    type Error = RngFailed;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut bytes = [0u8; 4];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut bytes = [0u8; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill(dst).map_err(|_| RngFailed)
    }
}

impl TryCryptoRng for SysRng<'_> {}
