//! The randomness seam: the login's state, nonce, PKCE verifier and session id come from an [`Rng`], so tests can
//! fix them; [`SystemRng`] is the one place that draws from the operating system's randomness.

use std::sync::atomic::{AtomicU64, Ordering};

use rand::RngCore as _;

/// A source of random bytes.
pub trait Rng: Send + Sync + std::fmt::Debug + 'static {
    /// Fills `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]);
}

/// The thread-local CSPRNG (`rand::rng()`, seeded and periodically reseeded from the operating system): every
/// random value in production.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRng;

impl Rng for SystemRng {
    fn fill(&self, buf: &mut [u8]) {
        rand::rng().fill_bytes(buf);
    }
}

/// A predictable source (tests only, never for secrets): the byte stream `start, start + 1, ...` (wrapping at
/// 256), continued from one call to the next.
#[derive(Debug, Default)]
pub struct SequenceRng {
    /// The first byte of the stream.
    start: u8,
    /// How many bytes have been handed out.
    taken: AtomicU64,
}

impl SequenceRng {
    /// A stream starting at `start`.
    pub fn new(start: u8) -> Self {
        SequenceRng {
            start,
            taken: AtomicU64::new(0),
        }
    }
}

impl Rng for SequenceRng {
    fn fill(&self, buf: &mut [u8]) {
        let first = self.taken.fetch_add(buf.len() as u64, Ordering::SeqCst);
        for (i, b) in buf.iter_mut().enumerate() {
            // Only the low byte of the position matters: the stream repeats every 256 bytes.
            let pos = first.wrapping_add(i as u64) as u8;
            *b = self.start.wrapping_add(pos);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_continues_across_calls_and_wraps() {
        let rng = SequenceRng::new(254);
        let mut a = [0u8; 3];
        let mut b = [0u8; 2];
        rng.fill(&mut a);
        rng.fill(&mut b);
        assert_eq!(a, [254, 255, 0]);
        assert_eq!(b, [1, 2]);
    }

    #[test]
    fn the_system_rng_fills_every_byte() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        SystemRng.fill(&mut a);
        SystemRng.fill(&mut b);
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 32]);
    }
}
