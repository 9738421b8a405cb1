//! Time as data. The core never reads a clock: every input carries a [`Now`].

use core::time::Duration;
use serde::{Deserialize, Serialize};

/// A point on the caller's monotone clock, in nanoseconds from an arbitrary origin.
///
/// Only differences between two `Instant`s of the same peer mean anything; the simulator
/// builds them from plain numbers and may skew them per device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Instant(pub u64);

impl Instant {
    /// Nanoseconds since the clock's origin.
    pub fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at the far future instead of wrapping.
    pub fn saturating_add(self, d: Duration) -> Instant {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(ns))
    }

    /// Time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// The time handed to the core with every input.
///
/// `mono` drives timers; `unix_ms` is wall-clock time used only for human-facing expiry
/// (invitation codes). A peer tolerates `unix_ms` jumping around; `mono` must never go back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Now {
    /// Monotone time.
    pub mono: Instant,
    /// Milliseconds since the Unix epoch, as the device believes it.
    pub unix_ms: u64,
}

impl Now {
    /// Builds a `Now` from raw numbers (handy for tests and the simulator).
    pub fn from_parts(mono_ns: u64, unix_ms: u64) -> Now {
        Now {
            mono: Instant(mono_ns),
            unix_ms,
        }
    }
}
