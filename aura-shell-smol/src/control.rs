//! The local control protocol: one JSON request line, one JSON reply line, over the
//! daemon's Unix socket (`DIR/control.sock`, mode 0600).

use aura_proto::{ChannelInfo, DeviceId, Peer};
use serde::{Deserialize, Serialize};

/// A request to the running peer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Device, paired devices and channels.
    Status,
    /// Create an invitation code.
    Invite {
        /// Lifetime in seconds.
        valid_for_s: u64,
        /// Address to put in the code (default: the listen address).
        addr: Option<String>,
    },
    /// Redeem a code and wait for pairing.
    Join {
        /// The code.
        code: String,
    },
    /// Round-trip to a paired device (id or unique id prefix).
    Ping {
        /// Device id or prefix.
        peer: String,
    },
    /// Create an authority with paired devices (all paired devices when `devices` is empty).
    AuthorityCreate {
        /// Signatures needed.
        threshold: u16,
        /// Device ids or unique prefixes.
        devices: Vec<String>,
    },
    /// Show the authority this device belongs to.
    AuthorityShow,
    /// Have the authority sign a statement.
    Sign {
        /// The statement text.
        text: String,
    },
    /// Create a context invitation for a device of another authority.
    ContextInvite {
        /// Lifetime in seconds.
        valid_for_s: u64,
        /// Address to put in the code (default: the listen address).
        addr: Option<String>,
    },
    /// Redeem a context invitation and wait until the context is ready.
    ContextJoin {
        /// The code.
        code: String,
    },
    /// Ready contexts.
    ContextList,
    /// The egress ledger from `since_unix_ms` on (what left this device, never content).
    Audit {
        /// Earliest entry, ms since the Unix epoch.
        since_unix_ms: u64,
    },
    /// Send text to one of this person's paired devices (application data, unmetered).
    Send {
        /// Device id or prefix.
        peer: String,
        /// The text.
        text: String,
    },
    /// Load test against a paired device running `run --echo`: `count` messages of
    /// `size` bytes, at most `window` awaiting their echo; answered with throughput and
    /// round-trip percentiles.
    BenchEcho {
        /// Device id or prefix.
        peer: String,
        /// Messages.
        count: u64,
        /// Bytes per message (at least 8).
        size: usize,
        /// Messages in flight at most.
        window: u64,
    },
    /// Send text in a context to a device of the other authority.
    ContextSend {
        /// Context id or unique prefix.
        context: String,
        /// Device id or unique prefix (a member of the other authority).
        peer: String,
        /// The text.
        text: String,
    },
    /// Reconcile journals now with one device (id or unique prefix: an own device or a
    /// member of a context) or with all; the reply lists each session's outcome.
    Sync {
        /// Device id or prefix; all when absent.
        peer: Option<String>,
    },
    /// Write a note into this device's authority journal, or a context's.
    Note {
        /// Context id or unique prefix; the authority journal when absent.
        context: Option<String>,
        /// The text.
        text: String,
        /// Ask every other member to confirm receipt.
        ack: bool,
    },
    /// Facts this device wrote, with their propagation and confirmations.
    Propagation,
    /// Have the authority agree (consensus) on a new threshold; answered when applied.
    AuthorityThreshold {
        /// The new threshold.
        threshold: u16,
    },
    /// Have the authority agree (consensus) to remove a device; answered when applied.
    DeviceRemove {
        /// Device id or unique prefix (a member).
        device: String,
    },
    /// Have the authority agree (consensus) to add a device this one paired with, then
    /// enroll it (give it a share of the key); answered when it holds its share.
    DeviceAdd {
        /// Device id or unique prefix (a paired device that is not a member).
        device: String,
    },
    /// Refresh the key shares among the members; answered when this device switched.
    AuthorityRefresh,
    /// Have this device's authority agree (consensus) on a new epoch of a context (new
    /// secret, current devices); answered when this device moved to it.
    ContextRekey {
        /// Context id or unique prefix.
        context: String,
    },
    /// Shut down cleanly.
    Stop,
}

/// A fact this device wrote, in `propagation` output.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WrittenInfo {
    /// Fact id (hex).
    pub fact: String,
    /// `authority <id>` or `context <id>`.
    pub namespace: String,
    /// Fact kind (note, statement, genesis, ...).
    pub kind: String,
    /// local / syncing / complete / failed.
    pub status: String,
    /// Member devices known to hold it.
    pub reached: u16,
    /// Other member devices of the namespace.
    pub known: u16,
    /// Devices that confirmed a note asking for it: (device id hex, unix ms).
    pub confirmed: Vec<(String, u64)>,
}

