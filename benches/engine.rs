//! Criterion micro-benchmarks of the engine's hot paths. Whole-engine
//! throughput and latency are `beamflow bench engine`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;

use beamflow::cli::local::{Local, LocalOptions};
use beamflow::site::SiteConfig;
use beamflow::store::Durability;

fn flow_validation(c: &mut Criterion) {
    let src = beamflow::cli::demo::DEMO_FLOW;
    c.bench_function("flow/parse_and_validate_demo", |b| {
        b.iter(|| beamflow::flow::parse(std::hint::black_box(src), "demo.toml", None).unwrap())
    });
    let spec = beamflow::flow::parse(src, "demo.toml", None).unwrap();
    let ctx = json!({
        "input": {"src": "/data/x", "sample": "s"},
        "run": {"id": 1, "dir": "/runs/1", "flow": "demo"},
        "task": {"id": 3, "dir": "/runs/1/steps/publish/attempt-1", "attempt": 1},
        "site": {"name": "local"},
        "steps": {"stage": {"outputs": {"dst": "/runs/1/raw"}}, "summarise": {"outputs": {"files": 16, "bytes": 4, "digest": "ab", "stdout": "/o"}}},
    });
    let params = spec.steps[2].params.clone();
    c.bench_function("flow/render_publish_params", |b| {
        b.iter(|| beamflow::flow::template::render(std::hint::black_box(&params), &ctx).unwrap())
    });
}

fn noop_runs(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = rt.block_on(async {
        let l = Local::start(LocalOptions {
            home: None,
            pilots: 1,
            cpus: None,
            prefetch: None,
            durability: Durability::Normal,
            site: SiteConfig::local(),
        })
        .await
        .unwrap();
        let src = "name = \"n\"\nversion = 1\n[[steps]]\nname = \"a\"\naction = \"kernel\"\nkernel = \"noop\"\n";
        l.client.register_source(src, "<bench>").await.unwrap();
        l
    });
    let mut g = c.benchmark_group("engine");
    g.sample_size(10);
    let n = 500;
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("noop_runs_500_submit_to_done", |b| {
        b.iter(|| {
            rt.block_on(async {
                let ids = local
                    .client
                    .submit("n", None, vec![json!({}); n])
                    .await
                    .unwrap();
                local.client.wait(&ids, false, None).await.unwrap();
            })
        })
    });
    g.finish();
    rt.block_on(local.stop()).unwrap();
}

criterion_group!(benches, flow_validation, noop_runs);
criterion_main!(benches);
