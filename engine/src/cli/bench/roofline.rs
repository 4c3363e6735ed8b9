//! The roofline PNG: attainable GFLOP/s against arithmetic intensity
//! (FLOP/byte, log–log) — the bandwidth slope meeting the SGEMM peak — with
//! every kernel that counts FLOPs placed at its intensity and achieved rate.

use std::path::Path;

use plotters::prelude::*;

use super::suite::Report;

fn fail(path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{}: cannot draw: {e}", path.display())
}

pub fn plot(r: &Report, path: &Path) -> anyhow::Result<()> {
    beamflow_kernels::figure::font().map_err(|e| anyhow::anyhow!(e))?;
    let (bw, peak) = (r.machine.triad_gbs, r.machine.sgemm_gflops);
    anyhow::ensure!(
        bw > 0.0 && peak > 0.0,
        "the machine's roofs were not measured"
    );
    let placed: Vec<_> = r.results.iter().filter(|x| x.intensity > 0.0).collect();
    // The axes span the ridge point and every kernel, with a decade to spare.
    let ridge = peak / bw;
    let (mut x0, mut x1) = (ridge / 100.0, ridge * 100.0);
    let (mut y0, y1) = (peak / 1e4, peak * 3.0);
    for p in &placed {
        x0 = x0.min(p.intensity / 3.0);
        x1 = x1.max(p.intensity * 3.0);
        y0 = y0.min(p.gflops.max(1e-6) / 3.0);
    }
    let root = BitMapBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} ({} threads): {:.1} GB/s triad, {:.0} GFLOP/s SGEMM",
                r.machine.cpu_model, r.machine.threads, bw, peak
            ),
            ("sans-serif", 18),
        )
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(|e| fail(path, e))?;
    chart
        .configure_mesh()
        .x_desc("arithmetic intensity, FLOP/byte")
        .y_desc("GFLOP/s")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| fail(path, e))?;
    let roof: Vec<(f64, f64)> = (0..=200)
        .map(|i| {
            let x = x0 * (x1 / x0).powf(i as f64 / 200.0);
            (x, peak.min(bw * x))
        })
        .collect();
    chart
        .draw_series(LineSeries::new(roof, BLACK.stroke_width(2)))
        .map_err(|e| fail(path, e))?;
    for (i, p) in placed.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let label = format!(
            "{} {} ({:.0} %)",
            p.kernel,
            p.backend,
            100.0 * p.roofline_fraction.unwrap_or(0.0)
        );
        chart
            .draw_series([Circle::new((p.intensity, p.gflops), 6, colour.filled())])
            .map_err(|e| fail(path, e))?
            .label(label)
            .legend(move |(x, y)| Circle::new((x + 8, y), 5, colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| fail(path, e))?;
    root.present().map_err(|e| fail(path, e))?;
    Ok(())
}
