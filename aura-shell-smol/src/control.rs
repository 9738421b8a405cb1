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
    /// Shut down cleanly.
    Stop,
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
    /// pairing / link.
    pub purpose: String,
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
