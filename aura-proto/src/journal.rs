//! The fact journal: a grow-only set of signed facts per namespace.
//!
//! Merge is set union, so it is commutative, associative and idempotent; views are pure
//! functions of the set (see [`crate::authority::AuthorityView::reduce`]), so they do not
//! depend on the order facts arrived in. Facts are verified once, at the boundary
//! ([`verify_fact`]), before they may enter a journal.

use std::collections::BTreeMap;
use std::sync::Arc;

use frost_ristretto255::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::keys::{DeviceCert, DeviceId};
use crate::wire::{self, DecodeError};

const CTX_FACT_ID: &str = "aura 2026-11 fact id";
const CTX_AUTHORITY_ID: &str = "aura 2026-11 authority id";
const CTX_CONTEXT_ID: &str = "aura 2026-11 context id";
/// Most authorities one relational context may join.
pub const MAX_CONTEXT_AUTHORITIES: usize = 16;
/// Most devices one relational context may name.
pub const MAX_CONTEXT_MEMBERS: usize = 64;
const FACT_SIGNING_PREFIX: &[u8] = b"aura fact v1";
/// Encoding version of a fact (first byte of [`Fact::encode`]).
pub const FACT_VERSION: u8 = 1;
/// Largest encoded fact accepted.
pub const MAX_FACT: usize = 16 * 1024;

macro_rules! id32 {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Lower-case hex.
            pub fn to_hex(&self) -> String {
                crate::keys::hex(&self.0)
            }
            /// The first 8 bytes in hex.
            pub fn short(&self) -> String {
                crate::keys::hex(&self.0[..8])
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }
    };
}

id32!(
    /// An authority: BLAKE3 of its genesis body.
    AuthorityId
);
id32!(
    /// A relational context: BLAKE3 of its creation fact (contexts arrive in a later milestone).
    ContextId
);

impl ContextId {
    /// Not a relational context: the scope of one person's own devices (paired devices
    /// and co-members of their authority). A real `ContextId` is a hash and is never all
    /// zeros. The guard chain treats this scope as unmetered (see `guard::UNMETERED`).
    pub const OWN: ContextId = ContextId([0; 32]);
}
id32!(
    /// A fact: BLAKE3 of its canonical signed bytes.
    FactId
);

/// Which journal a fact belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Namespace {
    /// The authority's own journal (membership, tree operations, sealed secrets).
    Authority(AuthorityId),
    /// A context shared between authorities.
    Context(ContextId),
}

/// A 64-byte Schnorr signature (serialized as bytes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sig64(pub [u8; 64]);

impl core::fmt::Debug for Sig64 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Sig64({}..)", crate::keys::hex(&self.0[..6]))
    }
}

impl Serialize for Sig64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sig64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let b: &[u8] = Deserialize::deserialize(d)?;
        Ok(Sig64(
            b.try_into()
                .map_err(|_| serde::de::Error::invalid_length(b.len(), &"64 bytes"))?,
        ))
    }
}

/// Who signed a fact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FactSig {
    /// The author device's signing key.
    Device(Sig64),
    /// The authority's threshold group key (a FROST aggregate signature).
    Group(Sig64),
}

/// A member of an authority.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    /// FROST identifier (1-based index in the sorted member list).
    pub identifier: u16,
    /// The device's public keys.
    pub cert: DeviceCert,
    /// Where the device was last reached (a hint for the other members).
    pub addr: String,
}

/// The first fact of an authority, signed by the new group key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Genesis {
    /// The key-generation session that produced the key (makes every genesis unique).
    pub session: [u8; 32],
    /// Signatures needed.
    pub threshold: u16,
    /// Devices holding shares, sorted by identifier.
    pub members: Vec<Member>,
    /// The group verifying key.
    pub group_key: [u8; 32],
    /// Each member's verifying share, by identifier.
    pub verifying_shares: Vec<(u16, [u8; 32])>,
    /// Ed25519 root of the authority's Biscuit capabilities (derived from the authority
    /// secret; see [`crate::caps`]).
    pub cap_root: [u8; 32],
}

impl Genesis {
    /// `AuthorityId` = BLAKE3 of the canonical genesis body.
    pub fn authority_id(&self) -> AuthorityId {
        AuthorityId(blake3::derive_key(CTX_AUTHORITY_ID, &wire::encode(self)))
    }
}

