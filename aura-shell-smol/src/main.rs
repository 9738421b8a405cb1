//! `aura-smol`: an Aura peer on UDP with durable storage.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use aura_proto::{Command, Config, Event, Input};
use aura_shell_smol::audit;
use aura_shell_smol::control::{AuthorityInfo, ContextInfo, Request, Status, WrittenInfo};
use aura_shell_smol::daemon::{self, DaemonError};
use aura_shell_smol::host::{Effect, Host};
use aura_shell_smol::store::{Store, StoreError};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

/// Exit codes (also listed in the README).
mod exit {
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const DATA_DIR: u8 = 3;
    pub const NOT_RUNNING: u8 = 4;
}

#[derive(Parser)]
#[command(
    name = "aura-smol",
    version,
    about = "An Aura peer: pairs devices with invitation codes and talks to them over Noise channels on UDP.",
    after_help = "Typical first use:\n  aura-smol -d ./a init --listen 127.0.0.1:4100\n  aura-smol -d ./a run &\n  aura-smol -d ./a invite            # prints a code\n  aura-smol -d ./b init --listen 127.0.0.1:4200\n  aura-smol -d ./b run &\n  aura-smol -d ./b join AURA1-...    # pairs with a\n  aura-smol -d ./b ping <device id prefix>\n\nExit codes: 0 ok, 1 operation failed, 2 usage error, 3 data directory problem, 4 no running peer."
)]
struct Cli {
    /// Data directory holding the device secret and record log.
    #[arg(short = 'd', long, env = "AURA_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Log level for stderr: error, warn, info, debug or trace.
    #[arg(long, global = true, value_parser = ["error", "warn", "info", "debug", "trace"])]
    log_level: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new device: secret (mode 0600), settings and an empty record log.
    ///
    /// With AURA_STORE_KEY set, the directory is encrypted at rest: the device secret and
    /// every record are sealed with keys derived from that secret (Argon2id), which is
    /// never written down. Every later command that opens the directory needs the same
    /// AURA_STORE_KEY. Use a long random secret; losing it loses the device.
    Init {
        /// UDP address `run` will listen on.
        #[arg(long, default_value = "0.0.0.0:4100")]
        listen: SocketAddr,
    },
    /// Print this device's id.
    Id,
    /// Create an invitation code for another device to join with.
    ///
    /// Talks to the running peer if there is one; otherwise records the invitation so the
    /// next `run` honours it.
    Invite(InviteArgs),
    /// Pair with the device that created CODE.
    ///
    /// With a running peer, waits until pairing completes or fails. Without one, records
    /// the join; the next `run` carries it out.
    Join {
        /// The invitation code (AURA1-...).
        code: String,
        /// How long to wait for pairing, in seconds.
        #[arg(long, default_value_t = 120)]
        wait_s: u64,
        /// Print the answer as one JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Run the peer in the foreground until `aura-smol stop`.
    Run {
        /// Listen on this address instead of the configured one.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Send keepalives every N seconds so channels stay up while idle (0: off).
        #[arg(long, default_value_t = 15)]
        keepalive_s: u64,
        /// Send every message from a paired device straight back to it (the other end
        /// of `bench-echo`).
        #[arg(long)]
        echo: bool,
    },
    /// Show this device, paired devices and channels (peer, address, state, version).
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Every channel in full: peer id, address, negotiated version, context epoch and
        /// whether the path is direct or relayed.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Measure the round trip to a paired device (needs a running peer).
    Ping {
        /// Device id or a unique prefix of it.
        peer: String,
        /// Number of pings.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Seconds to wait for each answer.
        #[arg(long, default_value_t = 10)]
        timeout_s: u64,
        /// Print the answer as one JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Threshold authority of this device's paired devices.
    #[command(subcommand)]
    Authority(AuthorityCmd),
    /// The authority's devices (needs a running peer).
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Have the authority sign TEXT; prints the signature, group key and signed bytes in hex.
    ///
    /// The signature is a plain FROST(ristretto255) signature: it verifies with any standard
    /// verifier over the printed message bytes and group key.
    Sign {
        /// The statement to sign.
        text: String,
        /// Seconds to wait for enough devices (the peer itself gives up after 60 s and
        /// says why; the default waits for that answer).
        #[arg(long, default_value_t = 75)]
        timeout_s: u64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Relational contexts with another person's authority (needs a running peer).
    #[command(subcommand)]
    Context(ContextCmd),
    /// Reconcile journals now (needs a running peer) and report each session.
    ///
    /// Without --peer: every journal shared with each of this person's devices, and each
    /// context with one device of the other authority (those sessions are charged to the
    /// context's flow budget). The peer also syncs on its own every 30 s with its own
    /// devices and every 10 min across each context. Exits 1 if any session failed.
    Sync {
        /// Only with this device (id or unique prefix: an own device or a context member).
        #[arg(long)]
        peer: Option<String>,
        /// Seconds to wait for the sessions to finish.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Write TEXT as a note into this device's authority journal (or a context's) and
    /// spread it to the other member devices; prints the note's fact id.
    ///
    /// Follow how far it got with `aura-smol propagation`.
    Note {
        /// The text (at most 4096 bytes).
        text: String,
        /// Write into this context (id or unique prefix) instead of the authority journal.
        #[arg(long)]
        context: Option<String>,
        /// Ask every other member device to confirm receipt (shown by `propagation`).
        #[arg(long)]
        ack: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Facts this device wrote and how far each has spread: local (no other member known
    /// to hold it), syncing (some), complete (all), failed (the last attempt gave up;
    /// anti-entropy retries), with confirmations for notes that asked for them.
    Propagation {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show the egress audit ledger: every datagram that left this device, with time,
    /// peer, address, context, size bucket, flow cost and leakage charged (never content).
    ///
    /// Asks the running peer for its ledger; with no peer running, reads DIR/audit.log.
    Audit {
        /// Only datagrams sent within this long before now (e.g. 10m, 2h, 1d).
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send a text message to one of your paired devices (needs a running peer; the
    /// receiving peer logs it, or echoes it back when run with --echo).
    Send {
        /// Device id or unique prefix.
        peer: String,
        /// The text.
        text: String,
        /// Print the answer as one JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Measure messages per second and round trips to a paired device running
    /// `run --echo`: COUNT messages of SIZE bytes, at most WINDOW awaiting their echo.
    BenchEcho {
        /// Device id or unique prefix.
        peer: String,
        /// Messages to send.
        #[arg(long, default_value_t = 2000)]
        count: u64,
        /// Bytes per message.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Messages in flight at most.
        #[arg(long, default_value_t = 16)]
        window: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Stop the running peer.
    Stop,
    /// Rewrite records.log with only the records a restart needs (the peer must be
    /// stopped; `run` also does this by itself when it would drop many).
    Compact,
    /// Cut records.log at its first damaged entry, dropping everything after it (a copy
    /// of the whole log is kept as records.log.damaged). Only for a log `run` refuses as
    /// damaged; records after the damage are lost unless other devices hold them.
    RepairLog {
        /// Confirms that records after the damage may be lost.
        #[arg(long)]
        yes: bool,
    },
}

/// Options of an invitation code.
#[derive(clap::Args)]
struct InviteArgs {
    /// How long the code stays valid (e.g. 30m, 1h, 2d).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    valid_for: Duration,
    /// Address the joiner should contact (default: the listen address).
    #[arg(long)]
    addr: Option<String>,
    /// Print the answer as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ContextCmd {
    /// Create a context invitation code for a device of another person's authority.
    ///
    /// Whoever redeems it creates a relational context between the two authorities; each
    /// grants the other the rights send, sync and member with a flow budget of 1000 units
    /// (256 padded bytes each) per epoch.
    Invite(InviteArgs),
    /// Redeem a context invitation and wait until the context is ready on this device.
    Join {
        /// The invitation code (AURA1-...).
        code: String,
        /// How long to wait, in seconds.
        #[arg(long, default_value_t = 60)]
        wait_s: u64,
        /// Print the answer as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List ready contexts: id, epoch, authorities and member devices.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Send TEXT in a context to a device of the other authority (through the guard
    /// chain: a send the budget does not allow leaves nothing, see `aura-smol audit`).
    Send {
        /// Context id or a unique prefix of it.
        context: String,
        /// Device id or a unique prefix of it.
        peer: String,
        /// The text to send.
        text: String,
        /// Print the answer as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Give a context a new epoch: this device's authority agrees (by consensus) on a
    /// new secret, sealed to every member device, and lists its current devices. Flow
    /// budgets start again. Happens by itself after a device is added or removed. Waits
    /// until this device moved to the new epoch.
    Rekey {
        /// Context id or a unique prefix of it.
        context: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
        /// Print the answer as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AuthorityCmd {
    /// Create an authority with paired devices by distributed key generation (needs a
    /// running peer, and the other devices running too).
    Create {
        /// Signatures needed (2 <= T <= devices).
        #[arg(long)]
        threshold: u16,
        /// Devices to include (ids or unique prefixes, comma-separated); default: all paired.
        #[arg(long, value_delimiter = ',')]
        devices: Vec<String>,
        /// Seconds to wait for key generation.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
        /// Print the answer as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Show the authority: id, group key, threshold, members.
    Show {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Change how many members must agree and sign, by consensus among the members (a
    /// majority of them must vote); waits until the change applies.
    ///
    /// Raising it keeps the key; lowering it below the key's own threshold (the one the
    /// authority was created with) is refused, since that needs a new key.
    Threshold {
        /// The new threshold (2 <= T <= members).
        threshold: u16,
        /// Seconds to wait.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
        /// Print the answer as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Refresh the key shares among the current members (the group key stays): a removed
    /// device's old share stops being a share. Happens by itself after `device remove`;
    /// needs every member running. Waits until the members switched.
    Refresh {
        /// Seconds to wait.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
        /// Print the answer as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DeviceCmd {
    /// Add a device to the authority: the members agree by consensus, then a threshold
    /// of them give the device a share of the existing key (the group key and authority
    /// id stay). Pair with the device first (`aura-smol invite` here, `aura-smol join
    /// CODE` there; both running). Waits until the device holds its share.
    Add {
        /// Device id or a unique prefix of it (a paired device, not yet a member).
        device: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
        /// Print the answer as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Remove a device (lost or revoked) from the authority, by consensus among the
    /// members; waits until the change applies.
    Remove {
        /// Device id or a unique prefix of it (a member).
        device: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
        /// Print the answer as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Parses `90s`, `30m`, `2h`, `7d` or a plain number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 30m, 2h or 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use s, m, h or d")),
    };
    if n == 0 {
        return Err("a duration must be greater than zero".into());
    }
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

struct Failure {
    code: u8,
    msg: String,
}

fn fail(code: u8, msg: impl std::fmt::Display) -> Failure {
    Failure {
        code,
        msg: msg.to_string(),
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        fail(exit::DATA_DIR, e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.cmd, Cmd::Run { .. }) {
        "info"
    } else {
        "warn"
    };
    let level: tracing::Level = cli
        .log_level
        .as_deref()
        .unwrap_or(default_level)
        .parse()
        .expect("checked by clap");
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    let dir = match cli
        .data_dir
        .clone()
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aura")))
    {
        Some(d) => d,
        None => {
            eprintln!("error: no data directory: pass --data-dir or set AURA_DATA_DIR");
            return ExitCode::from(2);
        }
    };
    match dispatch(&dir, cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.msg);
            ExitCode::from(f.code)
        }
    }
}

/// Asks the daemon; `Ok(None)` if none runs.
fn ask(dir: &Path, req: &Request, timeout: Duration) -> Result<Option<Value>, Failure> {
    match daemon::request(dir, req, timeout) {
        Ok(v) => Ok(v),
        Err(e) => Err(fail(exit::FAILED, format!("talking to the running peer: {e}"))),
    }
}

/// A successful daemon reply, or its error as a failure.
fn ok(v: Value) -> Result<Value, Failure> {
    if v["ok"] == Value::Bool(true) {
        Ok(v)
    } else {
        Err(fail(exit::FAILED, v["error"].as_str().unwrap_or("unknown error")))
    }
}

/// Opens the directory without a daemon, applies `cmd`, and drains (datagrams are not
/// sent: the next `run` resumes whatever needed the network).
fn offline(dir: &Path, cmd: Option<Command>) -> Result<(Host, Vec<Event>), Failure> {
    let mut host = Host::open_offline(dir, Config::default())?;
    if let Some(cmd) = cmd {
        host.input(Input::Command(cmd)).map_err(|e| fail(exit::FAILED, e))?;
    }
    let mut effects = Vec::new();
    host.drain(&mut effects)
        .map_err(|e| fail(exit::DATA_DIR, format!("writing records.log: {e}")))?;
    let events = effects
        .into_iter()
        .filter_map(|e| match e {
            Effect::Event(ev) => Some(ev),
            Effect::Transmit { .. } => None,
        })
        .collect();
    Ok((host, events))
}

/// The first 16 characters of an id (all of a shorter string).
fn short(id: &str) -> &str {
    id.get(..16).unwrap_or(id)
}

/// The peer's answer as one JSON line (`--json`), or else the human text.
fn emit(json: bool, v: &Value, human: impl FnOnce(&Value)) {
    if json {
        println!("{}", serde_json::to_string(v).expect("a JSON value serializes"));
    } else {
        human(v);
    }
}

fn dispatch(dir: &Path, cmd: Cmd) -> Result<(), Failure> {
    let quick = Duration::from_secs(10);
    match cmd {
        Cmd::Init { listen } => {
            let key = aura_shell_smol::store::key_from_env()?;
            Store::init(dir, listen, key.as_deref())?;
            let (host, _) = offline(dir, None)?;
            println!("initialized device {} in {}", host.peer.id(), dir.display());
            if key.is_some() {
                println!(
                    "encrypted at rest: every command on this directory needs the same {}",
                    aura_shell_smol::store::KEY_ENV
                );
            }
            println!(
                "device secret stored in {} (mode 0600): back it up, never share it",
                dir.join("device.key").display()
            );
            Ok(())
        }
        Cmd::Id => {
            let id = match ask(dir, &Request::Status, quick)? {
                Some(v) => ok(v)?["status"]["device"].as_str().unwrap_or_default().to_owned(),
                None => offline(dir, None)?.0.peer.id().to_hex(),
            };
            println!("{id}");
            Ok(())
        }
        Cmd::Invite(InviteArgs { valid_for, addr, json }) => {
            let req = Request::Invite {
                valid_for_s: valid_for.as_secs(),
                addr: addr.clone(),
            };
            let (code, answer) = match ask(dir, &req, quick)? {
                Some(v) => {
                    let v = ok(v)?;
                    (v["code"].as_str().unwrap_or_default().to_owned(), Some(v))
                }
                None => {
                    let store_cfg = Store::open(dir)?.config;
                    let addr_hint = addr.unwrap_or_else(|| store_cfg.listen.to_string());
                    let (_, events) = offline(dir, Some(Command::CreateInvite { valid_for, addr_hint }))?;
                    events
                        .into_iter()
                        .find_map(|e| match e {
                            Event::InviteCreated { code, .. } => Some(code),
                            _ => None,
                        })
                        .ok_or_else(|| fail(exit::FAILED, "no invitation was created"))
                        .map(|code| (code, None))?
                }
            };
            let answer = answer.unwrap_or_else(|| json!({ "ok": true, "code": code }));
            emit(json, &answer, |_| println!("{code}"));
            Ok(())
        }
        Cmd::Join { code, wait_s, json } => {
            let req = Request::Join { code: code.clone() };
            match ask(dir, &req, Duration::from_secs(wait_s))? {
                Some(v) => emit(json, &ok(v)?, |v| {
                    println!(
                        "paired with {} at {}",
                        v["peer"].as_str().unwrap_or("?"),
                        v["addr"].as_str().unwrap_or("?")
                    )
                }),
                None => {
                    offline(dir, Some(Command::Join { code }))?;
                    emit(json, &json!({ "ok": true, "paired": false, "recorded": true }), |_| {
                        println!("join recorded; start `aura-smol run` to contact the inviter and finish pairing")
                    });
                }
            }
            Ok(())
        }
        Cmd::Run {
            listen,
            keepalive_s,
            echo,
        } => {
            let cfg = Config {
                persistent_keepalive: (keepalive_s > 0).then(|| Duration::from_secs(keepalive_s)),
                ..Config::default()
            };
            daemon::run(dir, listen, cfg, daemon::RunOptions { echo }).map_err(|e| match e {
                DaemonError::Store(s) => Failure::from(s),
                e => fail(exit::FAILED, e),
            })
        }
        Cmd::Status { json, verbose } => {
            let status: Status = match ask(dir, &Request::Status, quick)? {
                Some(v) => serde_json::from_value(ok(v)?["status"].clone()).map_err(|e| fail(exit::FAILED, e))?,
                None => {
                    let (host, _) = offline(dir, None)?;
                    Status::of(&host.peer, host.store.config.listen.to_string(), false)
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&status).expect("status serializes"));
            } else {
                print_status(&status, verbose);
            }
            Ok(())
        }
        Cmd::Ping {
            peer,
            count,
            timeout_s,
            json,
        } => {
            for i in 0..count {
                let req = Request::Ping { peer: peer.clone() };
                let v = ask(dir, &req, Duration::from_secs(timeout_s))?
                    .ok_or_else(|| fail(exit::NOT_RUNNING, "no running peer: start `aura-smol run` first"))?;
                let mut v = ok(v)?;
                v["seq"] = json!(i);
                emit(json, &v, |v| {
                    let rtt = v["rtt_us"].as_u64().unwrap_or(0);
                    println!(
                        "pong from {}: seq={i} rtt={}.{:03} ms",
                        short(v["peer"].as_str().unwrap_or("?")),
                        rtt / 1000,
                        rtt % 1000
                    )
                });
            }
            Ok(())
        }
        Cmd::Authority(AuthorityCmd::Create {
            threshold,
            devices,
            timeout_s,
            json,
        }) => {
            let req = Request::AuthorityCreate { threshold, devices };
            let v = ask(dir, &req, Duration::from_secs(timeout_s))?
                .ok_or_else(|| fail(exit::NOT_RUNNING, "no running peer: start `aura-smol run` first"))?;
            emit(json, &ok(v)?, |v| {
                println!("authority: {}", v["authority"].as_str().unwrap_or("?"));
                println!("group key: {}", v["group_key"].as_str().unwrap_or("?"));
                println!("threshold: {} of {}", v["threshold"], v["members"]);
            });
            Ok(())
        }
        Cmd::Authority(AuthorityCmd::Threshold {
            threshold,
            timeout_s,
            json,
        }) => {
            let v = ask(
                dir,
                &Request::AuthorityThreshold { threshold },
                Duration::from_secs(timeout_s),
            )?
            .ok_or_else(|| fail(exit::NOT_RUNNING, "no running peer: start `aura-smol run` first"))?;
            emit(json, &ok(v)?, |v| {
                println!(
                    "agreed: the authority is at epoch {}, threshold {} of {}",
                    v["epoch"], v["threshold"], v["members"]
                )
            });
            Ok(())
        }
        Cmd::Authority(AuthorityCmd::Refresh { timeout_s, json }) => {
            let v = ask(dir, &Request::AuthorityRefresh, Duration::from_secs(timeout_s))?
                .ok_or_else(|| fail(exit::NOT_RUNNING, "no running peer: start `aura-smol run` first"))?;
            emit(json, &ok(v)?, |v| {
                println!(
                    "refreshed: every member holds a new share of the same key; epoch {}",
                    v["epoch"]
                )
            });
            Ok(())
        }
        Cmd::Authority(AuthorityCmd::Show { json }) => {
            let info: Option<AuthorityInfo> = match ask(dir, &Request::AuthorityShow, quick)? {
                Some(v) if v["ok"] == Value::Bool(true) => serde_json::from_value(v["authority"].clone()).ok(),
                Some(_) => None,
                None => AuthorityInfo::of(&offline(dir, None)?.0.peer),
            };
            let info = info.ok_or_else(|| fail(exit::FAILED, "this device is not a member of an authority"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info).expect("serializes"));
            } else {
                println!("authority: {}", info.id);
                println!("group key: {}", info.group_key);
                println!("threshold: {} of {}", info.threshold, info.members.len());
                println!("epoch:     {}", info.epoch);
                println!("facts:     {}", info.facts);
                for (d, i) in &info.members {
                    println!("  member {i}: {d}");
                }
            }
            Ok(())
        }
        Cmd::Sign { text, timeout_s, json } => {
            let v = ask(dir, &Request::Sign { text }, Duration::from_secs(timeout_s))?
                .ok_or_else(|| fail(exit::NOT_RUNNING, "no running peer: start `aura-smol run` first"))?;
            let v = ok(v)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).expect("serializes"));
            } else {
                println!("signature: {}", v["signature"].as_str().unwrap_or("?"));
                println!("group key: {}", v["group_key"].as_str().unwrap_or("?"));
                println!("message:   {}", v["message"].as_str().unwrap_or("?"));
            }
            Ok(())
        }
        Cmd::Context(c) => context_cmd(dir, c),
        Cmd::Device(DeviceCmd::Add {
            device,
            timeout_s,
            json,
        }) => {
            let v = ask(dir, &Request::DeviceAdd { device }, Duration::from_secs(timeout_s))?
                .ok_or_else(|| fail(exit::NOT_RUNNING, "no running peer: start `aura-smol run` first"))?;
            emit(json, &ok(v)?, |v| {
                println!(
                    "added: {} holds its share; the authority is at epoch {}, {} members, threshold {}",
                    v["device"].as_str().unwrap_or("?"),
                    v["epoch"],
                    v["members"],
                    v["threshold"]
                )
            });
            Ok(())
        }
        Cmd::Device(DeviceCmd::Remove {
            device,
            timeout_s,
            json,
        }) => {
            let v = ask(dir, &Request::DeviceRemove { device }, Duration::from_secs(timeout_s))?
                .ok_or_else(|| fail(exit::NOT_RUNNING, "no running peer: start `aura-smol run` first"))?;
            emit(json, &ok(v)?, |v| {
                println!(
                    "removed: the authority is at epoch {}, {} members, threshold {}",
                    v["epoch"], v["members"], v["threshold"]
                )
            });
            Ok(())
        }
        Cmd::Sync { peer, timeout_s, json } => {
            let v = ask(dir, &Request::Sync { peer }, Duration::from_secs(timeout_s))?
                .ok_or_else(|| fail(exit::NOT_RUNNING, "no running peer: start `aura-smol run` first"))?;
            let v = ok(v)?;
            let sessions = v["sessions"].as_array().cloned().unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&v).expect("serializes"));
            } else if sessions.is_empty() {
                println!("nothing to sync: no other device shares a journal with this one");
            } else {
                for s in &sessions {
                    let who = s["peer"].as_str().unwrap_or("?");
                    let ns = s["namespace"].as_str().unwrap_or("?");
                    if s["ok"] == Value::Bool(true) {
                        println!(
                            "{} {}: in sync (pushed {}, fetched {}, {} round trip(s))",
                            &who[..16.min(who.len())],
                            ns,
                            s["pushed"],
                            s["fetched"],
                            s["rounds"]
                        );
                    } else {
                        println!(
                            "{} {}: FAILED ({}; retried later)",
                            &who[..16.min(who.len())],
                            ns,
                            s["phase"].as_str().unwrap_or("?")
                        );
                    }
                }
            }
            let failed = sessions.iter().filter(|s| s["ok"] != Value::Bool(true)).count();
            if failed > 0 {
                return Err(fail(
                    exit::FAILED,
                    format!("{failed} of {} sessions failed", sessions.len()),
                ));
            }
            Ok(())
        }
        Cmd::Note {
            text,
            context,
            ack,
            json,
        } => {
            if text.len() > aura_proto::journal::MAX_NOTE {
                return Err(fail(
                    exit::USAGE,
                    format!(
                        "the note is {} bytes; at most {} fit",
                        text.len(),
                        aura_proto::journal::MAX_NOTE
                    ),
                ));
            }
            let v = ask(dir, &Request::Note { context, text, ack }, quick)?
                .ok_or_else(|| fail(exit::NOT_RUNNING, "no running peer: start `aura-smol run` first"))?;
            let v = ok(v)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).expect("serializes"));
            } else {
                println!(
                    "note {} written to {}",
                    v["fact"].as_str().unwrap_or("?"),
                    v["namespace"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
        Cmd::Propagation { json } => {
            let v = ask(dir, &Request::Propagation, quick)?
                .ok_or_else(|| fail(exit::NOT_RUNNING, "no running peer: start `aura-smol run` first"))?;
            let v = ok(v)?;
            let facts: Vec<WrittenInfo> = serde_json::from_value(v["facts"].clone())
                .map_err(|e| fail(exit::FAILED, format!("bad reply from the running peer: {e}")))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&facts).expect("serializes"));
                return Ok(());
            }
            println!(
                "{:<16} {:<14} {:<24} {:<9} {:>7} {:>9}",
                "fact", "kind", "journal", "status", "reached", "confirmed"
            );
            for f in &facts {
                let reached = match f.status.as_str() {
                    "syncing" | "failed" => format!("{}/{}", f.reached, f.known),
                    _ => "-".into(),
                };
                println!(
                    "{:<16} {:<14} {:<24} {:<9} {:>7} {:>9}",
                    &f.fact[..16.min(f.fact.len())],
                    f.kind,
                    &f.namespace[..24.min(f.namespace.len())],
                    f.status,
                    reached,
                    f.confirmed.len()
                );
            }
            Ok(())
        }
        Cmd::Audit { since, json } => {
            if !dir.join("device.key").exists() {
                return Err(StoreError::NotInitialized(dir.display().to_string()).into());
            }
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let from = since.map_or(0, |d| now_ms.saturating_sub(d.as_millis() as u64));
            // The running peer answers for its own ledger; without one, the file is read.
            let (entries, torn): (Vec<audit::Entry>, usize) =
                match ask(dir, &Request::Audit { since_unix_ms: from }, quick)? {
                    Some(v) => {
                        let v = ok(v)?;
                        let entries =
                            serde_json::from_value(v["entries"].clone()).map_err(|e| fail(exit::FAILED, e))?;
                        (entries, v["torn"].as_u64().unwrap_or(0) as usize)
                    }
                    None => {
                        let key = aura_shell_smol::store::key_from_env()?;
                        let sealer = aura_shell_smol::store::audit_sealer(dir, key.as_deref())?;
                        audit::read(dir, from, sealer.as_ref())
                            .map_err(|e| fail(exit::DATA_DIR, format!("reading audit.log: {e}")))?
                    }
                };
            if torn > 0 {
                eprintln!(
                    "audit.log: skipped {torn} unreadable line(s): a crash mid-write, or (sealed ledgers) a line altered, removed or moved"
                );
            }
            if json {
                for e in &entries {
                    println!("{}", serde_json::to_string(e).expect("serializes"));
                }
                return Ok(());
            }
            println!(
                "{:<23} {:<16} {:<21} {:<16} {:>5} {:<9} {:>6} {:>5} {:>11}",
                "time (UTC)", "peer", "address", "context", "epoch", "kind", "bucket", "cost", "leak e/n/g"
            );
            for e in &entries {
                // Ledger lines are read back from disk: any text, cut only where it can be.
                let peer = e.peer.as_deref().map_or("-", short);
                let ctx = short(&e.context);
                println!(
                    "{:<23} {:<16} {:<21} {:<16} {:>5} {:<9} {:>6} {:>5} {:>11}",
                    utc(e.unix_ms),
                    peer,
                    e.addr,
                    ctx,
                    e.epoch,
                    e.kind,
                    e.bucket,
                    e.cost,
                    format!("{}/{}/{}", e.leakage[0], e.leakage[1], e.leakage[2])
                );
            }
            let cost: u64 = entries.iter().map(|e| e.cost).sum();
            let bytes: usize = entries.iter().map(|e| e.bucket).sum();
            println!(
                "{} datagrams, {bytes} padded bytes, {cost} flow units charged",
                entries.len()
            );
            Ok(())
        }
        Cmd::Send { peer, text, json } => {
            let v = ask(dir, &Request::Send { peer, text }, quick)?
                .ok_or_else(|| fail(exit::NOT_RUNNING, "no running peer: start `aura-smol run` first"))?;
            emit(json, &ok(v)?, |v| {
                println!("sent to {}", v["peer"].as_str().unwrap_or("?"))
            });
            Ok(())
        }
        Cmd::BenchEcho {
            peer,
            count,
            size,
            window,
            timeout_s,
            json,
        } => {
            let req = Request::BenchEcho {
                peer,
                count,
                size,
                window,
            };
            let v = ask(dir, &req, Duration::from_secs(timeout_s))?
                .ok_or_else(|| fail(exit::NOT_RUNNING, "no running peer: start `aura-smol run` first"))?;
            let v = ok(v)?;
            if json {
                println!("{v}");
            } else {
                println!(
                    "{} of {count} messages echoed ({} lost) in {:.2} s: {:.0} msg/s, round trip p50 {} us, p99 {} us",
                    v["messages"],
                    v["lost"],
                    v["secs"].as_f64().unwrap_or(0.0),
                    v["msgs_per_s"].as_f64().unwrap_or(0.0),
                    v["rtt_p50_us"],
                    v["rtt_p99_us"]
                );
            }
            Ok(())
        }
        Cmd::Compact => {
            if ask(dir, &Request::Status, quick)?.is_some() {
                return Err(fail(exit::DATA_DIR, "the peer is running: stop it first"));
            }
            let mut store = Store::open(dir)?;
            let size = |d: &Path| std::fs::metadata(d.join("records.log")).map_or(0, |m| m.len());
            let bytes = size(dir);
            let durable = aura_proto::Durable {
                secret: store.secret.clone(),
                records: store.records.clone(),
            };
            let now = aura_proto::Now::from_parts(0, 0);
            let keys = aura_proto::Peer::restore(Config::default(), durable, [0; 32], now).live_keys();
            match store.compact(1, Some(&keys)).map_err(StoreError::from)? {
                Some((before, after)) => println!(
                    "compacted records.log: {before} -> {after} records, {bytes} -> {} bytes",
                    size(dir)
                ),
                None => println!("records.log holds only live records ({} records)", store.records.len()),
            }
            Ok(())
        }
        Cmd::RepairLog { yes } => {
            if !yes {
                return Err(fail(
                    exit::USAGE,
                    "repair-log drops every record after the damage; pass --yes to go ahead",
                ));
            }
            let key = aura_shell_smol::store::key_from_env()?;
            let store = Store::open_with(dir, key.as_deref(), true)?;
            match store.recovery.reason {
                Some(reason) => println!(
                    "cut {} bytes at byte {} ({reason}); {} records kept; the old log is in records.log.damaged",
                    store.recovery.cut_bytes,
                    store.recovery.cut_at,
                    store.records.len()
                ),
                None => println!("records.log is intact ({} records)", store.records.len()),
            }
            Ok(())
        }
        Cmd::Stop => {
            let v = ask(dir, &Request::Stop, quick)?.ok_or_else(|| fail(exit::NOT_RUNNING, "no running peer"))?;
            ok(v)?;
            println!("stopped");
            Ok(())
        }
    }
}

fn context_cmd(dir: &Path, c: ContextCmd) -> Result<(), Failure> {
    let need =
        |v: Option<Value>| v.ok_or_else(|| fail(exit::NOT_RUNNING, "no running peer: start `aura-smol run` first"));
    match c {
        ContextCmd::Invite(InviteArgs { valid_for, addr, json }) => {
            let req = Request::ContextInvite {
                valid_for_s: valid_for.as_secs(),
                addr,
            };
            let v = ok(need(ask(dir, &req, Duration::from_secs(10))?)?)?;
            emit(json, &v, |v| println!("{}", v["code"].as_str().unwrap_or_default()));
        }
        ContextCmd::Join { code, wait_s, json } => {
            let v = ok(need(ask(
                dir,
                &Request::ContextJoin { code },
                Duration::from_secs(wait_s),
            )?)?)?;
            emit(json, &v, |v| {
                println!(
                    "context {} ready with authority {} (epoch {})",
                    v["context"].as_str().unwrap_or("?"),
                    v["with"].as_str().unwrap_or("?"),
                    v["epoch"]
                )
            });
        }
        ContextCmd::List { json } => {
            let v = ok(need(ask(dir, &Request::ContextList, Duration::from_secs(10))?)?)?;
            let list: Vec<ContextInfo> =
                serde_json::from_value(v["contexts"].clone()).map_err(|e| fail(exit::FAILED, e))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list).expect("serializes"));
            } else if list.is_empty() {
                println!("no contexts");
            } else {
                for c in &list {
                    println!("context {} (epoch {})", c.id, c.epoch);
                    for (d, a) in &c.members {
                        println!("  device {d} of authority {}", short(a));
                    }
                }
            }
        }
        ContextCmd::Send {
            context,
            peer,
            text,
            json,
        } => {
            let v = ok(need(ask(
                dir,
                &Request::ContextSend { context, peer, text },
                Duration::from_secs(10),
            )?)?)?;
            emit(json, &v, |v| {
                println!(
                    "handed to the guard chain for {} in context {}",
                    short(v["peer"].as_str().unwrap_or("?")),
                    short(v["context"].as_str().unwrap_or("?"))
                )
            });
        }
        ContextCmd::Rekey {
            context,
            timeout_s,
            json,
        } => {
            let v = ok(need(ask(
                dir,
                &Request::ContextRekey { context },
                Duration::from_secs(timeout_s),
            )?)?)?;
            emit(json, &v, |v| {
                println!(
                    "context {} is at epoch {}",
                    short(v["context"].as_str().unwrap_or("?")),
                    v["epoch"]
                )
            });
        }
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS.mmm` in UTC (days to civil date after Howard Hinnant's method).
fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let tod = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60,
        unix_ms % 1000
    )
}

fn print_status(s: &Status, verbose: bool) {
    println!("device:   {}", s.device);
    println!(
        "listen:   {}{}",
        s.listen,
        if s.running { "" } else { " (not running)" }
    );
    println!("paired:   {}", s.paired.len());
    for p in &s.paired {
        println!("  {}  {}", p.id, p.addr);
    }
    println!("channels: {}", s.channels.len());
    if verbose {
        for c in &s.channels {
            println!("  peer {}", c.peer.as_deref().unwrap_or("(not yet known)"));
            println!("    address:  {} ({})", c.addr, c.path);
            println!("    state:    {}, version {}, {}", c.state, c.version, c.role);
            println!("    purpose:  {}", c.purpose);
            println!("    context:  {} (epoch {})", c.context, c.epoch);
        }
    } else if !s.channels.is_empty() {
        println!(
            "  {:<16}  {:<21}  {:<11}  {:>7}  {:<9}  {:<11}  context (epoch)",
            "peer", "address", "state", "version", "role", "purpose"
        );
        for c in &s.channels {
            let peer = c.peer.as_deref().map_or("?".to_string(), |p| short(p).to_string());
            let ctx = &c.context[..16.min(c.context.len())];
            println!(
                "  {:<16}  {:<21}  {:<11}  {:>7}  {:<9}  {:<11}  {ctx} ({})",
                peer, c.addr, c.state, c.version, c.role, c.purpose, c.epoch
            );
        }
    }
    if !s.dropped.is_empty() {
        let d: Vec<String> = s.dropped.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("dropped:  {}", d.join(" "));
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00.000");
        assert_eq!(super::utc(951_782_400_123), "2000-02-29 00:00:00.123");
        assert_eq!(super::utc(1_795_651_199_999), "2026-11-25 23:59:59.999");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("h").is_err());
    }
}
