//! Outputs of a run: CSV per circuit, stream, payment and relay; summary.json; SVG plots.
//! Everything written is a function of the scenario and seed only (no wall-clock figures),
//! so two runs give byte-identical files; wall time and memory go to stderr.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::SimError;

/// One circuit.
#[derive(Debug, Clone, Default)]
pub struct CircuitRow {
    /// Circuit id (unique in the run).
    pub circuit: u32,
    /// Client index.
    pub client: u32,
    /// When the build started, simulated ms.
    pub start_ms: f64,
    /// Build time, ms, if built.
    pub build_ms: Option<f64>,
    /// What became of it, and why.
    pub outcome: String,
    /// Relay indices, guard first.
    pub path: String,
}

/// One download.
#[derive(Debug, Clone, Default)]
pub struct StreamRow {
    /// Client index.
    pub client: u32,
    /// Circuit id (0: no circuit could be built).
    pub circuit: u32,
    /// Traffic class.
    pub class: String,
    /// Bytes asked for.
    pub bytes: u64,
    /// Bytes received.
    pub received: u64,
    /// Start, simulated ms.
    pub start_ms: f64,
    /// Time to first byte from the start of the download (including any circuit build).
    pub ttfb_ms: Option<f64>,
    /// Time to last byte, if the download completed.
    pub ttlb_ms: Option<f64>,
    /// "ok" or why not.
    pub outcome: String,
}

/// One payment to one hop.
#[derive(Debug, Clone, Default)]
pub struct PaymentRow {
    /// When it was sent, simulated ms.
    pub start_ms: f64,
    /// Client index.
    pub client: u32,
    /// Circuit id.
    pub circuit: u32,
    /// Relay paid.
    pub relay: u32,
    /// Hop index (0 = guard).
    pub hop: usize,
    /// Amount delivered, msat.
    pub amount_msat: u64,
    /// Routing fee, msat.
    pub fee_msat: u64,
    /// Latency until the payer knew the outcome, ms.
    pub latency_ms: Option<f64>,
    /// "ok", "failed: …" or "pending" at the end of the run.
    pub outcome: String,
}

/// One relay's totals.
#[derive(Debug, Clone, Default)]
pub struct RelayRow {
    /// Relay index.
    pub relay: u32,
    /// Whether it is an exit.
    pub exit: bool,
    /// Bandwidth, bytes/s.
    pub bandwidth_bps: u64,
    /// Price per MiB it charges.
    pub msat_per_mib: u64,
    /// Price per minute it charges.
    pub msat_per_min: u64,
    /// Adversary kind, if any.
    pub adversary: String,
    /// Circuits it accepted.
    pub circuits: u64,
    /// CREATEs it refused.
    pub refused: u64,
    /// Cells it sent.
    pub cells: u64,
    /// Circuits it destroyed for lack of payment.
    pub payment_required: u64,
    /// Circuits it destroyed for protocol errors (tagged or dropped cells upstream).
    pub protocol_errors: u64,
    /// Payments received.
    pub payments: u64,
    /// Earnings, msat.
    pub earnings_msat: u64,
    /// Streams it refused (exit policy).
    pub refused_streams: u64,
    /// Virtual CPU time it spent, ms (the CPU model).
    pub cpu_ms: f64,
}

/// Everything a run produced.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Circuits.
    pub circuits: Vec<CircuitRow>,
    /// Downloads.
    pub streams: Vec<StreamRow>,
    /// Payments.
    pub payments: Vec<PaymentRow>,
    /// Relays.
    pub relays: Vec<RelayRow>,
    /// Per client: msat paid per relay index.
    pub paid_to: Vec<Vec<(u32, u64)>>,
    /// The payment chunk (the most a client keeps paid ahead per hop), msat.
    pub chunk_msat: u64,
    /// Per client: msat paid per relay on circuits that relay stopped relaying (take
    /// payment and stop), beyond what those circuits had carried when it stopped; counted
    /// for the circuits on which a download went unserved at the stop or later (the others'
    /// downloads were all served: the rest of their chunk is what an honest relay keeps).
    pub lost_to: Vec<Vec<(u32, u64)>>,
    /// Events handled.
    pub events: u64,
    /// Cells sent over links.
    pub cells: u64,
    /// Relays going down (`false`) and up (`true`) under churn: (ms, relay, up).
    pub churn: Vec<(f64, u32, bool)>,
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_default()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> Result<(), SimError> {
    std::fs::write(dir.join(name), text).map_err(|e| SimError::Io {
        what: format!("writing {name}"),
        source: e,
    })
}

/// Quantiles of a sample (sorted in place): p50, p90, p99.
fn quantiles(v: &mut [f64]) -> Option<[f64; 3]> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    Some([q(0.5), q(0.9), q(0.99)])
}