/// A change to the authority's device tree, bound to the state it applies to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TreeOp {
    /// Epoch of the state this op was made against.
    pub parent_epoch: u64,
    /// Commitment of that state.
    pub parent_commitment: [u8; 32],
    /// The change.
    pub kind: TreeOpKind,
}

/// The tree changes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TreeOpKind {
    /// Admit a device.
    AddDevice(Member),
    /// Remove a device (lost or revoked).
    RemoveDevice(DeviceId),
    /// Change how many signatures are needed.
    ChangeThreshold(u16),
    /// Switch to refreshed shares of the same key (after a removal). A removed device's
    /// share is not on the refreshed polynomial.
    Refresh(RefreshOp),
    /// Move a relational context this authority belongs to into a new epoch, with a new
    /// secret and this authority's current devices.
    ContextEpoch(ContextEpochOp),
}

/// A new epoch of a relational context, decided by one of its authorities through its
/// consensus. The secret travels inside the operation, sealed to every member device, so
/// the commit alone (which any of the authority's devices can carry into the context
/// journal) settles the epoch: nobody has to survive the commit to hand the secret out.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContextEpochOp {
    /// The context.
    pub context: ContextId,
    /// The new epoch (above every epoch this authority decided for the context before).
    pub epoch: u64,
    /// This authority's member devices in the context from this epoch on: exactly its
    /// current members, strictly ascending by device id.
    pub members: Vec<ContextMember>,
    /// The new secret sealed to every member device of the context (every authority's),
    /// strictly ascending by recipient, each for `epoch`.
    pub sealed: Vec<SealedSecret>,
    /// [`ContextEpochOp::commit_to`] of the secret: every recipient checks the secret it
    /// opened against it, so one sealer cannot hand different members different secrets.
    pub commitment: [u8; 32],
}

impl ContextEpochOp {
    /// The commitment to a context secret: a keyed hash bound to context and epoch.
    pub fn commit_to(context: &ContextId, epoch: u64, secret: &[u8; 32]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("aura 2026-12 context secret commitment");
        h.update(&context.0);
        h.update(&epoch.to_le_bytes());
        h.update(secret);
        h.finalize().into()
    }

    /// Structural checks every reader makes: members strictly ascending, all of
    /// `authority`, certificates self-consistent; seals strictly ascending, all for the
    /// op's epoch, one to each listed member; within the size limits.
    pub fn well_formed(&self, authority: &AuthorityId) -> bool {
        self.well_shaped(authority) && self.members.iter().all(|m| m.cert.verify().is_some())
    }

    /// [`ContextEpochOp::well_formed`] without the certificate checks (for a fact that
    /// passed them on its way into a journal).
    fn well_shaped(&self, authority: &AuthorityId) -> bool {
        let ids: Vec<DeviceId> = self.members.iter().map(|m| m.cert.id()).collect();
        let to: Vec<DeviceId> = self.sealed.iter().map(|s| s.to).collect();
        (1..=MAX_CONTEXT_MEMBERS).contains(&self.members.len())
            && self.sealed.len() <= MAX_CONTEXT_MEMBERS
            && self.epoch >= 1
            && self.epoch <= MAX_LAMPORT
            && ids.windows(2).all(|w| w[0] < w[1])
            && to.windows(2).all(|w| w[0] < w[1])
            && self
                .members
                .iter()
                .all(|m| m.authority == *authority && m.addr.len() <= crate::invite::MAX_ADDR_HINT)
            && self.sealed.iter().all(|s| s.epoch == self.epoch)
            && ids.iter().all(|d| to.binary_search(d).is_ok())
    }
}

/// A context epoch decided by an authority, carried into the context journal: the
/// authority's group-signed commit of a [`TreeOpKind::ContextEpoch`], decoded. Built by
/// [`epoch_change_of`] from a `FactBody::ContextEpoch` fact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochChange {
    /// The deciding authority.
    pub authority: AuthorityId,
    /// The consensus instance that agreed it.
    pub instance: crate::consensus::ConsensusId,
    /// The operation.
    pub op: ContextEpochOp,
}

