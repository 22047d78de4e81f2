//! Whole real operations on a [`LocalNet`] for simnet's CPU model: a burst of circuit
//! builds and a few downloads through 3 hops, with their wall times (what the agreement
//! test compares with simnet) and their process CPU time (what
//! `onionvpn_simnet::calibrate::with_stack` turns into the model's stack terms).
//!
//! CPU time is the whole process's (every relay, the client, the HTTP server and the
//! downloader run in it), minus the network's idle CPU (DHT polling, timers) measured over
//! a quiet window just before.

use std::time::{Duration, Instant};

use onionvpn_proto::consts::RELAY_BODY_MAX;
use onionvpn_simnet::calibrate::Whole;

use crate::{fetch, process_cpu_time, LocalNet};

/// What one measurement gave.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Median wall time of a 3-hop circuit build (ms).
    pub build_ms: f64,
    /// Median throughput of one download (MiB/s).
    pub rate_mib_s: f64,
    /// The CPU figures for the model.
    pub whole: Whole,
    /// Process CPU per wall second during the downloads: how many cores the network kept
    /// busy (at most the machine's cores).
    pub cores_busy: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn cpu_ns() -> f64 {
    process_cpu_time().as_nanos() as f64
}

/// Measures `builds` circuit builds (after 10 unmeasured ones) and `transfers` downloads of
/// `mib` MiB through `net`'s client (after a 1 MiB warm-up that opens the circuit and the
/// relays' channels).
pub async fn measure(
    net: &LocalNet,
    builds: usize,
    transfers: usize,
    mib: u64,
) -> Result<Measured, String> {
    let (Some(socks), Some(http), Some(client)) =
        (net.socks_addr(), net.http_addr(), net.client.as_ref())
    else {
        return Err("the network has no client or HTTP server".into());
    };
    let fetch = |bytes: u64| async move {
        let t0 = Instant::now();
        let d = fetch::download(socks, http, bytes, Duration::from_secs(120), false)
            .await
            .map_err(|e| format!("download: {e}"))?;
        if d.len != bytes {
            return Err(format!("short download: {} of {bytes}", d.len));
        }
        Ok::<f64, String>(t0.elapsed().as_secs_f64())
    };
    fetch(1 << 20).await?;
    // The network's idle CPU: a measuring window, not a synchronisation.
    let (c0, t0) = (cpu_ns(), Instant::now());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_per_ns = (cpu_ns() - c0) / (t0.elapsed().as_nanos() as f64).max(1.0);

    let mgr = client.circuit_manager();
    let build = || async {
        tokio::time::timeout(Duration::from_secs(30), mgr.build_circuit(None))
            .await
            .map_err(|_| "a circuit build hung".to_string())?
            .map_err(|e| format!("circuit build: {e}"))
    };
    for _ in 0..10 {
        drop(build().await?);
    }
    // The measured builds are kept open until the end, so that no teardown (DESTROY
    // through every hop, which the real network does beside the next build) is counted.
    let mut ms = Vec::new();
    let mut open = Vec::new();
    let (c0, t0) = (cpu_ns(), Instant::now());
    for _ in 0..builds {
        let t = Instant::now();
        open.push(build().await?);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let wall = t0.elapsed().as_nanos() as f64;
    let build_ns = (cpu_ns() - c0 - idle_per_ns * wall) / builds.max(1) as f64;
    drop(open);

    let mut rates = Vec::new();
    let (c0, t0) = (cpu_ns(), Instant::now());
    for _ in 0..transfers {
        rates.push(mib as f64 / fetch(mib << 20).await?);
    }
    let wall = t0.elapsed().as_nanos() as f64;
    let cpu = cpu_ns() - c0;
    let cells = (transfers as u64 * (mib << 20)) as f64 / RELAY_BODY_MAX as f64;
    Ok(Measured {
        build_ms: median(ms),
        rate_mib_s: median(rates),
        whole: Whole {
            hops: 3,
            cell_ns: (cpu - idle_per_ns * wall) / cells.max(1.0),
            build_ns,
        },
        cores_busy: cpu / wall.max(1.0),
    })
}