/// The summary written to summary.json.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// SHA-256 of the scenario file, hex.
    pub scenario_sha256: String,
    /// The seed.
    pub seed: u64,
    /// Simulator version (crate version and git commit when built from a checkout).
    pub code_version: String,
    /// Simulated seconds.
    pub duration_s: u64,
    /// Relays, clients.
    pub relays: usize,
    /// Clients.
    pub clients: usize,
    /// Events handled, cells sent.
    pub events: u64,
    /// Cells sent over links.
    pub cells: u64,
    /// Circuits by outcome.
    pub circuits: BTreeMap<String, u64>,
    /// Build time p50/p90/p99, ms.
    pub build_ms: Option<[f64; 3]>,
    /// Per traffic class: downloads by outcome and TTFB / TTLB quantiles.
    pub streams: BTreeMap<String, ClassSummary>,
    /// Payments: count ok, count failed, msat paid, fees.
    pub payments_ok: u64,
    /// Failed payments.
    pub payments_failed: u64,
    /// msat delivered to relays.
    pub paid_msat: u64,
    /// Routing fees, msat.
    pub fees_msat: u64,
}

/// Per traffic class figures.
#[derive(Debug, Serialize, Default)]
pub struct ClassSummary {
    /// Downloads by outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// TTFB p50/p90/p99, ms.
    pub ttfb_ms: Option<[f64; 3]>,
    /// TTLB p50/p90/p99, ms (completed downloads).
    pub ttlb_ms: Option<[f64; 3]>,
}

/// Coarse outcome key: the text before the first ':' ("build failed", "closed", ...).
fn outcome_key(s: &str) -> String {
    s.split(':').next().unwrap_or(s).trim().to_string()
}

impl Outputs {
    /// The summary of this run.
    pub fn summary(
        &self,
        scenario: &str,
        sha: &str,
        seed: u64,
        duration_s: u64,
        clients: usize,
    ) -> Summary {
        let mut circuits = BTreeMap::new();
        for c in &self.circuits {
            *circuits.entry(outcome_key(&c.outcome)).or_insert(0) += 1;
        }
        let mut build: Vec<f64> = self.circuits.iter().filter_map(|c| c.build_ms).collect();
        let mut streams: BTreeMap<String, ClassSummary> = BTreeMap::new();
        let mut by_class: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        for s in &self.streams {
            let e = streams.entry(s.class.clone()).or_default();
            *e.outcomes.entry(outcome_key(&s.outcome)).or_insert(0) += 1;
            let v = by_class.entry(s.class.clone()).or_default();
            if let Some(t) = s.ttfb_ms {
                v.0.push(t);
            }
            if let Some(t) = s.ttlb_ms {
                v.1.push(t);
            }
        }
        for (k, (mut a, mut b)) in by_class {
            if let Some(e) = streams.get_mut(&k) {
                e.ttfb_ms = quantiles(&mut a);
                e.ttlb_ms = quantiles(&mut b);
            }
        }
        let ok: Vec<&PaymentRow> = self.payments.iter().filter(|p| p.outcome == "ok").collect();
        Summary {
            scenario: scenario.to_string(),
            scenario_sha256: sha.to_string(),
            seed,
            code_version: crate::code_version(),
            duration_s,
            relays: self.relays.len(),
            clients,
            events: self.events,
            cells: self.cells,
            circuits,
            build_ms: quantiles(&mut build),
            streams,
            payments_ok: ok.len() as u64,
            payments_failed: self
                .payments
                .iter()
                .filter(|p| p.outcome.starts_with("failed"))
                .count() as u64,
            paid_msat: ok.iter().map(|p| p.amount_msat).sum(),
            fees_msat: ok.iter().map(|p| p.fee_msat).sum(),
        }
    }