/// Decodes the commit a `FactBody::ContextEpoch` carries, and checks what can be checked
/// without keys: a commit fact of an authority journal, group-signed, whose operation is
/// a well-formed epoch change of `context`. The group signature is checked by
/// [`verify_fact`] (against the key a [`KeyLookup`] knows for that authority).
pub fn epoch_change_of(commit: &[u8], context: &ContextId) -> Option<(EpochChange, Fact)> {
    let (c, f) = decode_epoch_change(commit, context)?;
    c.op.members.iter().all(|m| m.cert.verify().is_some()).then_some((c, f))
}

/// [`epoch_change_of`] without the certificate checks: for reducing a journal, whose
/// facts all passed [`verify_fact`] on their way in.
pub fn decode_epoch_change(commit: &[u8], context: &ContextId) -> Option<(EpochChange, Fact)> {
    let f = Fact::decode(commit).ok()?;
    let (Namespace::Authority(a), FactBody::Commit(c), FactSig::Group(_)) = (&f.namespace, &f.body, &f.sig) else {
        return None;
    };
    let mut scratch = Vec::new();
    let TreeOpKind::ContextEpoch(op) = crate::wire::strict_decode::<TreeOpKind>(&c.op, &mut scratch).ok()? else {
        return None;
    };
    if op.context != *context || !op.well_shaped(a) {
        return None;
    }
    Some((
        EpochChange {
            authority: *a,
            instance: c.id,
            op,
        },
        f,
    ))
}

/// A share refresh to switch to: the new verifying shares, and every member's signed
/// word that it holds its refreshed share (durably) and computed these same shares.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RefreshOp {
    /// Every member's refreshed verifying share, ascending by identifier.
    pub shares: Vec<(u16, [u8; 32])>,
    /// Every member's device signature over [`RefreshOp::attestation`], ascending by
    /// identifier.
    pub signatures: Vec<(u16, Sig64)>,
}

impl RefreshOp {
    /// What each member signs: the authority and the verifying shares it computed.
    pub fn attestation(authority: &AuthorityId, shares: &[(u16, [u8; 32])]) -> Vec<u8> {
        let mut m = b"aura 2026-12 refresh attestation".to_vec();
        m.extend_from_slice(&authority.0);
        m.extend_from_slice(&crate::wire::encode(&shares.to_vec()));
        m
    }
}

/// A secret sealed with HPKE to one device's HPKE key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SealedSecret {
    /// Recipient device.
    pub to: DeviceId,
    /// Secret epoch (0 for the authority's first secret).
    pub epoch: u64,
    /// HPKE encapsulated key.
    pub enc: [u8; 32],
    /// HPKE ciphertext (secret plus AEAD tag).
    pub ciphertext: Vec<u8>,
}

/// A device taking part in a relational context, and the authority it speaks for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContextMember {
    /// The authority the device belongs to (checked by each peer against that
    /// authority's own journal before it trusts the context).
    pub authority: AuthorityId,
    /// The device's public keys.
    pub cert: DeviceCert,
    /// Where the device was last reached.
    pub addr: String,
}

/// The creation of a relational context between two or more authorities. Signed by its
/// creator (a member device); the context is *established* once a member of every other
/// authority has accepted it ([`ContextAccept`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContextGenesis {
    /// The authorities, strictly ascending, at least two.
    pub authorities: Vec<AuthorityId>,
    /// Member devices, strictly ascending by device id.
    pub members: Vec<ContextMember>,
    /// Makes every context unique (two contexts between the same authorities differ).
    pub nonce: [u8; 32],
}

impl ContextGenesis {
    /// `ContextId` = BLAKE3 of the canonical creation body.
    pub fn context_id(&self) -> ContextId {
        ContextId(blake3::derive_key(CTX_CONTEXT_ID, &wire::encode(self)))
    }
}

/// A member of an authority other than the creator's accepts a context.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContextAccept {
    /// The creation fact accepted.
    pub genesis: FactId,
}

/// Largest Lamport clock a fact may carry. Honest clocks grow by one per fact; a remote
/// fact near `u64::MAX` would otherwise leave no room for the facts written after it.
pub const MAX_LAMPORT: u64 = 1 << 48;

/// Largest note payload, bytes (a note and its envelope fit one sync frame).
pub const MAX_NOTE: usize = 4096;

/// Application data a member device writes into a journal it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Note {
    /// The payload, at most [`MAX_NOTE`] bytes.
    pub data: Vec<u8>,
    /// The author asks every other member device to confirm receipt (a `Delivered`
    /// message once the note is durable there).
    pub ack: bool,
}

