//! `beamflow demo`: a server and a pilot in this process on a fresh store, a
//! synthetic XPCS measurement with known dynamics, and the `xpcs` flow run
//! end to end: staged, correlated, plotted, published and returned.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use anyhow::Context;
use serde::Deserialize;
use serde_json::json;

use beamflow_kernels::synthetic::xpcs::{write_dataset, SpeckleConfig};

use super::local::{Local, LocalOptions};
use super::render::table;
use super::Ctx;
use crate::api::{RunDetail, RunState};
use crate::site::SiteConfig;
use crate::store::Durability;
use crate::util::sig;

#[derive(Args)]
pub struct DemoArgs {
    /// Keep the demo's state in this directory instead of a temporary one.
    #[arg(long)]
    keep: Option<PathBuf>,
}

impl DemoArgs {
    pub async fn run(self, _cx: &Ctx) -> anyhow::Result<ExitCode> {
        run(self.keep.as_deref()).await?;
        Ok(ExitCode::SUCCESS)
    }
}

pub const DEMO_FLOW: &str = include_str!("../../../jobs/demo.toml");

/// Writes `n` pseudo-random frame files of `size` bytes (deterministic content).
pub fn generate_frames(dir: &Path, n: usize, size: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..n {
        let mut buf = Vec::with_capacity(size);
        while buf.len() < size {
            // xorshift64*: cheap, reproducible detector-like noise.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            buf.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        buf.truncate(size);
        let mut f = std::fs::File::create(dir.join(format!("frame_{i:05}.bin")))?;
        f.write_all(&buf)?;
    }
    Ok(())
}

/// The flow the demo runs: XPCS from a (synthetic) beamline to the catalog.
pub const XPCS_FLOW: &str = include_str!("../../../jobs/xpcs.toml");

/// What the demo reads of the xpcs flow's catalog record: a field missing
/// is an error that names it, not an empty table.
#[derive(Deserialize)]
struct Record {
    title: String,
    outputs: Outputs,
    files: Vec<RecordFile>,
}

/// The record's `outputs`, per resolvable q bin where they are lists.
#[derive(Deserialize)]
struct Outputs {
    diffusion: Option<f64>,
    beta_mean: Option<f64>,
    q: Vec<f64>,
    dq: Vec<usize>,
    gamma: Vec<Option<f64>>,
    beta: Vec<Option<f64>>,
    resolved: Vec<bool>,
}

#[derive(Deserialize)]
struct RecordFile {
    path: String,
    bytes: u64,
    blake3: String,
}

/// The generator's ground truth (`ground_truth.json`).
#[derive(Deserialize)]
struct Truth {
    diffusion: f64,
    beta: f64,
    /// Per dynamic bin, 1-based `dq` → `bins[dq - 1]`.
    bins: Vec<TrueBin>,
}

#[derive(Deserialize)]
struct TrueBin {
    gamma: f64,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not what was expected", path.display()))
}

/// Γ fitted beside Γ true for each resolvable q bin.
fn gamma_table(o: &Outputs, truth: &Truth) -> anyhow::Result<comfy_table::Table> {
    let n = o.q.len();
    for (name, len) in [
        ("dq", o.dq.len()),
        ("gamma", o.gamma.len()),
        ("beta", o.beta.len()),
        ("resolved", o.resolved.len()),
    ] {
        anyhow::ensure!(
            len == n,
            "the catalog record's outputs.{name} has {len} values for {n} q bins"
        );
    }
    let mut tab = table(&["q (1/Å)", "Γ fitted (1/s)", "Γ true (1/s)", "β"]);
    let num = |v: Option<f64>| v.map_or("—".to_string(), |x| sig(x, 4));
    for i in (0..n).filter(|&i| o.resolved[i]) {
        let true_gamma =
            o.dq.get(i)
                .and_then(|&d| d.checked_sub(1))
                .and_then(|b| truth.bins.get(b))
                .map(|b| b.gamma);
        tab.add_row(vec![
            sig(o.q[i], 4),
            num(o.gamma[i]),
            num(true_gamma),
            num(o.beta[i]),
        ]);
    }
    anyhow::ensure!(
        tab.row_count() > 0,
        "the catalog record marks none of its {n} q bins resolved"
    );
    Ok(tab)
}

pub async fn run(keep: Option<&Path>) -> anyhow::Result<()> {
    let local = Local::start(LocalOptions {
        home: keep.map(Path::to_path_buf),
        pilots: 1,
        cpus: None,
        prefetch: None,
        durability: Durability::Normal,
        site: SiteConfig::local(),
    })
    .await?;
    println!(
        "beamflow demo: server at {} with one local pilot (state in {})",
        local.client.url,
        local.home.display()
    );
    let beamline = local.home.join("beamline");
    let cfg = SpeckleConfig {
        size: 256,
        frames: 2000,
        ..Default::default()
    };
    let dir = beamline.clone();
    let c = cfg.clone();
    let files = tokio::task::spawn_blocking(move || write_dataset(&c, &dir, "S001_silica", |_| {}))
        .await?
        .map_err(anyhow::Error::msg)?;
    let truth: Truth = read_json(&files.truth)?;
    let d_true = truth.diffusion;
    println!(
        "beamline wrote {} frames of {}x{} speckle (Brownian motion, D = {:.4e} Å²/s, β = {}) to {}",
        cfg.frames,
        cfg.size,
        cfg.size,
        d_true,
        truth.beta,
        files.dir.display()
    );
    let flow_path = local.home.join("xpcs.toml");
    std::fs::write(&flow_path, XPCS_FLOW)?;
    let crate::api::Registered { name, version, .. } = local.client.register(&flow_path).await?;
    println!(
        "registered flow {name} v{version}: stage → metadata → multitau → plot → gather → publish → return"
    );
    let dest = beamline.join("analysis");
    let s = |p: &Path| p.display().to_string();
    let ids = local
        .client
        .submit(
            &name,
            None,
            vec![json!({
                "raw": s(&files.raw),
                "meta": s(&files.metadata),
                "qmap": s(&files.qmap),
                "dest": s(&dest),
                "sample": "silica-demo",
            })],
        )
        .await?;
    let runs = local
        .client
        .wait(&ids, true, Some(std::time::Duration::from_secs(600)))
        .await?;
    let d: RunDetail = local.client.run(ids[0]).await?;
    let t = crate::report::timing(&d);
    println!(
        "\nrun {} {}:\n{}",
        ids[0],
        runs[0].state,
        crate::cli::report::timing_table(&t)
    );
    if let Some(err) = &runs[0].error {
        println!("error: {err}");
    }
    let hits = local.client.catalog(Some("silica"), &[], 50).await?;
    let mut d_fit = None;
    if let Some(h) = hits.first() {
        let r: Record = serde_json::from_value(h.record.clone()).with_context(|| {
            format!("catalog record {}: not what the xpcs flow publishes", h.id)
        })?;
        println!("\ncatalog record {}: {}", h.id, r.title);
        let o = &r.outputs;
        d_fit = o.diffusion;
        if let Some(d) = d_fit {
            println!(
                "  D fitted {d:.4e} Å²/s (true {d_true:.4e}, off by {:+.2} %), mean β {} (true {})",
                100.0 * (d - d_true) / d_true,
                o.beta_mean.map_or("—".into(), |b| format!("{b:.4}")),
                truth.beta
            );
        }
        println!("{}", gamma_table(o, &truth)?);
        for f in &r.files {
            println!(
                "  file: {} ({} bytes, blake3 {})",
                f.path,
                f.bytes,
                f.blake3.get(..16).unwrap_or(&f.blake3)
            );
        }
    }
    let returned = dest.join("results").join("S001_silica_results.hdf");
    let ok = runs.iter().all(|r| r.state == RunState::Succeeded);
    let back = returned.exists();
    local.stop().await?;
    anyhow::ensure!(ok, "the demo run did not succeed");
    anyhow::ensure!(
        back,
        "{}: the results did not come back",
        returned.display()
    );
    let d = d_fit.ok_or_else(|| anyhow::anyhow!("the catalog record has no fitted D"))?;
    println!(
        "\ndemo finished: the results came back to the beamline ({}{}) and D is within {:.1} % of the truth.",
        returned.display(),
        if keep.is_some() { "; open it in pyXPCSViewer" } else { ", removed with the demo's temporary state; --keep DIR keeps it" },
        100.0 * ((d - d_true) / d_true).abs()
    );
    Ok(())
}