/// Human name of a namespace.
pub fn namespace_name(ns: &aura_proto::journal::Namespace) -> String {
    match ns {
        aura_proto::journal::Namespace::Authority(a) => format!("authority {}", a.to_hex()),
        aura_proto::journal::Namespace::Context(c) => format!("context {}", c.to_hex()),
    }
}

impl WrittenInfo {
    /// Every fact `peer` wrote, oldest first.
    pub fn all(peer: &Peer) -> Vec<WrittenInfo> {
        use aura_proto::Propagation as P;
        peer.written_facts()
            .into_iter()
            .map(|(id, ns, p)| {
                let kind = peer
                    .journal()
                    .facts(&ns)
                    .find(|f| f.id() == id)
                    .map_or("?", |f| f.body.kind());
                let (status, reached, known) = match p {
                    P::Local => ("local", 0, 0),
                    P::Syncing { reached, known } => ("syncing", reached, known),
                    P::Complete => ("complete", 0, 0),
                    P::Failed { reached, known, .. } => ("failed", reached, known),
                };
                WrittenInfo {
                    fact: id.to_hex(),
                    namespace: namespace_name(&ns),
                    kind: kind.into(),
                    status: status.into(),
                    reached,
                    known,
                    confirmed: peer.deliveries(&id).into_iter().map(|(d, t)| (d.to_hex(), t)).collect(),
                }
            })
            .collect()
    }
}

/// Finds a device this one shares a journal with (a paired device or a member of a ready
/// context) by full id or unique prefix.
pub fn resolve_member(peer: &Peer, s: &str) -> Result<DeviceId, String> {
    let s = s.trim().to_lowercase();
    if s.is_empty() {
        return Err("empty device id".into());
    }
    let mut all: std::collections::BTreeSet<DeviceId> = peer.paired().map(|(id, _)| *id).collect();
    for c in peer.contexts() {
        if let Some(v) = peer.context(&c) {
            all.extend(v.members.keys().copied());
        }
    }
    all.remove(&peer.id());
    let hits: Vec<DeviceId> = all.into_iter().filter(|id| id.to_hex().starts_with(&s)).collect();
    match hits.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!("no paired device or context member matches {s:?}")),
        _ => Err(format!("{s:?} matches {} devices; give more characters", hits.len())),
    }
}

/// Resolves a context id prefix among ready contexts.
pub fn resolve_context(peer: &Peer, s: &str) -> Result<aura_proto::journal::ContextId, String> {
    let c = s.trim().to_lowercase();
    if c.is_empty() {
        return Err("empty context id".into());
    }
    let ctxs: Vec<_> = peer
        .contexts()
        .into_iter()
        .filter(|id| id.to_hex().starts_with(&c))
        .collect();
    match ctxs.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!("no ready context matches {c:?} (see `aura-smol context list`)")),
        _ => Err(format!("{c:?} matches {} contexts; give more characters", ctxs.len())),
    }
}

/// A ready relational context in `context list` output.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContextInfo {
    /// Context id (hex).
    pub id: String,
    /// Current epoch.
    pub epoch: u64,
    /// The authorities joined (hex).
    pub authorities: Vec<String>,
    /// Member devices: (device id hex, authority id hex).
    pub members: Vec<(String, String)>,
}

impl ContextInfo {
    /// Every ready context of `peer`.
    pub fn all(peer: &Peer) -> Vec<ContextInfo> {
        peer.contexts()
            .iter()
            .filter_map(|id| peer.context(id))
            .map(|v| ContextInfo {
                id: v.id.to_hex(),
                epoch: v.epoch,
                authorities: v.authorities.iter().map(|a| a.to_hex()).collect(),
                members: v
                    .members
                    .iter()
                    .map(|(d, m)| (d.to_hex(), m.authority.to_hex()))
                    .collect(),
            })
            .collect()
    }
}

/// An authority in `authority show` output.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuthorityInfo {
    /// Authority id (hex).
    pub id: String,
    /// Group key (hex).
    pub group_key: String,
    /// Signatures needed.
    pub threshold: u16,
    /// Tree epoch.
    pub epoch: u64,
    /// Members: (device id hex, identifier).
    pub members: Vec<(String, u16)>,
    /// Facts in the authority journal.
    pub facts: usize,
}

impl AuthorityInfo {
    /// The authority `peer` belongs to, if any.
    pub fn of(peer: &Peer) -> Option<AuthorityInfo> {
        let v = peer.authority()?;
        Some(AuthorityInfo {
            id: v.id.to_hex(),
            group_key: v.group_key.iter().map(|b| format!("{b:02x}")).collect(),
            threshold: v.threshold,
            epoch: v.epoch,
            members: v.members.iter().map(|(d, m)| (d.to_hex(), m.identifier)).collect(),
            facts: peer.journal().len(&aura_proto::journal::Namespace::Authority(v.id)),
        })
    }
}