/// What a fact says.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FactBody {
    /// Authority creation (group-signed).
    Genesis(Genesis),
    /// Device-tree change (group-signed by the current key).
    TreeOp(TreeOp),
    /// The authority secret sealed to a member (device-signed by a member).
    SealedSecret(SealedSecret),
    /// A statement the authority signed (group-signed), kept as evidence.
    Statement(Vec<u8>),
    /// Relational context creation (device-signed by its creator).
    ContextGenesis(ContextGenesis),
    /// Relational context acceptance (device-signed by a member).
    ContextAccept(ContextAccept),
    /// Application data (device-signed by a member of the namespace).
    Note(Note),
    /// An operation agreed by consensus from a prestate, with a quorum of votes
    /// (group-signed). In an authority journal its operation is a [`TreeOpKind`].
    Commit(crate::consensus::Commit),
    /// Proof that a member voted for two instances at one ballot from one prestate
    /// (device-signed by the member that noticed). Every device that knows it stops
    /// counting the equivocator in consensus.
    Equivocation(crate::consensus::Equivocation),
    /// Proof that a member promised a fallback ballot while hiding a vote it had cast
    /// (device-signed by the member that noticed); the same consequence as an
    /// equivocation.
    HiddenVote(crate::consensus::HiddenVote),
    /// A context epoch an authority decided: the encoded, group-signed commit fact from
    /// that authority's journal (device-signed by a device the epoch lists, which carried
    /// it into the context journal). See [`EpochChange`].
    ContextEpoch(Vec<u8>),
}

impl FactBody {
    /// Short name (traces, errors).
    pub fn kind(&self) -> &'static str {
        match self {
            FactBody::Genesis(_) => "genesis",
            FactBody::TreeOp(_) => "tree-op",
            FactBody::SealedSecret(_) => "sealed-secret",
            FactBody::Statement(_) => "statement",
            FactBody::ContextGenesis(_) => "context-genesis",
            FactBody::ContextAccept(_) => "context-accept",
            FactBody::Note(_) => "note",
            FactBody::Commit(_) => "commit",
            FactBody::Equivocation(_) => "equivocation",
            FactBody::HiddenVote(_) => "hidden-vote",
            FactBody::ContextEpoch(_) => "context-epoch",
        }
    }
}

/// A signed fact.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fact {
    /// Which journal.
    pub namespace: Namespace,
    /// Lamport clock: larger than every fact the author had seen in this namespace.
    pub lamport: u64,
    /// The device that wrote the fact.
    pub author: DeviceId,
    /// Content.
    pub body: FactBody,
    /// Signature over [`Fact::signing_bytes`].
    pub sig: FactSig,
}

#[derive(Serialize)]
struct Unsigned<'a> {
    namespace: &'a Namespace,
    lamport: u64,
    author: &'a DeviceId,
    body: &'a FactBody,
}

/// Position of a fact in a journal: Lamport order, ties broken by author then id.
pub type OrderKey = (u64, DeviceId, FactId);

impl Fact {
    /// The bytes a signature covers: a domain prefix and everything but the signature,
    /// except a commit's votes. The group signs a commit's header (instance, prestate,
    /// operation) while the votes are still being gathered, so that signing and voting
    /// share one round trip; each vote carries its own device signature, and reducers
    /// check them.
    pub fn signing_bytes(namespace: &Namespace, lamport: u64, author: &DeviceId, body: &FactBody) -> Vec<u8> {
        if let FactBody::Commit(c) = body {
            if !c.votes.is_empty() {
                let header = FactBody::Commit(crate::consensus::Commit {
                    votes: Vec::new(),
                    ..c.clone()
                });
                return Fact::signing_bytes(namespace, lamport, author, &header);
            }
        }
        wire::encode_into(
            &Unsigned {
                namespace,
                lamport,
                author,
                body,
            },
            FACT_SIGNING_PREFIX.to_vec(),
        )
    }

    /// Canonical bytes: version byte then postcard.
    pub fn encode(&self) -> Vec<u8> {
        wire::encode_into(self, vec![FACT_VERSION])
    }

