//! The data directory: device secret, settings and the append-only record log.
//!
//! Layout of `DIR`:
//! - `device.key`: the 32-byte device secret, hex, mode 0600. The only secret on disk.
//! - `config.json`: settings chosen at `init` (listen address).
//! - `records.log`: `AURALOG1` then entries `len: u32 LE | BLAKE3(payload)[..8] | payload`,
//!   where the payload is an encoded `aura_proto::Record`. Appended and fsynced before the
//!   core is told `PersistDone`.
//! - `lock`: held with an exclusive file lock while a process uses the directory.
//! - `control.sock`: the running peer's control socket (mode 0600).

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aura_proto::{DeviceSecret, Record};
use serde::{Deserialize, Serialize};

const LOG_MAGIC: &[u8; 8] = b"AURALOG1";
const ENTRY_HEADER: usize = 12;
/// Largest record accepted from the log; anything larger is corruption.
pub const MAX_RECORD: usize = 1 << 20;

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `init` was never run here.
    #[error("{0} is not an Aura data directory (run `aura-smol --data-dir {0} init` first)")]
    NotInitialized(String),
    /// `init` on an existing directory.
    #[error("{0} already holds a device (device.key exists); refusing to overwrite it")]
    AlreadyInitialized(String),
    /// Another process holds the lock.
    #[error("data directory {0} is in use by another aura-smol process")]
    Locked(String),
    /// The secret file is unreadable or wrong.
    #[error("device.key is damaged: {0}")]
    BadSecret(String),
    /// The log has a valid checksum but content this build cannot read.
    #[error("records.log entry at byte {offset} is unreadable by this version ({detail}); not touching it")]
    UnreadableRecord {
        /// Byte offset of the entry.
        offset: u64,
        /// Decoder message.
        detail: String,
    },
    /// The log is not an Aura log at all.
    #[error("records.log does not start with the Aura log header")]
    BadLogHeader,
    /// Settings file broken.
    #[error("config.json is damaged: {0}")]
    BadConfig(String),
    /// Any other I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The error.
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// Settings written by `init`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeConfig {
    /// UDP address `run` binds.
    pub listen: SocketAddr,
}

/// What opening the log found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut from a torn or corrupt tail.
    pub cut_bytes: u64,
    /// Offset where the cut happened.
    pub cut_at: u64,
    /// Why.
    pub reason: Option<&'static str>,
}

/// An open, locked data directory.
pub struct Store {
    dir: PathBuf,
    log: File,
    _lock: File,
    /// The device secret.
    pub secret: DeviceSecret,
    /// Settings.
    pub config: NodeConfig,
    /// Records read at open, in order.
    pub records: Vec<Record>,
    /// What was repaired at open.
    pub recovery: Recovery,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Fresh OS randomness (device secrets, run seeds).
pub fn os_random() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source is available");
    b
}

fn checksum(payload: &[u8]) -> [u8; 8] {
    let h = blake3::hash(payload);
    let mut c = [0u8; 8];
    c.copy_from_slice(&h.as_bytes()[..8]);
    c
}

/// Encodes one log entry.
pub fn encode_entry(payload: &[u8]) -> Vec<u8> {
    let mut e = Vec::with_capacity(ENTRY_HEADER + payload.len());
    e.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    e.extend_from_slice(&checksum(payload));
    e.extend_from_slice(payload);
    e
}

