//! Invitation codes: how a new device learns who to pair with and proves it was invited.
//!
//! A code is `AURA1-` followed by Crockford base32 of
//! `len (1 byte) || postcard(InvitePayload) || checksum (4 bytes)`. The checksum is a
//! keyed BLAKE3 of everything before it; the length byte lets a decoder tell a truncated
//! paste from a mistyped one. Decoding ignores case, spaces, newlines and dashes, and
//! reads `I`/`L` as `1` and `O` as `0`, so a code survives being read aloud or re-typed.

use serde::{Deserialize, Serialize};

use crate::wire::{self, DecodeError};

/// Text every code starts with (the digit is the code format version).
pub const CODE_PREFIX: &str = "AURA1-";
/// Format version inside the payload.
pub const CODE_VERSION: u8 = 1;
/// Longest address hint a code may carry.
pub const MAX_ADDR_HINT: usize = 96;
const CHECKSUM_LEN: usize = 4;
const CHECKSUM_KEY: &[u8; 32] = b"aura invitation code checksum v1";
const CTX_INVITE_ID: &str = "aura 2026-11 invitation id";
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// What a code carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    /// Payload format version ([`CODE_VERSION`]).
    pub version: u8,
    /// The inviter's Noise static public key: the joiner's handshake is addressed to it.
    pub inviter_noise: [u8; 32],
    /// One-time secret; the pairing PSK is derived from it.
    pub secret: [u8; 32],
    /// Wall-clock expiry, milliseconds since the Unix epoch.
    pub expires_unix_ms: u64,
    /// Where to reach the inviter (e.g. `127.0.0.1:4100`); a hint, not an identity.
    pub addr_hint: String,
}

/// Why a code was refused. Each message says what the user can do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    /// Does not start with `AURA1-`.
    #[error("not an Aura invitation code: it must start with {CODE_PREFIX}")]
    BadPrefix,
    /// A character outside the code alphabet.
    #[error("invitation code has an invalid character {ch:?} at position {pos}")]
    BadCharacter {
        /// The offending character.
        ch: char,
        /// Its position in the pasted text.
        pos: usize,
    },
    /// Shorter than its own length field says: the paste was cut off.
    #[error("invitation code is truncated: {missing} bytes are missing; copy the whole code")]
    Truncated {
        /// How many bytes were missing.
        missing: usize,
    },
    /// Checksum mismatch: a typo or corruption.
    #[error("invitation code checksum does not match: the code was mistyped or altered")]
    BadChecksum,
    /// A newer format.
    #[error("invitation code version {0} is not supported by this build")]
    UnsupportedVersion(u8),
    /// Checksum fine but content invalid (e.g. made by a buggy tool).
    #[error("invitation code is malformed")]
    Malformed,
    /// Past its expiry.
    #[error("invitation code expired {ago_s} s ago; ask for a new one")]
    Expired {
        /// Seconds since expiry.
        ago_s: u64,
    },
    /// This device already used this code.
    #[error("this invitation code was already used on this device")]
    AlreadyUsed,
    /// Inviting or joining oneself.
    #[error("this invitation code was created by this same device")]
    OwnCode,
    /// The address hint is too long to put in a code.
    #[error("address hint is longer than {MAX_ADDR_HINT} bytes")]
    AddrTooLong,
}

impl Invitation {
    /// Public identifier of the invitation (never reveals the secret).
    pub fn id(&self) -> [u8; 32] {
        invite_id(&self.secret)
    }

    /// Renders the copy-pasteable code.
    pub fn to_code(&self) -> String {
        let payload = wire::encode(self);
        debug_assert!(payload.len() <= 255, "payload length fits one byte");
        let mut raw = Vec::with_capacity(payload.len() + 1 + CHECKSUM_LEN);
        raw.push(payload.len() as u8);
        raw.extend_from_slice(&payload);
        let sum = checksum(&raw);
        raw.extend_from_slice(&sum);
        let mut s = String::from(CODE_PREFIX);
        s.push_str(&base32_encode(&raw));
        s
    }

    /// Parses a code. Expiry and reuse are checked by the peer, which knows the time.
    pub fn from_code(code: &str) -> Result<Invitation, InviteError> {
        let code = code.trim();
        let body = code
            .get(..CODE_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(CODE_PREFIX))
            .map(|_| &code[CODE_PREFIX.len()..])
            .ok_or(InviteError::BadPrefix)?;
        let raw = base32_decode(body, CODE_PREFIX.len())?;
        let Some((&len, rest)) = raw.split_first() else {
            return Err(InviteError::Truncated { missing: 1 });
        };
        let want = len as usize + CHECKSUM_LEN;
        if rest.len() < want {
            return Err(InviteError::Truncated {
                missing: want - rest.len(),
            });
        }
        if rest.len() > want {
            return Err(InviteError::BadChecksum);
        }
        let (signed, sum) = raw.split_at(1 + len as usize);
        if checksum(signed) != sum {
            return Err(InviteError::BadChecksum);
        }
        let payload = &signed[1..];
        if payload.first().is_some_and(|v| *v != CODE_VERSION) {
            return Err(InviteError::UnsupportedVersion(payload[0]));
        }
        let inv: Invitation = wire::strict_decode(payload, &mut Vec::new()).map_err(|e| match e {
            DecodeError::Truncated => InviteError::Malformed,
            _ => InviteError::Malformed,
        })?;
        if inv.addr_hint.len() > MAX_ADDR_HINT {
            return Err(InviteError::AddrTooLong);
        }
        Ok(inv)
    }