    /// Strict inverse of [`Fact::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Fact, DecodeError> {
        if bytes.len() > MAX_FACT {
            return Err(DecodeError::Oversized);
        }
        match bytes.split_first() {
            None => Err(DecodeError::Truncated),
            Some((&FACT_VERSION, rest)) => wire::strict_decode(rest, &mut Vec::new()),
            Some(_) => Err(DecodeError::WrongVersion),
        }
    }

    /// Domain-separated BLAKE3 of the canonical bytes.
    pub fn id(&self) -> FactId {
        FactId(blake3::derive_key(CTX_FACT_ID, &self.encode()))
    }

    /// Where the fact sorts.
    pub fn order_key(&self) -> OrderKey {
        (self.lamport, self.author, self.id())
    }
}

/// Why a fact was refused. Remote facts are dropped and counted under these reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum FactError {
    /// Bytes did not decode.
    #[error("malformed fact")]
    Malformed,
    /// Not the namespace it was offered for, or a genesis whose namespace is not its own id.
    #[error("fact belongs to another namespace")]
    WrongNamespace,
    /// The signature does not verify.
    #[error("fact signature does not verify")]
    BadSignature,
    /// Signed by a device that is not a member.
    #[error("fact author is not a member of the authority")]
    UnknownAuthor,
    /// No genesis known for the namespace yet.
    #[error("authority unknown (no genesis)")]
    UnknownAuthority,
    /// The wrong kind of signer for this kind of fact (e.g. a device-signed tree op).
    #[error("fact has the wrong kind of signature for its kind")]
    WrongSigner,
    /// Inconsistent content (e.g. a genesis whose shares do not match its members).
    #[error("fact content is invalid")]
    Invalid,
}

/// Keys a verifier knows for a namespace (from reduced state).
pub trait KeyLookup {
    /// The group key of the namespace's authority, if known.
    fn group_key(&self, ns: &Namespace) -> Option<[u8; 32]>;
    /// The signing key of a member device, if it is one.
    fn device_key(&self, ns: &Namespace, device: &DeviceId) -> Option<[u8; 32]>;
}

pub(crate) fn schnorr_ok(key: &[u8; 32], msg: &[u8], sig: &Sig64) -> bool {
    let (Ok(vk), Ok(sig)) = (VerifyingKey::deserialize(key), Signature::deserialize(&sig.0)) else {
        return false;
    };
    vk.verify(msg, &sig).is_ok()
}

