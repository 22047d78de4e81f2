//! `onionvpn-simnet run scenario.toml --out DIR`: runs a scenario and writes its outputs.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "onionvpn-simnet",
    version,
    about = "onionvpn's in-process network simulator"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs a scenario and writes CSV files, summary.json and SVG plots.
    Run {
        /// The scenario (TOML; see docs/simnet.md).
        scenario: PathBuf,
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Override the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Measures the CPU model's costs on this machine (the project's own code) and prints
    /// them as a calibration file (simnet/calibration.toml).
    Calibrate {
        /// Fewer batches and cells (a few hundred ms).
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Run {
            scenario,
            out,
            seed,
        } => run(scenario, out, seed),
        Cmd::Calibrate { quick } => calibrate(quick),
    }
}

fn calibrate(quick: bool) -> ExitCode {
    let effort = if quick {
        onionvpn_simnet::calibrate::Effort::QUICK
    } else {
        onionvpn_simnet::calibrate::Effort::NORMAL
    };
    match onionvpn_simnet::calibrate::measure(effort) {
        Ok(c) => {
            let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
            let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
            let load = load.split_whitespace().next().unwrap_or("?").to_string();
            // Micro-operations only: the shipped file also has the stack terms from whole
            // real operations, which need the loopback network (`onionvpn-bench calibrate`).
            let cmd = format!(
                "onionvpn-simnet calibrate{} ({} build; micro-operations only, stack terms 0: \
                 simnet/calibration.toml comes from `onionvpn-bench calibrate`)",
                if quick { " --quick" } else { "" },
                if cfg!(debug_assertions) {
                    "debug-assertions (dev or test profile)"
                } else {
                    "release"
                }
            );
            let measured = format!(
                "{} ({cores} cores, load average {load} at the end)",
                onionvpn_simnet::code_version()
            );
            // The calibration file is the command's output.
            #[allow(clippy::print_stdout)]
            {
                print!("{}", c.to_calibration_toml(&cmd, &measured));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("onionvpn-simnet: calibrate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(scenario: PathBuf, out: PathBuf, seed: Option<u64>) -> ExitCode {
    let mut text = match std::fs::read_to_string(&scenario) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("onionvpn-simnet: reading {}: {e}", scenario.display());
            return ExitCode::FAILURE;
        }
    };
    if let Some(s) = seed {
        // The override is appended as a replacement line so the hashed text names it.
        text = text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("seed") && l.contains('=') && !l.starts_with(' ') {
                    format!("seed = {s}")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
    }
    let duration = onionvpn_simnet::Scenario::parse(&text)
        .map(|s| s.duration_s)
        .unwrap_or(0);
    let bar = ProgressBar::new(duration.max(1));
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:40} {pos}/{len} simulated s  wall {elapsed_precise}  {msg}",
    ) {
        bar.set_style(style);
    }
    let wall = Instant::now();
    let res = onionvpn_simnet::run(&text, Some(&out), |ns| {
        let s = ns / 1_000_000_000;
        bar.set_position(s);
        let el = wall.elapsed().as_secs_f64();
        if el > 0.0 {
            bar.set_message(format!("{:.1}× real time", s as f64 / el));
        }
    });
    bar.finish_and_clear();
    match res {
        Ok(r) => {
            let el = wall.elapsed().as_secs_f64();
            eprintln!(
                "onionvpn-simnet: {} simulated s in {el:.1} s wall ({} events, {} cells); max RSS {}; outputs in {}",
                r.summary.duration_s,
                r.summary.events,
                r.summary.cells,
                max_rss().unwrap_or_else(|| "unknown".into()),
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("onionvpn-simnet: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Peak resident memory from /proc (Linux), for the report on stderr.
fn max_rss() -> Option<String> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
}
