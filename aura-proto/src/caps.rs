//! Capabilities: Biscuit tokens rooted at an authority.
//!
//! Biscuit signs with Ed25519, which a FROST group cannot produce, so the token root is an
//! Ed25519 key derived from the authority secret (which only member devices hold, sealed to
//! each). The root's public key is part of the genesis, which the group key signs: any
//! verifier that trusts the authority trusts tokens under that root, offline.
//!
//! Attenuation appends blocks; rights are read only from the authority block, so an
//! appended block can narrow (checks) but never widen what a token grants. Evaluation is
//! bounded by fact and iteration limits; the wall-clock limit is set out of reach so the
//! result never depends on machine speed (see `NOTES-deps.md`).

use std::collections::BTreeSet;
use std::time::Duration;

use biscuit_auth::builder::BlockBuilder;
use biscuit_auth::{
    Algorithm, AuthorizerBuilder, AuthorizerLimits, Biscuit, BiscuitBuilder, KeyPair, PrivateKey, PublicKey,
};
use serde::{Deserialize, Serialize};

use crate::journal::AuthorityId;
use crate::keys::{hex, DeviceId};
use crate::rng::PeerRng;

const CTX_ROOT: &str = "aura 2026-11 biscuit root key";
/// Largest token accepted.
pub const MAX_TOKEN: usize = 16 * 1024;

/// Who a capability is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Subject {
    /// A device.
    Device(DeviceId),
    /// Another authority.
    Authority(AuthorityId),
}

impl Subject {
    fn datalog(&self) -> (&'static str, String) {
        match self {
            Subject::Device(d) => ("device", d.to_hex()),
            Subject::Authority(a) => ("authority", a.to_hex()),
        }
    }
}

/// What a verified token grants, as later guard-chain stages read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapSnapshot {
    /// Issuing authority.
    pub issuer: AuthorityId,
    /// Holder.
    pub subject: Subject,
    /// Rights that pass every attenuation check.
    pub rights: BTreeSet<String>,
    /// Flow budget: the smallest of the issuer's and every attenuation's limit.
    pub budget: Option<u64>,
}

/// Why a token was refused or could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CapError {
    /// Signature chain broken, bytes malformed, or wrong root.
    #[error("capability token is invalid or not rooted at this authority")]
    Invalid,
    /// Larger than the limit.
    #[error("capability token too large")]
    TooLarge,
    /// Lacks the issuer/subject facts Aura tokens carry.
    #[error("capability token is not an Aura capability")]
    NotAura,
    /// A right name outside `[a-z0-9_:-]{1,32}`.
    #[error("invalid right name {0:?}")]
    BadRight(String),
    /// Evaluation exceeded its fact or iteration bound.
    #[error("capability evaluation exceeded its limits")]
    Limits,
}

fn limits() -> AuthorizerLimits {
    // Bounded by work, never by time: the time bound is unreachable on purpose.
    AuthorizerLimits {
        max_facts: 1000,
        max_iterations: 100,
        max_time: Duration::from_secs(24 * 3600),
    }
}

fn check_right(r: &str) -> Result<(), CapError> {
    let ok = !r.is_empty()
        && r.len() <= 32
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_:-".contains(&b));
    ok.then_some(()).ok_or_else(|| CapError::BadRight(r.to_owned()))
}

/// The Ed25519 root key of an authority, derived from its secret.
pub fn root_keypair(authority_secret: &[u8; 32]) -> KeyPair {
    let sk = blake3::derive_key(CTX_ROOT, authority_secret);
    let pk = PrivateKey::from_bytes(&sk, Algorithm::Ed25519).expect("32 bytes make an Ed25519 key");
    KeyPair::from(&pk)
}

/// The root public key (as stored in the genesis).
pub fn root_public(authority_secret: &[u8; 32]) -> [u8; 32] {
    root_keypair(authority_secret)
        .public()
        .to_bytes()
        .try_into()
        .expect("Ed25519 public keys are 32 bytes")
}

fn public(root: &[u8; 32]) -> Result<PublicKey, CapError> {
    PublicKey::from_bytes(root, Algorithm::Ed25519).map_err(|_| CapError::Invalid)
}