/// Checks a fact offered for namespace `ns`: namespace, signer kind, signature.
pub fn verify_fact(fact: &Fact, ns: &Namespace, keys: &dyn KeyLookup) -> Result<(), FactError> {
    if fact.namespace != *ns {
        return Err(FactError::WrongNamespace);
    }
    if fact.lamport > MAX_LAMPORT {
        return Err(FactError::Invalid);
    }
    let msg = Fact::signing_bytes(&fact.namespace, fact.lamport, &fact.author, &fact.body);
    match (&fact.body, &fact.sig) {
        (FactBody::Genesis(g), FactSig::Group(sig)) => {
            if *ns != Namespace::Authority(g.authority_id()) {
                return Err(FactError::WrongNamespace);
            }
            check_genesis(g)?;
            // `check_genesis` verified every cert.
            if !g.members.iter().any(|m| m.cert.id() == fact.author) {
                return Err(FactError::UnknownAuthor);
            }
            schnorr_ok(&g.group_key, &msg, sig)
                .then_some(())
                .ok_or(FactError::BadSignature)
        }
        // A commit's votes are checked where it is applied, against the view at its
        // prestate (membership and threshold can change).
        (FactBody::TreeOp(_) | FactBody::Statement(_) | FactBody::Commit(_), FactSig::Group(sig)) => {
            let key = keys.group_key(ns).ok_or(FactError::UnknownAuthority)?;
            keys.device_key(ns, &fact.author).ok_or(FactError::UnknownAuthor)?;
            schnorr_ok(&key, &msg, sig).then_some(()).ok_or(FactError::BadSignature)
        }
        (FactBody::SealedSecret(_), FactSig::Device(sig)) => {
            if let Namespace::Authority(_) = ns {
                keys.group_key(ns).ok_or(FactError::UnknownAuthority)?;
            }
            let key = keys.device_key(ns, &fact.author).ok_or(FactError::UnknownAuthor)?;
            schnorr_ok(&key, &msg, sig).then_some(()).ok_or(FactError::BadSignature)
        }
        (FactBody::ContextGenesis(g), FactSig::Device(sig)) => {
            if *ns != Namespace::Context(g.context_id()) {
                return Err(FactError::WrongNamespace);
            }
            check_context_genesis(g)?;
            // The creator's key comes from the (self-certifying) member list itself.
            signed_by_listed(&g.members, &fact.author, &msg, sig)
        }
        (FactBody::ContextAccept(_), FactSig::Device(sig)) => {
            if !matches!(ns, Namespace::Context(_)) {
                return Err(FactError::WrongNamespace);
            }
            let key = keys.device_key(ns, &fact.author).ok_or(FactError::UnknownAuthor)?;
            schnorr_ok(&key, &msg, sig).then_some(()).ok_or(FactError::BadSignature)
        }
        (FactBody::Equivocation(_) | FactBody::HiddenVote(_), FactSig::Device(sig)) => {
            // Checked against the voter's key where it is applied (the voter must be a
            // member there); here only the reporter.
            if !matches!(ns, Namespace::Authority(_)) {
                return Err(FactError::WrongNamespace);
            }
            keys.group_key(ns).ok_or(FactError::UnknownAuthority)?;
            let key = keys.device_key(ns, &fact.author).ok_or(FactError::UnknownAuthor)?;
            schnorr_ok(&key, &msg, sig).then_some(()).ok_or(FactError::BadSignature)
        }
        (FactBody::ContextEpoch(bytes), FactSig::Device(sig)) => {
            let Namespace::Context(c) = ns else {
                return Err(FactError::WrongNamespace);
            };
            let (change, inner) = epoch_change_of(bytes, c).ok_or(FactError::Invalid)?;
            let FactSig::Group(gsig) = &inner.sig else {
                return Err(FactError::Invalid);
            };
            let key = keys
                .group_key(&Namespace::Authority(change.authority))
                .ok_or(FactError::UnknownAuthority)?;
            let inner_msg = Fact::signing_bytes(&inner.namespace, inner.lamport, &inner.author, &inner.body);
            if !schnorr_ok(&key, &inner_msg, gsig) {
                return Err(FactError::BadSignature);
            }
            // The carrier is one of the devices the new epoch lists (it may be new to the
            // context, so its key comes from the signed list itself).
            signed_by_listed(&change.op.members, &fact.author, &msg, sig)
        }
        (FactBody::Note(n), FactSig::Device(sig)) => {
            if n.data.len() > MAX_NOTE {
                return Err(FactError::Invalid);
            }
            if let Namespace::Authority(_) = ns {
                keys.group_key(ns).ok_or(FactError::UnknownAuthority)?;
            }
            let key = keys.device_key(ns, &fact.author).ok_or(FactError::UnknownAuthor)?;
            schnorr_ok(&key, &msg, sig).then_some(()).ok_or(FactError::BadSignature)
        }
        _ => Err(FactError::WrongSigner),
    }
}

/// `author` is in `members` and signed `msg` with the key listed there.
fn signed_by_listed(members: &[ContextMember], author: &DeviceId, msg: &[u8], sig: &Sig64) -> Result<(), FactError> {
    let m = members
        .iter()
        .find(|m| m.cert.id() == *author)
        .ok_or(FactError::UnknownAuthor)?;
    schnorr_ok(&m.cert.signing, msg, sig)
        .then_some(())
        .ok_or(FactError::BadSignature)
}

/// Structural checks of a genesis: identifiers 1..=n in order, threshold in range, one
/// verifying share per member, every certificate self-consistent.
fn check_genesis(g: &Genesis) -> Result<(), FactError> {
    let n = g.members.len();
    if n < 2 || g.threshold < 2 || g.threshold as usize > n || g.verifying_shares.len() != n {
        return Err(FactError::Invalid);
    }
    for (i, (m, (vi, _))) in g.members.iter().zip(&g.verifying_shares).enumerate() {
        if m.identifier as usize != i + 1 || *vi != m.identifier || m.cert.verify().is_none() {
            return Err(FactError::Invalid);
        }
    }
    Ok(())
}

