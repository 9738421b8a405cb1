//! Helpers shared by the shell's process tests: run `aura-smol`, start and stop daemons.

#![allow(dead_code)]

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_aura-smol")
}

/// Runs `aura-smol` with extra environment variables.
pub fn smol_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin())
        .arg("-d")
        .arg(dir)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("spawn aura-smol")
}

pub fn smol(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("-d")
        .arg(dir)
        .args(args)
        .output()
        .expect("spawn aura-smol")
}

pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = smol(dir, args);
    assert!(
        out.status.success(),
        "aura-smol {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
}

impl Daemon {
    pub fn start(dir: &Path) -> Daemon {
        Self::start_with(dir, Stdio::null(), &[])
    }

    /// Starts with its log (stderr, debug level) appended to `log`.
    pub fn start_logged(dir: &Path, log: &Path) -> Daemon {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        Self::start_with(dir, Stdio::from(f), &[])
    }

    /// [`Daemon::start_logged`] with extra environment variables.
    pub fn start_logged_env(dir: &Path, log: &Path, env: &[(&str, &str)]) -> Daemon {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        Self::start_with(dir, Stdio::from(f), env)
    }

    /// Starts with its log going to `stderr` and extra environment variables.
    pub fn start_with(dir: &Path, stderr: Stdio, env: &[(&str, &str)]) -> Daemon {
        Self::start_args(dir, stderr, env, &[])
    }

    /// [`Daemon::start_with`] with extra `run` arguments.
    pub fn start_args(dir: &Path, stderr: Stdio, env: &[(&str, &str)], args: &[&str]) -> Daemon {
        let sock = dir.join("control.sock");
        // A killed daemon leaves its socket file behind.
        let _ = std::fs::remove_file(&sock);
        let child = Command::new(bin())
            .arg("-d")
            .arg(dir)
            .args(["run", "--log-level", "debug"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child,
            dir: dir.to_path_buf(),
        };
        let t0 = Instant::now();
        while !sock.exists() {
            if let Some(st) = d.child.try_wait().unwrap() {
                panic!("daemon in {} exited at start: {st}", dir.display());
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// `kill -9`: no chance to flush or close anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn stop(mut self) {
        ok(&self.dir, &["stop"]);
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "daemon exited with {st}");
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "daemon did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("aura-smol-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Waits until `authority show` works in `d`.
pub fn await_authority(d: &Path) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let o = smol(d, &["authority", "show", "--json"]);
        if o.status.success() {
            break serde_json::from_slice(&o.stdout).unwrap();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no authority at {}",
            d.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
