//! The data directory: device secret, settings and the append-only record log.
//!
//! Layout of `DIR`:
//! - `device.key`: the 32-byte device secret, hex, mode 0600 (sealed when the directory is
//!   encrypted at rest). `records.log` holds secrets too (key shares, link keys): both
//!   are sealed when the directory is encrypted, and private (0600) either way.
//! - `config.json`: settings chosen at `init` (listen address, encryption parameters).
//! - `records.log`: `AURALOG1` then entries `len: u32 LE | BLAKE3(payload)[..8] | payload`,
//!   where the payload is an encoded `aura_proto::Record` (sealed when encrypted).
//!   Appended and fsynced before the core is told `PersistDone`. A torn last entry (a
//!   crash mid-append) is cut on open; damage with more log after it is refused, since
//!   cutting there could drop acknowledged records (`aura-smol repair-log` decides).
//!   Compaction writes the live records to a new file and renames it over the log.
//! - `lock`: held with an exclusive file lock while a process uses the directory.
//! - `control.sock`: the running peer's control socket (mode 0600).
//!
//! Encryption at rest: `init` with `AURA_STORE_KEY` set seals the device secret and
//! every record with keys derived from that secret by Argon2id (salt and parameters in
//! `config.json`, with a check value so a wrong secret is told apart from damage). The
//! secret itself is never written anywhere.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aura_proto::{DeviceSecret, Record};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

/// The environment variable holding the secret of a directory encrypted at rest.
pub const KEY_ENV: &str = "AURA_STORE_KEY";

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
    /// `init` where a log with records lost its device secret.
    #[error(
        "{0}/records.log holds records but device.key is missing: put back device.key from a backup \
         (refusing to overwrite the log)"
    )]
    OrphanLog(String),
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
    /// The log is damaged before its end: cutting there could drop acknowledged records.
    #[error(
        "records.log is damaged at byte {offset} ({reason}) and {after} bytes follow; not cutting \
         them, since acknowledged records may be among them. Keep a copy of the directory, then \
         run `aura-smol repair-log` to keep only the records before byte {offset}"
    )]
    Damaged {
        /// Byte offset of the damaged entry.
        offset: u64,
        /// What is wrong with it.
        reason: &'static str,
        /// Bytes from the damaged entry to the end of the log.
        after: u64,
    },
    /// The directory is encrypted and no secret was given.
    #[error("{0} is encrypted at rest: set {KEY_ENV} to its secret")]
    KeyNeeded(String),
    /// The secret given does not open the directory.
    #[error("{KEY_ENV} does not open {0}: wrong secret")]
    WrongKey(String),
    /// A secret was given for a directory that is not encrypted.
    #[error("{KEY_ENV} is set but {0} is not encrypted at rest (only `init` can encrypt a directory); unset it")]
    NotEncrypted(String),
    /// The secret is empty.
    #[error("{KEY_ENV} is empty")]
    EmptyKey,
    /// An entry with a valid checksum does not open with the right key: it was altered.
    #[error("records.log entry at byte {0} fails authentication: the log was tampered with")]
    Tampered(u64),
    /// Compaction failed.
    #[error(transparent)]
    Compact(#[from] CompactError),
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

/// Why a compaction failed.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// Nothing changed: the old log is still the log.
    #[error("compacting records.log failed, the log is unchanged: {0}")]
    NotDone(io::Error),
    /// The new log replaced the old one but could not be opened for appending.
    #[error("records.log was compacted but cannot be reopened: {0}")]
    Broken(io::Error),
}

/// Settings written by `init`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeConfig {
    /// UDP address `run` binds.
    pub listen: SocketAddr,
    /// Encryption at rest, if `init` had a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

/// How the directory's secrets are sealed: Argon2id parameters and salt for the key, and
/// a check value of the derived key (so a wrong secret is reported as such).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Encryption {
    /// Always "argon2id+xchacha20poly1305" for now.
    pub scheme: String,
    /// Argon2 memory in KiB.
    pub m_kib: u32,
    /// Argon2 passes.
    pub t: u32,
    /// Argon2 lanes.
    pub p: u32,
    /// 16-byte salt, hex.
    pub salt: String,
    /// Keyed hash of a fixed label under the derived key, hex.
    pub check: String,
}

const SCHEME: &str = "argon2id+xchacha20poly1305";