/// Structural checks of a context creation: at least two authorities, strictly ascending;
/// members strictly ascending by device id, each of a listed authority, every authority
/// with a member, every certificate self-consistent; within the size limits.
fn check_context_genesis(g: &ContextGenesis) -> Result<(), FactError> {
    let ascending_authorities = g.authorities.windows(2).all(|w| w[0] < w[1]);
    let ids: Vec<DeviceId> = g.members.iter().map(|m| m.cert.id()).collect();
    let ascending_members = ids.windows(2).all(|w| w[0] < w[1]);
    let sizes = (2..=MAX_CONTEXT_AUTHORITIES).contains(&g.authorities.len())
        && (1..=MAX_CONTEXT_MEMBERS).contains(&g.members.len());
    let known = g
        .members
        .iter()
        .all(|m| g.authorities.binary_search(&m.authority).is_ok());
    let covered = g
        .authorities
        .iter()
        .all(|a| g.members.iter().any(|m| m.authority == *a));
    if !(sizes && ascending_authorities && ascending_members && known && covered) {
        return Err(FactError::Invalid);
    }
    if g.members.iter().any(|m| m.cert.verify().is_none()) {
        return Err(FactError::Invalid);
    }
    Ok(())
}

/// A grow-only set of verified facts, per namespace, in journal order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Journal {
    facts: BTreeMap<Namespace, BTreeMap<OrderKey, Arc<Fact>>>,
}

impl Journal {
    /// An empty journal.
    pub fn new() -> Journal {
        Journal::default()
    }

    /// Adds a fact that already passed [`verify_fact`]; returns whether it was new.
    pub fn insert(&mut self, fact: Fact) -> bool {
        let key = fact.order_key();
        let m = self.facts.entry(fact.namespace).or_default();
        if m.contains_key(&key) {
            return false;
        }
        m.insert(key, Arc::new(fact));
        true
    }

    /// Set union with another journal.
    pub fn merge(&mut self, other: &Journal) {
        for (ns, facts) in &other.facts {
            let mine = self.facts.entry(*ns).or_default();
            if mine.is_empty() {
                // Nothing to compare against: copy the whole ordered map in one go.
                mine.clone_from(facts);
                continue;
            }
            for (k, f) in facts {
                // Facts are immutable and shared: merging copies a pointer, not the fact.
                mine.entry(*k).or_insert_with(|| Arc::clone(f));
            }
        }
    }

    /// Facts of one namespace, in order.
    pub fn facts(&self, ns: &Namespace) -> impl Iterator<Item = &Fact> {
        self.facts.get(ns).into_iter().flat_map(|m| m.values().map(|f| &**f))
    }

    /// Facts of one namespace with their ids, in order. The id comes from the stored order
    /// key, so this costs no hashing (anti-entropy walks whole namespaces per message).
    pub fn entries(&self, ns: &Namespace) -> impl Iterator<Item = (FactId, &Fact)> {
        self.facts
            .get(ns)
            .into_iter()
            .flat_map(|m| m.iter().map(|(k, f)| (k.2, &**f)))
    }

    /// The order key of the last fact of `ns`.
    pub fn last_key(&self, ns: &Namespace) -> Option<OrderKey> {
        self.facts.get(ns)?.keys().next_back().copied()
    }

    /// Namespaces present.
    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.facts.keys()
    }

    /// Number of facts in a namespace.
    pub fn len(&self, ns: &Namespace) -> usize {
        self.facts.get(ns).map_or(0, |m| m.len())
    }

    /// True when no namespace holds a fact.
    pub fn is_empty(&self) -> bool {
        self.facts.values().all(|m| m.is_empty())
    }

    /// Whether a fact is present.
    pub fn contains(&self, fact: &Fact) -> bool {
        self.facts
            .get(&fact.namespace)
            .is_some_and(|m| m.contains_key(&fact.order_key()))
    }

    /// The next Lamport value an author should use in `ns`.
    pub fn next_lamport(&self, ns: &Namespace) -> u64 {
        self.facts
            .get(ns)
            .and_then(|m| m.keys().next_back())
            .map_or(0, |k| k.0.saturating_add(1))
    }

    /// BLAKE3 over the canonical bytes of every fact of `ns`, in order: equal digests mean
    /// byte-identical journals.
    pub fn digest(&self, ns: &Namespace) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("aura 2026-11 journal digest");
        for f in self.facts(ns) {
            let b = f.encode();
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(&b);
        }
        h.finalize().into()
    }
}