    /// Writes the CSV files, summary.json and the plots into `dir`.
    pub fn write_all(&self, dir: &Path, summary: &Summary) -> Result<(), SimError> {
        std::fs::create_dir_all(dir).map_err(|e| SimError::Io {
            what: format!("creating {}", dir.display()),
            source: e,
        })?;
        let mut s = String::from("circuit,client,start_ms,build_ms,outcome,path\n");
        for c in &self.circuits {
            let _ = writeln!(
                s,
                "{},{},{:.3},{},{},{}",
                c.circuit,
                c.client,
                c.start_ms,
                opt(c.build_ms),
                csv_field(&c.outcome),
                c.path
            );
        }
        write(dir, "circuits.csv", &s)?;
        let mut s =
            String::from("client,circuit,class,bytes,received,start_ms,ttfb_ms,ttlb_ms,outcome\n");
        for r in &self.streams {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{:.3},{},{},{}",
                r.client,
                r.circuit,
                csv_field(&r.class),
                r.bytes,
                r.received,
                r.start_ms,
                opt(r.ttfb_ms),
                opt(r.ttlb_ms),
                csv_field(&r.outcome)
            );
        }
        write(dir, "streams.csv", &s)?;
        let mut s = String::from(
            "start_ms,client,circuit,relay,hop,amount_msat,fee_msat,latency_ms,outcome\n",
        );
        for p in &self.payments {
            let _ = writeln!(
                s,
                "{:.3},{},{},{},{},{},{},{},{}",
                p.start_ms,
                p.client,
                p.circuit,
                p.relay,
                p.hop,
                p.amount_msat,
                p.fee_msat,
                opt(p.latency_ms),
                csv_field(&p.outcome)
            );
        }
        write(dir, "payments.csv", &s)?;
        let mut s = String::from(
            "relay,exit,bandwidth_bps,msat_per_mib,msat_per_min,adversary,circuits,refused,cells,\
             payment_required,protocol_errors,payments,earnings_msat,refused_streams,cpu_ms\n",
        );
        for r in &self.relays {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.3}",
                r.relay,
                r.exit,
                r.bandwidth_bps,
                r.msat_per_mib,
                r.msat_per_min,
                r.adversary,
                r.circuits,
                r.refused,
                r.cells,
                r.payment_required,
                r.protocol_errors,
                r.payments,
                r.earnings_msat,
                r.refused_streams,
                r.cpu_ms
            );
        }
        write(dir, "relays.csv", &s)?;
        let json = serde_json::to_string_pretty(summary)
            .map_err(|e| SimError::Setup(format!("summary: {e}")))?;
        write(dir, "summary.json", &(json + "\n"))?;
        self.plots(dir)
    }

    fn plots(&self, dir: &Path) -> Result<(), SimError> {
        let build: Vec<f64> = self.circuits.iter().filter_map(|c| c.build_ms).collect();
        cdf_plot(
            &dir.join("build_time_cdf.svg"),
            "Circuit build time",
            "ms",
            &[("all".to_string(), build)],
        )?;
        let mut ttfb: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut ttlb: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for s in &self.streams {
            if let Some(t) = s.ttfb_ms {
                ttfb.entry(s.class.clone()).or_default().push(t);
            }
            if let Some(t) = s.ttlb_ms {
                ttlb.entry(s.class.clone()).or_default().push(t);
            }
        }
        cdf_plot(
            &dir.join("ttfb_cdf.svg"),
            "Time to first byte",
            "ms",
            &ttfb.into_iter().collect::<Vec<_>>(),
        )?;
        cdf_plot(
            &dir.join("download_time_cdf.svg"),
            "Download time (time to last byte)",
            "ms",
            &ttlb.into_iter().collect::<Vec<_>>(),
        )?;
        earnings_plot(&dir.join("earnings.svg"), &self.relays)
    }
}

fn plot_err(e: impl std::fmt::Display) -> SimError {
    SimError::Plot(e.to_string())
}

/// Empirical CDFs of several samples on one chart (log x axis).
fn cdf_plot(
    path: &Path,
    title: &str,
    unit: &str,
    series: &[(String, Vec<f64>)],
) -> Result<(), SimError> {
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let all = series.iter().flat_map(|(_, v)| v.iter().copied());
    let lo = all.clone().fold(f64::INFINITY, f64::min).max(0.01);
    let hi = all.fold(0.0f64, f64::max).max(lo * 10.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(unit)
        .y_desc("fraction")
        .draw()
        .map_err(plot_err)?;
    for (i, (name, v)) in series.iter().enumerate() {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len().max(1) as f64;
        let color = Palette99::pick(i).to_rgba();
        // At most ~1000 points per curve keeps the SVG small at any sample size.
        let step = (v.len() / 1000).max(1);
        let pts: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .filter(|(k, _)| k % step == 0 || *k + 1 == v.len())
            .map(|(k, x)| (x.max(lo), (k + 1) as f64 / n))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(plot_err)?
            .label(format!("{name} (n={})", v.len()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

/// Earnings per relay, relays sorted by earnings.
fn earnings_plot(path: &Path, relays: &[RelayRow]) -> Result<(), SimError> {
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut e: Vec<(u64, bool)> = relays
        .iter()
        .map(|r| (r.earnings_msat, !r.adversary.is_empty()))
        .collect();
    e.sort_by_key(|x| std::cmp::Reverse(x.0));
    let max = e.first().map_or(1, |x| x.0).max(1) as f64 / 1000.0;
    let mut chart = ChartBuilder::on(&root)
        .caption("Earnings per relay (sat)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0usize..e.len().max(1), 0.0..max * 1.05)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("relay rank")
        .y_desc("sat")
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(e.iter().enumerate().map(|(i, (m, adv))| {
            let color = if *adv { RED } else { BLUE };
            Rectangle::new([(i, 0.0), (i + 1, *m as f64 / 1000.0)], color.filled())
        }))
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}
