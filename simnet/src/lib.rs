#![doc = include_str!("../README.md")]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod calibrate;
pub mod cpu;
pub mod net;
pub mod output;
pub mod queue;
pub mod scenario;
pub mod world;

use std::path::Path;

use sha2::{Digest, Sha256};

pub use output::{Outputs, Summary};
pub use scenario::Scenario;
pub use world::World;

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The scenario file is malformed or inconsistent.
    #[error("scenario: {0}")]
    Scenario(String),
    /// Building the world failed (keys, descriptors).
    #[error("setup: {0}")]
    Setup(String),
    /// Reading or writing a file failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Drawing a plot failed.
    #[error("plot: {0}")]
    Plot(String),
}

/// The simulator's version: the crate version and, when built from a git checkout, the
/// commit (set by build.rs).
pub fn code_version() -> String {
    match option_env!("ONIONVPN_GIT_REV") {
        Some(rev) if !rev.is_empty() => format!("{}+{rev}", env!("CARGO_PKG_VERSION")),
        _ => env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// A finished run: the outputs and the summary.
pub struct RunResult {
    /// Everything recorded.
    pub outputs: Outputs,
    /// The summary (also in summary.json).
    pub summary: Summary,
}

/// Runs the scenario text `toml` and, when `out` is given, writes the outputs there.
/// `progress(sim_ns)` is called about once per simulated second.
pub fn run(
    toml: &str,
    out: Option<&Path>,
    progress: impl FnMut(u64),
) -> Result<RunResult, SimError> {
    let sc = Scenario::parse(toml)?;
    let sha: String = Sha256::digest(toml.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let (name, seed, dur, clients) = (
        sc.name.clone(),
        sc.seed,
        sc.duration_s,
        sc.clients.count as usize,
    );
    let mut world = World::new(sc)?;
    world.run(progress);
    let outputs = std::mem::take(&mut world.out);
    let summary = outputs.summary(&name, &sha, seed, dur, clients);
    if let Some(dir) = out {
        outputs.write_all(dir, &summary)?;
    }
    Ok(RunResult { outputs, summary })
}
