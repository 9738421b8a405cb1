//! The peer's only source of randomness: a ChaCha20 stream seeded by the caller.
//!
//! The crypto crates we use expect three different RNG traits (rand_core 0.6 for frost and
//! biscuit, rand_core 0.10 for hpke, snow's own `Random`). [`PeerRng`] implements the ones in
//! use so that every random choice, down to Noise ephemeral keys, follows from the seed.

use rand_chacha::rand_core::{Rng as _, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Seeded ChaCha20 generator owned by one peer.
#[derive(Clone, Debug)]
pub struct PeerRng(ChaCha20Rng);

impl PeerRng {
    /// A generator whose whole output is determined by `seed`.
    pub fn from_seed(seed: [u8; 32]) -> PeerRng {
        PeerRng(ChaCha20Rng::from_seed(seed))
    }

    /// Splits off an independent sub-stream for one session, labelled so that two
    /// sub-streams drawn at the same point for different purposes never coincide.
    pub fn fork(&mut self, label: &str) -> PeerRng {
        let mut key = [0u8; 32];
        self.fill(&mut key);
        PeerRng::from_seed(blake3::keyed_hash(&key, label.as_bytes()).into())
    }

    /// Fills `dest` with random bytes.
    pub fn fill(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest);
    }

    /// 32 random bytes.
    pub fn bytes32(&mut self) -> [u8; 32] {
        let mut b = [0u8; 32];
        self.fill(&mut b);
        b
    }

    /// A uniformly random `u32`.
    pub fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    /// A uniformly random `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
}

impl rand_core_06::RngCore for PeerRng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core_06::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core_06::CryptoRng for PeerRng {}

impl rand_chacha::rand_core::TryRng for PeerRng {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.0.next_u32())
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.0.next_u64())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill_bytes(dst);
        Ok(())
    }
}

impl rand_chacha::rand_core::TryCryptoRng for PeerRng {}

impl snow::types::Random for PeerRng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_forks_differ() {
        let mut a = PeerRng::from_seed([7; 32]);
        let mut b = PeerRng::from_seed([7; 32]);
        assert_eq!(a.bytes32(), b.bytes32());
        let mut fa = a.fork("x");
        let mut fb = b.fork("y");
        assert_ne!(fa.bytes32(), fb.bytes32());
        let mut c = PeerRng::from_seed([8; 32]);
        assert_ne!(a.bytes32(), c.bytes32());
    }
}