/// A paired device in status output.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PairedInfo {
    /// Device id (hex).
    pub id: String,
    /// Last known address.
    pub addr: String,
}

/// A channel in status output.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelStatus {
    /// Device id (hex), once known.
    pub peer: Option<String>,
    /// Address.
    pub addr: String,
    /// handshaking / confirming / up.
    pub state: String,
    /// Negotiated protocol version (0 while handshaking).
    pub version: u16,
    /// initiator / responder.
    pub role: String,
    /// pairing / link / contextjoin / context.
    pub purpose: String,
    /// `own` between this person's devices, else the context id (hex).
    pub context: String,
    /// Context epoch the channel's keys come from.
    pub epoch: u64,
    /// `direct` (straight to the peer's address) or `relayed`. Relays are not built yet
    /// (DESIGN §12), so every channel is direct today.
    #[serde(default = "direct")]
    pub path: String,
}

fn direct() -> String {
    "direct".into()
}

/// Reply to `status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// This device.
    pub device: String,
    /// Bound UDP address (or configured one when not running).
    pub listen: String,
    /// Whether a daemon answered.
    pub running: bool,
    /// Paired devices.
    pub paired: Vec<PairedInfo>,
    /// Live channels.
    pub channels: Vec<ChannelStatus>,
    /// Dropped datagrams by reason (non-zero only).
    pub dropped: Vec<(String, u64)>,
}

fn lower<T: core::fmt::Debug>(t: &T) -> String {
    format!("{t:?}").to_lowercase()
}

impl Status {
    /// Builds the status of `peer`.
    pub fn of(peer: &Peer, listen: String, running: bool) -> Status {
        let m = peer.metrics();
        Status {
            device: peer.id().to_hex(),
            listen,
            running,
            paired: peer
                .paired()
                .map(|(id, addr)| PairedInfo {
                    id: id.to_hex(),
                    addr: addr.to_owned(),
                })
                .collect(),
            // Without a running peer nothing is connected, whatever the restored state says.
            channels: if running {
                peer.channels().iter().map(channel_status).collect()
            } else {
                Vec::new()
            },
            dropped: aura_proto::DropReason::ALL
                .iter()
                .filter(|r| m.drops(**r) > 0)
                .map(|r| (r.name().to_owned(), m.drops(*r)))
                .collect(),
        }
    }
}

fn channel_status(c: &ChannelInfo) -> ChannelStatus {
    ChannelStatus {
        peer: c.peer.map(|p| p.to_hex()),
        addr: c.addr.clone(),
        state: lower(&c.state),
        version: c.version,
        role: lower(&c.role),
        purpose: lower(&c.purpose),
        context: if c.context == aura_proto::journal::ContextId::OWN {
            "own".into()
        } else {
            c.context.to_hex()
        },
        epoch: c.epoch,
        path: direct(),
    }
}

/// Finds a paired device by full id or unique prefix.
pub fn resolve_peer(peer: &Peer, s: &str) -> Result<DeviceId, String> {
    let s = s.trim().to_lowercase();
    if s.is_empty() {
        return Err("empty device id".into());
    }
    let hits: Vec<DeviceId> = peer
        .paired()
        .map(|(id, _)| *id)
        .filter(|id| id.to_hex().starts_with(&s))
        .collect();
    match hits.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!("no paired device matches {s:?}")),
        _ => Err(format!(
            "{s:?} matches {} paired devices; give more characters",
            hits.len()
        )),
    }
}

/// Resolves a context id prefix among ready contexts, then a device id prefix among that
/// context's members of the other authority.
pub fn resolve_context_peer(
    peer: &Peer,
    context: &str,
    device: &str,
) -> Result<(aura_proto::journal::ContextId, DeviceId), String> {
    let d = device.trim().to_lowercase();
    if d.is_empty() {
        return Err("empty device id".into());
    }
    let ctx = resolve_context(peer, context)?;
    let view = peer.context(&ctx).expect("listed as ready");
    let mine = peer.authority().map(|a| a.id);
    let hits: Vec<DeviceId> = view
        .members
        .iter()
        .filter(|(id, m)| Some(m.authority) != mine && id.to_hex().starts_with(&d))
        .map(|(id, _)| *id)
        .collect();
    match hits.as_slice() {
        [one] => Ok((ctx, *one)),
        [] => Err(format!(
            "no device of the other authority in this context matches {d:?}"
        )),
        _ => Err(format!("{d:?} matches {} devices; give more characters", hits.len())),
    }
}
