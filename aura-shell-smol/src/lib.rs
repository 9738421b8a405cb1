//! # aura-shell-smol: Aura on real sockets, clocks and disks
//!
//! A thin shell around [`aura_proto::Peer`]: [`host::Host`] binds a peer to a data
//! directory and the OS clock, [`daemon`] runs the smol event loop with a UDP socket and a
//! local control socket, [`store`] keeps the device secret and the append-only record
//! log. The shell holds no protocol state: everything it knows about pairings and
//! channels it asks the peer.

#![forbid(unsafe_code)]

pub mod audit;
pub mod control;
pub mod daemon;
pub mod host;
pub mod store;
