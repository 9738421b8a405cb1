//! Hand-written scenarios in TOML: a world and a timed script of actions.
//!
//! ```toml
//! seed = 7
//! peers = 3
//! workload = "pairing"          # or "authority", "context", "journal"
//! statements = 8                # journal: statements to sign
//! sign_every_s = 5              # journal: seconds between signing requests
//! [link]
//! loss = 0.1                    # probabilities 0..=1
//! min_delay_ms = 5
//! [[at]]
//! time_ms = 300
//! action = "partition"          # crash | restart | partition | heal | set-link
//! a = [0]
//! b = [1, 2]
//! ```

use std::time::Duration;

use serde::Deserialize;

use crate::{Action, LinkModel, Ppm, Scenario, SimConfig};

/// The link section (probabilities as decimals).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// Loss probability.
    #[serde(default)]
    pub loss: f64,
    /// Duplication probability.
    #[serde(default)]
    pub dup: f64,
    /// Reordering probability.
    #[serde(default)]
    pub reorder: f64,
    /// Fixed delay, ms.
    #[serde(default = "five")]
    pub min_delay_ms: u64,
    /// Mean of the exponential extra delay, ms.
    #[serde(default = "ten")]
    pub mean_delay_ms: u64,
}

fn five() -> u64 {
    5
}
fn ten() -> u64 {
    10
}
fn three() -> usize {
    3
}
fn six_hundred() -> u64 {
    600
}

impl Default for LinkSpec {
    fn default() -> LinkSpec {
        LinkSpec {
            loss: 0.0,
            dup: 0.0,
            reorder: 0.0,
            min_delay_ms: 5,
            mean_delay_ms: 10,
        }
    }
}

/// One timed action.
#[derive(Clone, Debug, Deserialize)]
pub struct Step {
    /// When, in simulated milliseconds.
    pub time_ms: u64,
    /// What.
    #[serde(flatten)]
    pub action: Action,
}

/// A scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// Root seed.
    pub seed: u64,
    /// Devices.
    #[serde(default = "three")]
    pub peers: usize,
    /// `pairing` or `authority`.
    #[serde(default)]
    pub workload: Option<String>,
    /// Link model.
    #[serde(default)]
    pub link: LinkSpec,
    /// Give up after this many simulated seconds.
    #[serde(default = "six_hundred")]
    pub max_time_s: u64,
    /// The script.
    #[serde(default)]
    pub at: Vec<Step>,
    /// Journal workload: statements to sign.
    #[serde(default = "eight")]
    pub statements: u32,
    /// Journal workload: seconds between signing requests.
    #[serde(default = "five")]
    pub sign_every_s: u64,
}

fn eight() -> u32 {
    8
}

fn ppm(name: &str, p: f64) -> Result<Ppm, String> {
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("{name} = {p} is not a probability between 0 and 1"));
    }
    Ok((p * 1e6).round() as Ppm)
}

impl ScenarioFile {
    /// Parses and validates a scenario.
    pub fn parse(text: &str) -> Result<ScenarioFile, String> {
        let f: ScenarioFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if !(2..=256).contains(&f.peers) {
            return Err(format!("peers = {} must be between 2 and 256", f.peers));
        }
        for s in &f.at {
            let nodes: Vec<usize> = match &s.action {
                Action::Crash { node } | Action::Restart { node } | Action::Lose { node } => vec![*node],
                Action::Pause { node, .. } | Action::Clog { node, .. } => vec![*node],
                Action::Partition { a, b, .. } => a.iter().chain(b).copied().collect(),
                Action::Heal | Action::SetLink { .. } => vec![],
            };
            if let Some(n) = nodes.iter().find(|n| **n >= f.peers) {
                return Err(format!(
                    "action at {} ms names device {n}, but there are only {} devices",
                    s.time_ms, f.peers
                ));
            }
        }
        Ok(f)
    }

    /// The simulator configuration it describes.
    pub fn config(&self) -> Result<SimConfig, String> {
        let scenario = match self.workload.as_deref() {
            None | Some("pairing") => Scenario::Pairing,
            Some("authority") => Scenario::Authority,
            Some("context") => Scenario::Context,
            Some("journal") => Scenario::Journal,
            Some("consensus") => Scenario::Consensus,
            Some(w) => {
                return Err(format!(
                    "unknown workload {w:?}: use \"pairing\", \"authority\", \"context\", \"journal\" or \"consensus\""
                ))
            }
        };
        Ok(SimConfig {
            seed: self.seed,
            peers: self.peers,
            scenario,
            link: LinkModel {
                min_delay: Duration::from_millis(self.link.min_delay_ms),
                mean_extra: Duration::from_millis(self.link.mean_delay_ms),
                loss: ppm("loss", self.link.loss)?,
                dup: ppm("dup", self.link.dup)?,
                reorder: ppm("reorder", self.link.reorder)?,
            },
            max_time: Duration::from_secs(self.max_time_s),
            script: self
                .at
                .iter()
                .map(|s| (Duration::from_millis(s.time_ms), s.action.clone()))
                .collect(),
            statements: self.statements,
            sign_every: Duration::from_secs(self.sign_every_s),
            ..SimConfig::default()
        })
    }
}