/// The secret in [`KEY_ENV`], if set.
pub fn key_from_env() -> Result<Option<Vec<u8>>, StoreError> {
    match std::env::var_os(KEY_ENV) {
        None => Ok(None),
        Some(v) if v.is_empty() => Err(StoreError::EmptyKey),
        Some(v) => Ok(Some(v.into_encoded_bytes())),
    }
}

/// Seals and opens records and the device secret with keys derived from the store secret.
struct Sealer {
    records: XChaCha20Poly1305,
    device_key: XChaCha20Poly1305,
    audit: XChaCha20Poly1305,
}

/// Seals and opens the lines of the egress audit ledger of a directory encrypted at rest
/// (its own key, derived from the store secret like the others).
#[derive(Clone)]
pub struct LineSealer(XChaCha20Poly1305);

impl LineSealer {
    /// `nonce || ciphertext || tag` of `plain`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        Sealer::seal(&self.0, aad, plain)
    }

    /// The plaintext, if `sealed` opens under this key with `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        Sealer::open(&self.0, aad, sealed)
    }
}

/// The audit ledger's sealer for `dir` with secret `key` (reading the ledger without the
/// directory lock, while no peer runs): `None` for a directory not encrypted at rest.
pub fn audit_sealer(dir: &Path, key: Option<&[u8]>) -> Result<Option<LineSealer>, StoreError> {
    let config = read_config(dir)?;
    match (&config.encryption, key) {
        (None, None) => Ok(None),
        // As every other command: a secret for a plain directory is a mistake worth naming.
        (None, Some(_)) => Err(StoreError::NotEncrypted(dir.display().to_string())),
        (Some(_), None) => Err(StoreError::KeyNeeded(dir.display().to_string())),
        (Some(enc), Some(k)) => Ok(Some(LineSealer(Sealer::checked(enc, k, dir)?.audit))),
    }
}

fn read_config(dir: &Path) -> Result<NodeConfig, StoreError> {
    let cfg = fs::read(dir.join("config.json")).map_err(io_err("reading config.json"))?;
    serde_json::from_slice(&cfg).map_err(|e| StoreError::BadConfig(e.to_string()))
}

impl Sealer {
    /// Stretches `secret` with the parameters of `enc`; `None` if `enc` is unusable.
    fn derive(enc: &Encryption, secret: &[u8]) -> Option<([u8; 32], Sealer)> {
        if enc.scheme != SCHEME {
            return None;
        }
        let salt = unhex(&enc.salt)?;
        let params = argon2::Params::new(enc.m_kib, enc.t, enc.p, Some(32)).ok()?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut root = [0u8; 32];
        argon.hash_password_into(secret, &salt, &mut root).ok()?;
        let check = blake3::keyed_hash(&root, b"aura-smol store key check").into();
        let sub = |label: &str| XChaCha20Poly1305::new(&blake3::derive_key(label, &root).into());
        Some((
            check,
            Sealer {
                records: sub("aura-smol 2026-12 record sealing"),
                device_key: sub("aura-smol 2026-12 device key sealing"),
                audit: sub("aura-smol 2026-12 audit ledger sealing"),
            },
        ))
    }

    /// [`Sealer::derive`], with a wrong secret told apart from unusable settings.
    fn checked(enc: &Encryption, secret: &[u8], dir: &Path) -> Result<Sealer, StoreError> {
        let (check, sealer) =
            Sealer::derive(enc, secret).ok_or_else(|| StoreError::BadConfig("unusable encryption settings".into()))?;
        if Some(check.to_vec()) != unhex(&enc.check) {
            return Err(StoreError::WrongKey(dir.display().to_string()));
        }
        Ok(sealer)
    }

    fn seal(cipher: &XChaCha20Poly1305, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).expect("the OS random source is available");
        let ct = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
            .expect("sealing cannot fail for in-memory sizes");
        [&nonce[..], &ct].concat()
    }

    fn open(cipher: &XChaCha20Poly1305, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 24 {
            return None;
        }
        let (nonce, ct) = sealed.split_at(24);
        cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad }).ok()
    }
}

const RECORD_AAD: &[u8] = b"aura-smol record v1";
const DEVICE_KEY_AAD: &[u8] = b"aura-smol device key v1";
const SEALED_PREFIX: &str = "sealed:";

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
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
    sealer: Option<Sealer>,
    /// Records in the log (read at open and appended since): the next one's position.
    count: u64,
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