    /// Refuses a code past its expiry.
    pub fn check_expiry(&self, now_unix_ms: u64) -> Result<(), InviteError> {
        if now_unix_ms >= self.expires_unix_ms {
            Err(InviteError::Expired {
                ago_s: (now_unix_ms - self.expires_unix_ms) / 1000,
            })
        } else {
            Ok(())
        }
    }
}

/// `BLAKE3` of the invitation secret under its own context.
pub fn invite_id(secret: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key(CTX_INVITE_ID, secret)
}

fn checksum(b: &[u8]) -> [u8; CHECKSUM_LEN] {
    let h = blake3::keyed_hash(CHECKSUM_KEY, b);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&h.as_bytes()[..CHECKSUM_LEN]);
    out
}

fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in data {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn base32_decode(s: &str, offset: usize) -> Result<Vec<u8>, InviteError> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for (i, ch) in s.chars().enumerate() {
        let v = match ch.to_ascii_uppercase() {
            '-' | ' ' | '\n' | '\r' | '\t' => continue,
            'O' => 0,
            'I' | 'L' => 1,
            c => match ALPHABET.iter().position(|a| *a as char == c) {
                Some(p) => p as u32,
                None => return Err(InviteError::BadCharacter { ch, pos: offset + i }),
            },
        };
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Invitation {
        Invitation {
            version: CODE_VERSION,
            inviter_noise: [9; 32],
            secret: [5; 32],
            expires_unix_ms: 1_800_000_000_000,
            addr_hint: "127.0.0.1:4100".into(),
        }
    }

    #[test]
    fn roundtrip_and_forgiving_input() {
        let inv = sample();
        let code = inv.to_code();
        assert!(code.starts_with(CODE_PREFIX));
        assert_eq!(Invitation::from_code(&code), Ok(inv.clone()));
        let messy = format!("  {}\n", code.to_lowercase().replace('0', "o"));
        assert_eq!(Invitation::from_code(&messy), Ok(inv));
    }

    #[test]
    fn each_bad_input_has_its_error() {
        let code = sample().to_code();
        assert_eq!(Invitation::from_code("hello"), Err(InviteError::BadPrefix));
        assert_eq!(Invitation::from_code(""), Err(InviteError::BadPrefix));
        assert!(matches!(
            Invitation::from_code("AURA1-AB#C"),
            Err(InviteError::BadCharacter { ch: '#', pos: 8 })
        ));
        // truncated by the last 10 characters
        assert!(matches!(
            Invitation::from_code(&code[..code.len() - 10]),
            Err(InviteError::Truncated { .. })
        ));
        assert!(matches!(
            Invitation::from_code(CODE_PREFIX),
            Err(InviteError::Truncated { .. })
        ));
        // a single changed character
        let pos = CODE_PREFIX.len() + 20;
        let mut b = code.clone().into_bytes();
        b[pos] = if b[pos] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            Invitation::from_code(&String::from_utf8(b).unwrap()),
            Err(InviteError::BadChecksum)
        );
        // extra characters
        assert_eq!(
            Invitation::from_code(&format!("{code}ABCDEFGH")),
            Err(InviteError::BadChecksum)
        );
        // future version with a valid checksum
        let mut inv = sample();
        inv.version = 2;
        assert_eq!(
            Invitation::from_code(&inv.to_code()),
            Err(InviteError::UnsupportedVersion(2))
        );
        // too long an address hint
        let mut inv = sample();
        inv.addr_hint = "x".repeat(MAX_ADDR_HINT + 1);
        assert_eq!(Invitation::from_code(&inv.to_code()), Err(InviteError::AddrTooLong));
    }

    #[test]
    fn expiry() {
        let inv = sample();
        assert_eq!(inv.check_expiry(inv.expires_unix_ms - 1), Ok(()));
        assert_eq!(
            inv.check_expiry(inv.expires_unix_ms + 5_000),
            Err(InviteError::Expired { ago_s: 5 })
        );
    }

    #[test]
    fn id_hides_secret() {
        let inv = sample();
        assert_ne!(inv.id(), inv.secret);
        assert!(!inv.to_code().is_empty());
    }
}