/// Mints a token for `subject` with `rights` (and an optional flow budget).
pub fn issue(
    root: &KeyPair,
    issuer: &AuthorityId,
    subject: &Subject,
    rights: &[String],
    budget: Option<u64>,
    rng: &mut PeerRng,
) -> Result<Vec<u8>, CapError> {
    let (kind, id) = subject.datalog();
    let mut code = format!("issuer(\"{}\");\nsubject(\"{kind}\", \"{id}\");\n", issuer.to_hex());
    for r in rights {
        check_right(r)?;
        code.push_str(&format!("right(\"{r}\");\n"));
    }
    if let Some(b) = budget {
        code.push_str(&format!("budget({});\n", b.min(i64::MAX as u64)));
    }
    let token = BiscuitBuilder::new()
        .code(&code)
        .map_err(|_| CapError::NotAura)?
        .build_with_rng(root, biscuit_auth::datalog::SymbolTable::default(), rng)
        .map_err(|_| CapError::Invalid)?;
    token.to_vec().map_err(|_| CapError::Invalid)
}

/// Appends a block that keeps only `keep` rights and caps the budget at `max_budget`.
pub fn attenuate(
    token: &[u8],
    root: &[u8; 32],
    keep: &[String],
    max_budget: Option<u64>,
    rng: &mut PeerRng,
) -> Result<Vec<u8>, CapError> {
    let t = parse(token, root)?;
    let mut code = String::new();
    for r in keep {
        check_right(r)?;
    }
    let set = keep.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(", ");
    code.push_str(&format!("check if operation($op), [{set}].contains($op);\n"));
    if let Some(b) = max_budget {
        code.push_str(&format!("max_budget({});\n", b.min(i64::MAX as u64)));
    }
    let block = BlockBuilder::new().code(&code).map_err(|_| CapError::NotAura)?;
    let kp = KeyPair::new_with_rng(Algorithm::Ed25519, rng);
    t.append_with_keypair(&kp, block)
        .and_then(|t| t.to_vec())
        .map_err(|_| CapError::Invalid)
}

fn parse(token: &[u8], root: &[u8; 32]) -> Result<Biscuit, CapError> {
    if token.len() > MAX_TOKEN {
        return Err(CapError::TooLarge);
    }
    Biscuit::from(token, public(root)?).map_err(|_| CapError::Invalid)
}

/// Verifies a token offline against an authority root and evaluates what it grants.
pub fn verify(token: &[u8], root: &[u8; 32]) -> Result<CapSnapshot, CapError> {
    let t = parse(token, root)?;
    let mut base = AuthorizerBuilder::new()
        .set_limits(limits())
        .build(&t)
        .map_err(|_| CapError::Limits)?;
    // Facts of the authority block only (the default scope): appended blocks cannot add rights.
    let issuer: Vec<(String,)> = base.query("data($i) <- issuer($i)").map_err(|_| CapError::NotAura)?;
    let subject: Vec<(String, String)> = base
        .query("data($k, $s) <- subject($k, $s)")
        .map_err(|_| CapError::NotAura)?;
    let rights: Vec<(String,)> = base.query("data($r) <- right($r)").map_err(|_| CapError::NotAura)?;
    let budget: Vec<(i64,)> = base.query("data($b) <- budget($b)").map_err(|_| CapError::NotAura)?;
    // Budget limits from any block can only lower the budget.
    let caps: Vec<(i64,)> = base
        .query_all("data($b) <- max_budget($b)")
        .map_err(|_| CapError::NotAura)?;
    let ([(issuer,)], [(kind, sid)]) = (issuer.as_slice(), subject.as_slice()) else {
        return Err(CapError::NotAura);
    };
    let issuer = AuthorityId(parse_hex32(issuer).ok_or(CapError::NotAura)?);
    let sid = parse_hex32(sid).ok_or(CapError::NotAura)?;
    let subject = match kind.as_str() {
        "device" => Subject::Device(DeviceId(sid)),
        "authority" => Subject::Authority(AuthorityId(sid)),
        _ => return Err(CapError::NotAura),
    };
    // A right counts only if every block's checks accept an operation using it.
    let mut granted = BTreeSet::new();
    for (r,) in rights {
        let mut a = AuthorizerBuilder::new()
            .set_limits(limits())
            .code(format!("operation(\"{r}\");\nallow if right(\"{r}\");"))
            .map_err(|_| CapError::NotAura)?
            .build(&t)
            .map_err(|_| CapError::Limits)?;
        if a.authorize().is_ok() {
            granted.insert(r);
        }
    }
    let budget = budget
        .first()
        .map(|(b,)| *b)
        .into_iter()
        .chain(caps.iter().map(|(b,)| *b))
        .min();
    Ok(CapSnapshot {
        issuer,
        subject,
        rights: granted,
        budget: budget.map(|b| b.max(0) as u64),
    })
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    crate::keys::unhex(s)?.try_into().ok()
}

/// Hex of a root key (for display).
pub fn root_hex(root: &[u8; 32]) -> String {
    hex(root)
}