/// Whether damage found at `at` in the log body may be cut as a torn last append: no
/// whole, checksummed entry starts anywhere after it (a crash tears only the entry being
/// appended, the last one), or nothing but zeros follows (a file extended by a crash before
/// its data landed). A damaged length field in the middle of the log, which makes an entry
/// seem to run past the end, is therefore refused like any other damage.
fn torn_tail(body: &[u8], at: usize) -> bool {
    let rest = &body[at..];
    if rest.iter().all(|b| *b == 0) {
        return true;
    }
    !(at + 1..body.len()).any(|p| entry_at(&body[p..]))
}

/// Whether a whole entry with a matching checksum starts at the beginning of `bytes`.
fn entry_at(bytes: &[u8]) -> bool {
    if bytes.len() < ENTRY_HEADER {
        return false;
    }
    let len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    len <= MAX_RECORD
        && bytes.len() >= ENTRY_HEADER + len
        && checksum(&bytes[ENTRY_HEADER..ENTRY_HEADER + len]) == bytes[4..ENTRY_HEADER]
}

/// The records in `payloads` (opened with `sealer` when the log is encrypted).
fn decode_entries(payloads: &[&[u8]], sealer: Option<&Sealer>) -> Result<Vec<Record>, StoreError> {
    let mut records = Vec::with_capacity(payloads.len());
    let mut offset = LOG_MAGIC.len() as u64;
    for p in payloads {
        let aad = record_aad(records.len() as u64);
        let plain = match sealer {
            Some(s) => Sealer::open(&s.records, &aad, p).ok_or(StoreError::Tampered(offset))?,
            None => p.to_vec(),
        };
        let r = Record::decode(&plain).map_err(|e| StoreError::UnreadableRecord {
            offset,
            detail: format!("{e:?}"),
        })?;
        records.push(r);
        offset += (ENTRY_HEADER + p.len()) as u64;
    }
    Ok(records)
}

/// The associated data a sealed record is bound to: its position in the log, so entries
/// cannot be dropped from the middle or reordered without the next open noticing.
fn record_aad(index: u64) -> Vec<u8> {
    [RECORD_AAD, &index.to_le_bytes()[..]].concat()
}