/// Splits a log body (after the header) into valid payloads; stops at the first torn or
/// corrupt entry and returns its offset (relative to the body) and the reason.
pub fn scan_entries(body: &[u8]) -> (Vec<&[u8]>, Option<(usize, &'static str)>) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let rest = &body[at..];
        if rest.len() < ENTRY_HEADER {
            return (out, Some((at, "torn entry header")));
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_RECORD {
            return (out, Some((at, "impossible entry length")));
        }
        if rest.len() < ENTRY_HEADER + len {
            return (out, Some((at, "torn entry body")));
        }
        let payload = &rest[ENTRY_HEADER..ENTRY_HEADER + len];
        if checksum(payload) != rest[4..12] {
            return (out, Some((at, "checksum mismatch")));
        }
        out.push(payload);
        at += ENTRY_HEADER + len;
    }
    (out, None)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Store {
    /// Creates a new device in `dir`.
    pub fn init(dir: &Path, config: &NodeConfig) -> Result<DeviceSecret, StoreError> {
        let d = dir.display().to_string();
        if dir.join("device.key").exists() {
            return Err(StoreError::AlreadyInitialized(d));
        }
        fs::create_dir_all(dir).map_err(io_err(format!("creating {d}")))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err("restricting directory"))?;
        let secret = DeviceSecret::from_bytes(os_random());
        let write_new = |name: &str, bytes: &[u8], mode: u32| -> Result<(), StoreError> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(dir.join(name))
                .map_err(io_err(format!("creating {name}")))?;
            f.write_all(bytes).map_err(io_err(format!("writing {name}")))?;
            f.sync_all().map_err(io_err(format!("syncing {name}")))
        };
        let cfg = serde_json::to_vec_pretty(config).expect("config serializes");
        write_new("config.json", &cfg, 0o600)?;
        write_new("records.log", LOG_MAGIC, 0o600)?;
        // The key goes last: its presence marks a complete init.
        write_new("device.key", format!("{}\n", hex(&secret.to_bytes())).as_bytes(), 0o600)?;
        sync_dir(dir).map_err(io_err("syncing data directory"))?;
        Ok(secret)
    }

    /// Opens and locks `dir`, reading every valid record and cutting a torn tail.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let d = dir.display().to_string();
        let key_path = dir.join("device.key");
        if !key_path.exists() {
            return Err(StoreError::NotInitialized(d));
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join("lock"))
            .map_err(io_err("opening lock file"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(StoreError::Locked(d)),
            Err(TryLockError::Error(e)) => return Err(io_err("locking data directory")(e)),
        }
        let key = fs::read_to_string(&key_path).map_err(io_err("reading device.key"))?;
        let key = key.trim();
        let bytes: Vec<u8> = (0..key.len())
            .step_by(2)
            .map(|i| key.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| StoreError::BadSecret("not hex".into()))?;
        let secret: [u8; 32] = bytes
            .try_into()
            .map_err(|_| StoreError::BadSecret("not 32 bytes".into()))?;
        let cfg = fs::read(dir.join("config.json")).map_err(io_err("reading config.json"))?;
        let config: NodeConfig = serde_json::from_slice(&cfg).map_err(|e| StoreError::BadConfig(e.to_string()))?;

        let mut log = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("records.log"))
            .map_err(io_err("opening records.log"))?;
        let mut all = Vec::new();
        log.read_to_end(&mut all).map_err(io_err("reading records.log"))?;
        if all.len() < LOG_MAGIC.len() {
            // A crash during init can leave a short header; nothing was ever recorded.
            if !LOG_MAGIC.starts_with(&all) {
                return Err(StoreError::BadLogHeader);
            }
            log.set_len(0).map_err(io_err("resetting records.log"))?;
            log.write_all(LOG_MAGIC).map_err(io_err("writing records.log header"))?;
            log.sync_all().map_err(io_err("syncing records.log"))?;
            all = LOG_MAGIC.to_vec();
        }
        if &all[..LOG_MAGIC.len()] != LOG_MAGIC {
            return Err(StoreError::BadLogHeader);
        }
        let body = &all[LOG_MAGIC.len()..];
        let (payloads, cut) = scan_entries(body);
        let mut records = Vec::with_capacity(payloads.len());
        let mut offset = LOG_MAGIC.len() as u64;
        for p in payloads {
            let r = Record::decode(p).map_err(|e| StoreError::UnreadableRecord {
                offset,
                detail: format!("{e:?}"),
            })?;
            records.push(r);
            offset += (ENTRY_HEADER + p.len()) as u64;
        }
        let mut recovery = Recovery::default();
        if let Some((at, reason)) = cut {
            let at = (LOG_MAGIC.len() + at) as u64;
            recovery = Recovery {
                cut_bytes: all.len() as u64 - at,
                cut_at: at,
                reason: Some(reason),
            };
            log.set_len(at).map_err(io_err("cutting torn tail of records.log"))?;
            log.sync_all().map_err(io_err("syncing records.log"))?;
        }
        log.seek(SeekFrom::End(0)).map_err(io_err("seeking records.log"))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            log,
            _lock: lock,
            secret: DeviceSecret::from_bytes(secret),
            config,
            records,
            recovery,
        })
    }

    /// Appends a record and waits until it is on disk.
    pub fn append(&mut self, record: &Record) -> io::Result<()> {
        self.log.write_all(&encode_entry(&record.encode()))?;
        self.log.sync_data()
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the control socket.
    pub fn control_path(dir: &Path) -> PathBuf {
        dir.join("control.sock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_stops_at_torn_or_corrupt_entries() {
        let a = encode_entry(b"first");
        let b = encode_entry(b"second");
        let mut body = [a.clone(), b.clone()].concat();
        assert_eq!(scan_entries(&body), (vec![&b"first"[..], &b"second"[..]], None));
        for cut in 1..b.len() {
            let torn = &body[..a.len() + cut];
            let (ok, bad) = scan_entries(torn);
            assert_eq!(ok, vec![&b"first"[..]]);
            assert_eq!(bad.unwrap().0, a.len());
        }
        let last = body.len() - 1;
        body[last] ^= 1;
        let (ok, bad) = scan_entries(&body);
        assert_eq!(ok.len(), 1);
        assert_eq!(bad, Some((a.len(), "checksum mismatch")));
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("aura-store-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn sample(n: u8) -> Record {
        Record::JoinStarted(aura_proto::Invitation {
            version: 1,
            inviter_noise: [n; 32],
            secret: [n; 32],
            expires_unix_ms: 1,
            addr_hint: format!("127.0.0.1:{n}"),
        })
    }

    #[test]
    fn records_survive_reopen_and_torn_tails_are_cut() {
        let d = tmp("torn");
        let cfg = NodeConfig {
            listen: "127.0.0.1:1".parse().unwrap(),
        };
        let secret = Store::init(&d, &cfg).unwrap();
        {
            let mut s = Store::open(&d).unwrap();
            assert_eq!(s.secret, secret);
            assert!(
                matches!(Store::open(&d), Err(StoreError::Locked(_))),
                "second open must fail while locked"
            );
            for n in 1..=3 {
                s.append(&sample(n)).unwrap();
            }
        }
        let s = Store::open(&d).unwrap();
        assert_eq!(s.records, vec![sample(1), sample(2), sample(3)]);
        assert_eq!(s.recovery, Recovery::default());
        drop(s);
        // Tear the last entry in half, as a crash mid-write would.
        let log = d.join("records.log");
        let len = fs::metadata(&log).unwrap().len();
        let f = OpenOptions::new().write(true).open(&log).unwrap();
        f.set_len(len - 7).unwrap();
        drop(f);
        let mut s = Store::open(&d).unwrap();
        assert_eq!(s.records, vec![sample(1), sample(2)]);
        assert_eq!(s.recovery.reason, Some("torn entry body"));
        // Appending after the cut yields a clean log.
        s.append(&sample(4)).unwrap();
        drop(s);
        let s = Store::open(&d).unwrap();
        assert_eq!(s.records, vec![sample(1), sample(2), sample(4)]);
        assert_eq!(s.recovery.reason, None);
        drop(s);
        // Flip a byte inside the last payload: cut as corrupt.
        let mut bytes = fs::read(&log).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0xff;
        fs::write(&log, &bytes).unwrap();
        let s = Store::open(&d).unwrap();
        assert_eq!(s.records, vec![sample(1), sample(2)]);
        assert_eq!(s.recovery.reason, Some("checksum mismatch"));
        drop(s);
        // Not an Aura log at all: refuse rather than destroy.
        fs::write(&log, b"something else entirely").unwrap();
        assert!(matches!(Store::open(&d), Err(StoreError::BadLogHeader)));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn init_refuses_to_overwrite_and_protects_the_secret() {
        let d = tmp("init");
        let cfg = NodeConfig {
            listen: "127.0.0.1:1".parse().unwrap(),
        };
        Store::init(&d, &cfg).unwrap();
        assert!(matches!(Store::init(&d, &cfg), Err(StoreError::AlreadyInitialized(_))));
        let mode = fs::metadata(d.join("device.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::write(d.join("device.key"), "zz\n").unwrap();
        assert!(matches!(Store::open(&d), Err(StoreError::BadSecret(_))));
        let _ = fs::remove_dir_all(&d);
    }
}
