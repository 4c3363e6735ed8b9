//! `beamflow demo`: a server and a pilot in this process on a fresh store, a
//! generated dataset, and the best flow beamflow has, run end to end.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use crate::local::{Local, LocalOptions};
use crate::site::SiteConfig;
use crate::store::{Durability, RunDetail};

pub const DEMO_FLOW: &str = include_str!("../../jobs/demo.toml");

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
    let data = local.home.join("demo-data");
    generate_frames(&data, 16, 256 * 1024)?;
    println!("generated 16 detector frames (4 MiB) in {}", data.display());
    let flow_path = local.home.join("demo.toml");
    std::fs::write(&flow_path, DEMO_FLOW)?;
    let (name, version, _) = local.client.register(&flow_path).await?;
    println!("registered flow {name} v{version}: stage (transfer) → summarise (shell) → publish");
    let ids = local
        .client
        .submit(
            &name,
            None,
            vec![json!({ "src": data.display().to_string(), "sample": "silica-demo" })],
        )
        .await?;
    let runs = local
        .client
        .wait(&ids, true, Some(std::time::Duration::from_secs(300)))
        .await?;
    let d: RunDetail = local.client.get(&format!("/api/runs/{}", ids[0])).await?;
    let t = crate::report::timing(&d);
    println!(
        "\nrun {} {}:\n{}",
        ids[0],
        runs[0].state,
        crate::report::table(&t)
    );
    if let Some(err) = &runs[0].error {
        println!("error: {err}");
    }
    let hits: Vec<Value> = local.client.get("/api/catalog?q=silica").await?;
    if let Some(h) = hits.first() {
        let r = &h["record"];
        println!(
            "\ncatalog record {}: {}",
            h["id"],
            r["title"].as_str().unwrap_or("")
        );
        println!("  outputs: {}", r["outputs"]);
        for f in r["files"].as_array().into_iter().flatten() {
            println!(
                "  file: {} ({} bytes, blake3 {})",
                f["path"].as_str().unwrap_or(""),
                f["bytes"],
                f["blake3"].as_str().unwrap_or("").get(..16).unwrap_or("")
            );
        }
    }
    let ok = runs.iter().all(|r| r.state == "succeeded");
    local.stop().await?;
    anyhow::ensure!(ok, "the demo run did not succeed");
    println!("\ndemo finished: the run succeeded; its files and record were checked end to end.");
    Ok(())
}