impl Store {
    /// Creates the directory; with `key`, everything secret in it is sealed at rest.
    pub fn init(dir: &Path, listen: SocketAddr, key: Option<&[u8]>) -> Result<DeviceSecret, StoreError> {
        let d = dir.display().to_string();
        if dir.join("device.key").exists() {
            return Err(StoreError::AlreadyInitialized(d));
        }
        fs::create_dir_all(dir).map_err(io_err(format!("creating {d}")))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err("restricting directory"))?;
        // Without device.key no earlier init completed (it is written last), so nothing was
        // ever recorded here: leftovers of an interrupted init go. A log with records in it
        // is not such a leftover (its device.key was lost or moved): never overwrite it.
        let log_len = fs::metadata(dir.join("records.log")).map_or(0, |m| m.len());
        if log_len > LOG_MAGIC.len() as u64 {
            return Err(StoreError::OrphanLog(d));
        }
        for leftover in ["config.json", "records.log"] {
            match fs::remove_file(dir.join(leftover)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err(format!("removing {leftover} of an interrupted init"))(e))
                }
                _ => {}
            }
        }
        let secret = DeviceSecret::from_bytes(os_random());
        let mut config = NodeConfig {
            listen,
            encryption: None,
        };
        let mut key_file = format!("{}\n", hex(&secret.to_bytes()));
        if let Some(k) = key {
            let salt: [u8; 16] = os_random()[..16].try_into().expect("16 bytes");
            // Argon2's recommended minimum for interactive use (19 MiB, 2 passes).
            let mut enc = Encryption {
                scheme: SCHEME.into(),
                m_kib: 19 * 1024,
                t: 2,
                p: 1,
                salt: hex(&salt),
                check: String::new(),
            };
            let (check, sealer) = Sealer::derive(&enc, k).expect("valid parameters");
            enc.check = hex(&check);
            config.encryption = Some(enc);
            let sealed = Sealer::seal(&sealer.device_key, DEVICE_KEY_AAD, &secret.to_bytes());
            key_file = format!("{SEALED_PREFIX}{}\n", hex(&sealed));
        }
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
        let cfg = serde_json::to_vec_pretty(&config).expect("config serializes");
        write_new("config.json", &cfg, 0o600)?;
        write_new("records.log", LOG_MAGIC, 0o600)?;
        // The key goes last: its presence marks a complete init.
        write_new("device.key", key_file.as_bytes(), 0o600)?;
        sync_dir(dir).map_err(io_err("syncing data directory"))?;
        Ok(secret)
    }

    /// Opens and locks `dir` with the secret in [`KEY_ENV`] (if any). Cuts a torn last
    /// entry; refuses damage anywhere else.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(dir, key_from_env()?.as_deref(), false)
    }

    /// [`Store::open`] with an explicit secret; with `repair`, damage anywhere is cut
    /// too, after the whole log is copied to `records.log.damaged`.
    pub fn open_with(dir: &Path, key: Option<&[u8]>, repair: bool) -> Result<Store, StoreError> {
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
        let config = read_config(dir)?;
        let sealer = match (&config.encryption, key) {
            (None, None) => None,
            (None, Some(_)) => return Err(StoreError::NotEncrypted(d)),
            (Some(_), None) => return Err(StoreError::KeyNeeded(d)),
            (Some(enc), Some(k)) => Some(Sealer::checked(enc, k, dir)?),
        };
        let key = fs::read_to_string(&key_path).map_err(io_err("reading device.key"))?;
        let key = key.trim();
        let bytes = match (&sealer, key.strip_prefix(SEALED_PREFIX)) {
            (Some(s), Some(sealed)) => unhex(sealed)
                .and_then(|b| Sealer::open(&s.device_key, DEVICE_KEY_AAD, &b))
                .ok_or_else(|| StoreError::BadSecret("the sealed secret does not open".into()))?,
            (None, None) => unhex(key).ok_or_else(|| StoreError::BadSecret("not hex".into()))?,
            _ => return Err(StoreError::BadSecret("sealed or not, unlike config.json says".into())),
        };
        let secret: [u8; 32] = bytes
            .try_into()
            .map_err(|_| StoreError::BadSecret("not 32 bytes".into()))?;

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
        if let Some((at, reason)) = cut {
            if !repair && !torn_tail(body, at) {
                return Err(StoreError::Damaged {
                    offset: (LOG_MAGIC.len() + at) as u64,
                    reason,
                    after: (body.len() - at) as u64,
                });
            }
        }
        let records = decode_entries(&payloads, sealer.as_ref())?;
        let mut recovery = Recovery::default();
        if let Some((at, reason)) = cut {
            let at = (LOG_MAGIC.len() + at) as u64;
            recovery = Recovery {
                cut_bytes: all.len() as u64 - at,
                cut_at: at,
                reason: Some(reason),
            };
            if repair {
                // Kept whole, private, and on disk before anything is cut.
                let copy = dir.join("records.log.damaged");
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&copy)
                    .map_err(io_err("saving records.log.damaged (move an older copy away first)"))?;
                f.write_all(&all).map_err(io_err("writing records.log.damaged"))?;
                f.sync_all().map_err(io_err("syncing records.log.damaged"))?;
                sync_dir(dir).map_err(io_err("syncing data directory"))?;
            }
            log.set_len(at).map_err(io_err("cutting torn tail of records.log"))?;
            log.sync_all().map_err(io_err("syncing records.log"))?;
        }
        log.seek(SeekFrom::End(0)).map_err(io_err("seeking records.log"))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            log,
            _lock: lock,
            sealer,
            count: records.len() as u64,
            secret: DeviceSecret::from_bytes(secret),
            config,
            records,
            recovery,
        })
    }

    /// The log entry for `record` at position `index`.
    fn entry(&self, record: &Record, index: u64) -> Vec<u8> {
        let plain = record.encode();
        match &self.sealer {
            Some(s) => encode_entry(&Sealer::seal(&s.records, &record_aad(index), &plain)),
            None => encode_entry(&plain),
        }
    }

    /// Rewrites the log with only the records a restore needs
    /// (`aura_proto::record::compact`), if that drops at least `min_drop` of them:
    /// written to a new file, synced, then renamed over the log, so a crash at any point
    /// leaves either the old log or the new one whole. Returns (records before, after).
    ///
    /// Only before the first append (the records read at open are the whole log). An
    /// error before the rename leaves the log as it was ([`CompactError::NotDone`]);
    /// after it, the store cannot go on ([`CompactError::Broken`]).
    ///
    /// With `keys` (from a peer restored from these records), shares a refresh replaced
    /// are rewritten to the one in use whatever `min_drop` says: an old share left on disk
    /// would undo what the refresh was for.
    pub fn compact(
        &mut self,
        min_drop: usize,
        keys: Option<&aura_proto::record::LiveKeys>,
    ) -> Result<Option<(usize, usize)>, CompactError> {
        if self.count != self.records.len() as u64 {
            return Ok(None);
        }
        let live = aura_proto::record::compact_with(&self.records, keys);
        let (before, after) = (self.records.len(), live.len());
        let shares =
            |rs: &[Record]| -> Vec<Vec<u8>> { rs.iter().filter_map(|r| r.key_package().map(<[u8]>::to_vec)).collect() };
        let old_shares_go = shares(&live) != shares(&self.records);
        if before - after < min_drop.max(1) && !old_shares_go {
            return Ok(None);
        }
        let tmp = self.dir.join("records.log.compact");
        let mut bytes = LOG_MAGIC.to_vec();
        for (i, r) in live.iter().enumerate() {
            bytes.extend_from_slice(&self.entry(r, i as u64));
        }
        let written = (|| -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        })();
        let path = self.dir.join("records.log");
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, &path)) {
            let _ = fs::remove_file(&tmp);
            return Err(CompactError::NotDone(e));
        }
        // From here the new log is in place: the store must reach it or stop.
        let reopened = (|| -> io::Result<File> {
            sync_dir(&self.dir)?;
            let mut log = OpenOptions::new().read(true).write(true).open(&path)?;
            log.seek(SeekFrom::End(0))?;
            Ok(log)
        })();
        self.log = reopened.map_err(CompactError::Broken)?;
        self.count = live.len() as u64;
        self.records = live;
        Ok(Some((before, after)))
    }

    /// Reads the whole log again, records appended since the open included, so that
    /// [`Store::compact`] can run on a store in use. Only this process writes the log
    /// (the directory is locked), so what it reads is what it wrote.
    pub fn reread(&mut self) -> Result<(), StoreError> {
        let mut all = Vec::new();
        self.log
            .seek(SeekFrom::Start(0))
            .map_err(io_err("seeking records.log"))?;
        let read = self.log.read_to_end(&mut all).map_err(io_err("reading records.log"));
        self.log.seek(SeekFrom::End(0)).map_err(io_err("seeking records.log"))?;
        read?;
        if all.len() < LOG_MAGIC.len() || &all[..LOG_MAGIC.len()] != LOG_MAGIC {
            return Err(StoreError::BadLogHeader);
        }
        let body = &all[LOG_MAGIC.len()..];
        let (payloads, cut) = scan_entries(body);
        if let Some((at, reason)) = cut {
            return Err(StoreError::Damaged {
                offset: (LOG_MAGIC.len() + at) as u64,
                reason,
                after: (body.len() - at) as u64,
            });
        }
        self.records = decode_entries(&payloads, self.sealer.as_ref())?;
        self.count = self.records.len() as u64;
        Ok(())
    }

    /// Appends a record and waits until it is on disk.
    pub fn append(&mut self, record: &Record) -> io::Result<()> {
        let entry = self.entry(record, self.count);
        self.log.write_all(&entry)?;
        self.log.sync_data()?;
        self.count += 1;
        Ok(())
    }

    /// The audit ledger's sealer, when the directory is encrypted at rest.
    pub fn audit_sealer(&self) -> Option<LineSealer> {
        self.sealer.as_ref().map(|s| LineSealer(s.audit.clone()))
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

    const LISTEN: &str = "127.0.0.1:1";

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
        let secret = Store::init(&d, LISTEN.parse().unwrap(), None).unwrap();
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
        let mut s = Store::open(&d).unwrap();
        assert_eq!(s.records, vec![sample(1), sample(2)]);
        assert_eq!(s.recovery.reason, Some("checksum mismatch"));
        // A file extended by a crash before its data landed: zeros after the last entry.
        s.append(&sample(5)).unwrap();
        drop(s);
        let mut bytes = fs::read(&log).unwrap();
        bytes.extend_from_slice(&[0; 40]);
        fs::write(&log, &bytes).unwrap();
        let s = Store::open(&d).unwrap();
        assert_eq!(s.records, vec![sample(1), sample(2), sample(5)]);
        assert_eq!(s.recovery.cut_bytes, 40);
        drop(s);
        // Damage before the end is refused, not cut: later records may be acknowledged.
        let clean = fs::read(&log).unwrap();
        let mut bytes = clean.clone();
        bytes[LOG_MAGIC.len() + ENTRY_HEADER + 3] ^= 0x01;
        fs::write(&log, &bytes).unwrap();
        match Store::open(&d) {
            Err(StoreError::Damaged { offset, reason, after }) => {
                assert_eq!((offset, reason), (LOG_MAGIC.len() as u64, "checksum mismatch"));
                assert_eq!(after, (clean.len() - LOG_MAGIC.len()) as u64);
            }
            other => panic!(
                "damage in the middle must be refused, got {:?}",
                other.map(|s| s.records)
            ),
        }
        assert_eq!(fs::read(&log).unwrap(), bytes, "a refused log is left as it was");
        // A damaged length that makes the first entry seem to run past the end is damage
        // too, not a torn tail: whole entries follow it.
        let mut bytes = clean.clone();
        bytes[LOG_MAGIC.len()..LOG_MAGIC.len() + 4].copy_from_slice(&((clean.len() as u32) + 50).to_le_bytes());
        fs::write(&log, &bytes).unwrap();
        assert!(matches!(
            Store::open(&d),
            Err(StoreError::Damaged {
                reason: "torn entry body",
                ..
            })
        ));
        let mut bytes = clean.clone();
        bytes[LOG_MAGIC.len() + ENTRY_HEADER + 3] ^= 0x01;
        fs::write(&log, &bytes).unwrap();
        // The operator's repair keeps what precedes the damage and a copy of everything.
        let s = Store::open_with(&d, None, true).unwrap();
        assert!(s.records.is_empty());
        assert_eq!(fs::read(d.join("records.log.damaged")).unwrap(), bytes);
        drop(s);
        // Not an Aura log at all: refuse rather than destroy.
        fs::write(&log, b"something else entirely").unwrap();
        assert!(matches!(Store::open(&d), Err(StoreError::BadLogHeader)));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn init_refuses_to_overwrite_and_protects_the_secret() {
        let d = tmp("init");
        Store::init(&d, LISTEN.parse().unwrap(), None).unwrap();
        assert!(matches!(
            Store::init(&d, LISTEN.parse().unwrap(), None),
            Err(StoreError::AlreadyInitialized(_))
        ));
        // An init interrupted before device.key was written can be run again.
        let again = tmp("init-again");
        Store::init(&again, LISTEN.parse().unwrap(), None).unwrap();
        fs::remove_file(again.join("device.key")).unwrap();
        Store::init(&again, LISTEN.parse().unwrap(), None).unwrap();
        Store::open(&again).unwrap().append(&sample(1)).unwrap();
        // But a log with records whose key went missing is never overwritten.
        fs::remove_file(again.join("device.key")).unwrap();
        assert!(matches!(
            Store::init(&again, LISTEN.parse().unwrap(), None),
            Err(StoreError::OrphanLog(_))
        ));
        assert!(fs::metadata(again.join("records.log")).unwrap().len() > 8);
        let _ = fs::remove_dir_all(&again);
        let mode = fs::metadata(d.join("device.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::write(d.join("device.key"), "zz\n").unwrap();
        assert!(matches!(Store::open(&d), Err(StoreError::BadSecret(_))));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn encrypted_directories_need_their_secret_and_hide_their_records() {
        let d = tmp("enc");
        let key = b"correct horse battery staple, but longer and random".as_slice();
        let secret = Store::init(&d, LISTEN.parse().unwrap(), Some(key)).unwrap();
        {
            let mut s = Store::open_with(&d, Some(key), false).unwrap();
            assert_eq!(s.secret, secret);
            for n in 1..=3 {
                s.append(&sample(n)).unwrap();
            }
        }
        let s = Store::open_with(&d, Some(key), false).unwrap();
        assert_eq!(s.records, vec![sample(1), sample(2), sample(3)]);
        drop(s);
        // Neither the device secret nor record contents are readable on disk.
        let on_disk = [
            fs::read(d.join("device.key")).unwrap(),
            fs::read(d.join("records.log")).unwrap(),
            fs::read(d.join("config.json")).unwrap(),
        ]
        .concat();
        let find = |needle: &[u8]| on_disk.windows(needle.len()).any(|w| w == needle);
        assert!(!find(hex(&secret.to_bytes()).as_bytes()) && !find(&secret.to_bytes()));
        assert!(!find(b"127.0.0.1:2") && !find(&[2u8; 32]));
        assert!(!find(key));
        // Missing, wrong, or unexpected secrets are told apart.
        assert!(matches!(
            Store::open_with(&d, None, false),
            Err(StoreError::KeyNeeded(_))
        ));
        assert!(matches!(
            Store::open_with(&d, Some(b"not it"), false),
            Err(StoreError::WrongKey(_))
        ));
        let plain = tmp("plain");
        Store::init(&plain, LISTEN.parse().unwrap(), None).unwrap();
        assert!(matches!(
            Store::open_with(&plain, Some(key), false),
            Err(StoreError::NotEncrypted(_))
        ));
        // An entry altered with a matching checksum is caught by its seal.
        let log = d.join("records.log");
        let mut bytes = fs::read(&log).unwrap();
        let at = LOG_MAGIC.len();
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        bytes[at + ENTRY_HEADER + 30] ^= 1;
        let sum = checksum(&bytes[at + ENTRY_HEADER..at + ENTRY_HEADER + len]);
        bytes[at + 4..at + ENTRY_HEADER].copy_from_slice(&sum);
        fs::write(&log, &bytes).unwrap();
        assert!(matches!(
            Store::open_with(&d, Some(key), false),
            Err(StoreError::Tampered(8))
        ));
        // Nor can a whole entry be dropped from the middle: records are bound to their
        // positions.
        let original = fs::read(&log).unwrap();
        bytes = original.clone();
        let first = ENTRY_HEADER + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        bytes.drain(at..at + first);
        fs::write(&log, &bytes).unwrap();
        assert!(matches!(
            Store::open_with(&d, Some(key), false),
            Err(StoreError::Tampered(8))
        ));
        let _ = fs::remove_dir_all(&d);
        let _ = fs::remove_dir_all(&plain);
    }

    #[test]
    fn compaction_keeps_every_live_record_and_survives_reopen() {
        for key in [None, Some(b"a store secret".as_slice())] {
            let d = tmp("compact");
            Store::init(&d, LISTEN.parse().unwrap(), key).unwrap();
            let mut s = Store::open_with(&d, key, false).unwrap();
            let mut all = Vec::new();
            for n in 0..40u8 {
                let r = match n % 4 {
                    0 => sample(n),
                    _ => Record::NonceCounter(u64::from(n) * 10),
                };
                s.append(&r).unwrap();
                all.push(r);
            }
            drop(s);
            let mut s = Store::open_with(&d, key, false).unwrap();
            let size = fs::metadata(d.join("records.log")).unwrap().len();
            assert_eq!(
                s.compact(1000, None).unwrap(),
                None,
                "below the threshold nothing changes"
            );
            assert_eq!(s.compact(1, None).unwrap(), Some((40, 11)));
            let live = aura_proto::record::compact(&all);
            assert_eq!(s.records, live);
            // Appends go on after the rewrite, and a reopen reads both.
            s.append(&sample(99)).unwrap();
            // After an append the records read at open are not the whole log any more,
            // until it is read again.
            assert_eq!(s.compact(1, None).unwrap(), None);
            s.append(&Record::NonceCounter(1)).unwrap();
            s.reread().unwrap();
            assert_eq!(s.records.len(), live.len() + 2);
            assert_eq!(s.compact(1, None).unwrap(), Some((live.len() + 2, live.len() + 1)));
            let live = s.records.clone();
            drop(s);
            let s = Store::open_with(&d, key, false).unwrap();
            assert_eq!(s.records, live);
            assert!(s.records.contains(&sample(99)) && s.records.contains(&Record::NonceCounter(390)));
            assert_eq!(s.recovery, Recovery::default());
            assert!(fs::metadata(d.join("records.log")).unwrap().len() < size);
            assert!(!d.join("records.log.compact").exists());
            drop(s);
            let _ = fs::remove_dir_all(&d);
        }
    }
}
