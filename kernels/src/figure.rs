//! Drawing every kernel's figures share, so that each reads the same way:
//! the labels' font, false-colour images with their axes and a colour bar
//! that names the quantity, its units and whether it is a logarithm,
//! legends in a strip of their own (never over the data), and ticks a
//! reader can read on log axes.
//!
//! The figure functions return the texts they drew (title, axis and bar
//! labels, legend entries); the tests check those beside the pixels.

use std::path::Path;
use std::sync::OnceLock;

use ndarray::Array2;
use plotters::coord::ranged1d::{AsRangedCoord, DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

/// Where the labels' font is looked for (Debian's fonts-dejavu-core first).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a sans-serif font once; plotters has no built-in font.
pub fn font() -> Result<(), String> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let env = std::env::var("BEAMFLOW_FONT").ok();
        let candidates = env
            .iter()
            .map(String::as_str)
            .chain(FONT_PATHS.iter().copied());
        for path in candidates {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                    .map_err(|_| format!("{path}: not a usable TrueType font"));
            }
        }
        Err(format!(
            "no font for plot labels: tried {} (install fonts-dejavu-core or set BEAMFLOW_FONT)",
            FONT_PATHS.join(", ")
        ))
    })
    .clone()
}

pub(crate) fn fail(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: cannot draw: {e}", path.display())
}

/// Output size of an `h` × `w` image whose longer side becomes `side`.
pub(crate) fn fit_side(h: usize, w: usize, side: u32) -> (u32, u32) {
    if w >= h {
        (side, ((side as usize * h) / w).max(1) as u32)
    } else {
        (((side as usize * w) / h).max(1) as u32, side)
    }
}

/// How an image's values become colours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    Linear,
    /// log₁₀ of the value; zero and negative pixels take the smallest
    /// positive value (the darkest colour).
    Log10,
    /// log₁₀(1 + value), negatives as 0: raw counts with many zeros.
    Log10Plus1,
}

impl Scale {
    fn apply(self, values: &Array2<f32>) -> Array2<f32> {
        match self {
            Scale::Linear => values.clone(),
            Scale::Log10 => {
                let floor = values
                    .iter()
                    .copied()
                    .filter(|&v| v > 0.0)
                    .fold(f32::INFINITY, f32::min);
                let floor = if floor.is_finite() { floor } else { 1.0 };
                values.mapv(|v| v.max(floor).log10())
            }
            Scale::Log10Plus1 => values.mapv(|v| (v.max(0.0) + 1.0).log10()),
        }
    }

    /// The colour bar's label for `quantity` (with its units) on this scale.
    pub fn label(self, quantity: &str) -> String {
        match self {
            Scale::Linear => quantity.to_string(),
            Scale::Log10 => format!("log₁₀ {quantity}"),
            Scale::Log10Plus1 => format!("log₁₀(1 + {quantity})"),
        }
    }
}

/// What a false-colour figure says about its image.
#[derive(Clone, Debug)]
pub struct Heat {
    pub title: String,
    /// The columns' axis label, with units.
    pub x: String,
    /// The rows' axis label, with units.
    pub y: String,
    /// What the colour shows, with units; [`Scale::label`] adds the scale.
    pub quantity: String,
    pub scale: Scale,
    /// Row 0 at the bottom (a two-time map's origin) instead of the top
    /// (a detector image's).
    pub y_up: bool,
    /// Positions (row, column) circled in red; the title says what they are.
    pub marks: Vec<(f64, f64)>,
}

/// The title band's height.
pub(crate) const TITLE_H: u32 = 30;
/// The legend strip's height.
pub(crate) const LEGEND_H: u32 = 28;
const X_AXIS: u32 = 46;
const Y_AXIS: u32 = 64;
const GAP: u32 = 14;
const BAR: u32 = 20;
const BAR_AXIS: u32 = 76;
/// Room outside the rotated axis labels, which plotters draws at the
/// very edge of their areas.
const EDGE: u32 = 12;

/// The figure's pixel size for an `h` × `w` image drawn `side` px long.
fn heat_size(h: usize, w: usize, side: u32) -> (u32, u32) {
    let (iw, ih) = fit_side(h, w, side);
    (
        EDGE + Y_AXIS + iw + GAP + BAR + BAR_AXIS + EDGE,
        TITLE_H + ih + X_AXIS,
    )
}

/// Writes `values` as a labelled false-colour PNG: title, axes with ticks,
/// and a colour bar; the image's longer side is `side` px.
pub fn heat_figure(
    path: &Path,
    values: &Array2<f32>,
    side: u32,
    heat: &Heat,
) -> Result<Vec<String>, String> {
    font()?;
    let (h, w) = values.dim();
    if h == 0 || w == 0 {
        return Err(fail(path, "empty image"));
    }
    let root = BitMapBackend::new(path, heat_size(h, w, side)).into_drawing_area();
    let texts = draw_heat_figure(&root, values, side, heat).map_err(|e| fail(path, e))?;
    root.present().map_err(|e| fail(path, e))?;
    Ok(texts)
}

/// A plain false-colour PNG (no text): catalog thumbnails.
pub fn thumbnail(path: &Path, values: &Array2<f32>, side: u32, scale: Scale) -> Result<(), String> {
    let (h, w) = values.dim();
    if h == 0 || w == 0 {
        return Err(fail(path, "empty image"));
    }
    let size = fit_side(h, w, side);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    let scaled = scale.apply(values);
    let range = finite_range(&scaled);
    paint(&root, &scaled, size, range, false).map_err(|e| fail(path, e))?;
    root.present().map_err(|e| fail(path, e))
}

fn err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> String {
    e.to_string()
}

/// The finite values' range, widened where it is empty.
fn finite_range(v: &Array2<f32>) -> (f32, f32) {
    let (lo, hi) = v
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        (0.0, 1.0)
    } else if hi > lo {
        (lo, hi)
    } else {
        (lo - 0.5, lo + 0.5)
    }
}

/// Paints `scaled` (nearest pixel, viridis over `range`) onto `area` of
/// size `out`; `y_up` puts row 0 at the bottom.
fn paint<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    scaled: &Array2<f32>,
    out: (u32, u32),
    (lo, hi): (f32, f32),
    y_up: bool,
) -> Result<(), String> {
    let (h, w) = scaled.dim();
    let (out_w, out_h) = out;
    for y in 0..out_h {
        let r = y as usize * h / out_h as usize;
        let r = if y_up { h - 1 - r } else { r };
        for x in 0..out_w {
            let v = scaled[[r, x as usize * w / out_w as usize]];
            let t = if v.is_finite() {
                (v - lo) / (hi - lo)
            } else {
                0.0
            };
            area.draw_pixel((x as i32, y as i32), &ViridisRGB::get_color(f64::from(t)))
                .map_err(err)?;
        }
    }
    Ok(())
}

/// Draws the title centred in the band `top`.
pub(crate) fn title_band<DB: DrawingBackend>(
    top: &DrawingArea<DB, Shift>,
    text: &str,
) -> Result<(), String> {
    let (w, h) = top.dim_in_pixel();
    let style = ("sans-serif", 16)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Center));
    top.draw_text(text, &style, (w as i32 / 2, h as i32 / 2))
        .map_err(err)
}

pub(crate) fn draw_heat_figure<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    values: &Array2<f32>,
    side: u32,
    heat: &Heat,
) -> Result<Vec<String>, String> {
    root.fill(&WHITE).map_err(err)?;
    let (h, w) = values.dim();
    let (iw, ih) = fit_side(h, w, side);
    let scaled = heat.scale.apply(values);
    let (lo, hi) = finite_range(&scaled);
    let (top, body) = root.split_vertically(TITLE_H);
    title_band(&top, &heat.title)?;
    let (main, bar) = body.split_horizontally(EDGE + Y_AXIS + iw + GAP);

    // Plotters' y axis points up: an image's row r sits at y = h − r.
    let (hf, wf) = (h as f64, w as f64);
    let rows = nice_ticks(0.0, hf, 6);
    let row_keys: Vec<f64> = if heat.y_up {
        rows
    } else {
        rows.iter().map(|r| hf - r).collect()
    };
    let mut chart = ChartBuilder::on(&main)
        .margin_left(EDGE)
        .margin_right(GAP)
        .x_label_area_size(X_AXIS)
        .y_label_area_size(Y_AXIS)
        .build_cartesian_2d(
            ticked(0.0..wf, nice_ticks(0.0, wf, 6)),
            ticked(0.0..hf, row_keys),
        )
        .map_err(err)?;
    let y_up = heat.y_up;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(heat.x.as_str())
        .y_desc(heat.y.as_str())
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 13))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{:.0}", if y_up { *y } else { hf - y }))
        .draw()
        .map_err(err)?;
    let plot = chart.plotting_area().strip_coord_spec();
    paint(&plot, &scaled, (iw, ih), (lo, hi), heat.y_up)?;
    let radius = ((4.0 * f64::from(iw) / wf).round() as i32).max(4);
    chart
        .draw_series(heat.marks.iter().map(|&(r, c)| {
            let y = if heat.y_up { r + 0.5 } else { hf - r - 0.5 };
            Circle::new((c + 0.5, y), radius, RED.stroke_width(2))
        }))
        .map_err(err)?;

    // The colour bar, its ends level with the image's.
    let label = heat.scale.label(&heat.quantity);
    let mut scale = ChartBuilder::on(&bar)
        .margin_bottom(X_AXIS)
        .margin_right(EDGE)
        .right_y_label_area_size(BAR_AXIS)
        .build_cartesian_2d(0f64..1f64, f64::from(lo)..f64::from(hi))
        .map_err(err)?;
    let strip = scale.plotting_area().strip_coord_spec();
    let (bw, bh) = strip.dim_in_pixel();
    for y in 0..bh {
        let t = 1.0 - f64::from(y) / f64::from(bh.max(2) - 1);
        for x in 0..bw {
            strip
                .draw_pixel((x as i32, y as i32), &ViridisRGB::get_color(t))
                .map_err(err)?;
        }
    }
    scale
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .set_tick_mark_size(plotters::chart::LabelAreaPosition::Right, 5)
        .y_labels(6)
        .y_desc(label.as_str())
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 13))
        .y_label_formatter(&|v| tick_label(*v))
        .draw()
        .map_err(err)?;
    Ok(vec![
        heat.title.clone(),
        heat.x.clone(),
        heat.y.clone(),
        label,
    ])
}

/// How a legend entry's key is drawn.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Key {
    Dot(RGBColor),
    Line(RGBColor),
    Dashed(RGBColor),
}

/// Draws `entries` left to right in the strip `area`, below the data it
/// explains, so that it never covers a curve.
pub(crate) fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(Key, String)],
) -> Result<(), String> {
    let (_, h) = area.dim_in_pixel();
    let y = h as i32 / 2;
    let style = ("sans-serif", 13)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let mut x = 12;
    for (key, text) in entries {
        match *key {
            Key::Dot(c) => area
                .draw(&Circle::new((x + 10, y), 4, c.filled()))
                .map_err(err)?,
            Key::Line(c) => area
                .draw(&PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)))
                .map_err(err)?,
            Key::Dashed(c) => {
                for s in [0, 8, 16] {
                    area.draw(&PathElement::new(
                        [(x + s, y), (x + s + 5, y)],
                        c.stroke_width(2),
                    ))
                    .map_err(err)?;
                }
            }
        }
        area.draw_text(text, &style, (x + 26, y)).map_err(err)?;
        let (tw, _) = area.estimate_text_size(text, &style).map_err(err)?;
        x += 26 + tw as i32 + 24;
    }
    Ok(())
}

/// An f64 axis (linear or log) ticked at given positions. Plotters' own
/// `with_key_points` drops the f64 axes' label formatting; this keeps it,
/// and the chart's `*_label_formatter` writes each tick.
pub(crate) struct Ticked<R> {
    inner: R,
    ticks: Vec<f64>,
}

/// `range` (`lo..hi`, or `(lo..hi).log_scale()`) ticked at `ticks`.
pub(crate) fn ticked<R: AsRangedCoord<Value = f64>>(
    range: R,
    ticks: Vec<f64>,
) -> Ticked<R::CoordDescType> {
    Ticked {
        inner: range.into(),
        ticks,
    }
}

impl<R: Ranged<ValueType = f64>> Ranged for Ticked<R> {
    type ValueType = f64;
    type FormatOption = DefaultFormatting;

    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    /// The ticks, as bold points; no light grid between them.
    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn axis_pixel_range(&self, limit: (i32, i32)) -> std::ops::Range<i32> {
        self.inner.axis_pixel_range(limit)
    }
}

/// Round tick positions (1, 2 or 5 × 10ᵏ apart) covering [lo, hi], about `n`.
pub fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) || n == 0 {
        return vec![lo];
    }
    let raw = (hi - lo) / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| s >= &raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// Tick positions on a log axis over [lo, hi]: the decades, and 2 and 5
/// (then every digit) between them until there are at least three, so an
/// axis spanning less than a decade still reads.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if lo.is_nan() || hi.is_nan() || lo <= 0.0 || hi <= lo {
        return vec![];
    }
    let within = |mantissas: &[f64]| -> Vec<f64> {
        let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        (a..=b)
            // m / 10ⁿ rounds once, so 0.6 is 0.6 (m · 0.1 is not).
            .flat_map(|k| {
                mantissas.iter().map(move |m| {
                    if k < 0 {
                        m / 10f64.powi(-k)
                    } else {
                        m * 10f64.powi(k)
                    }
                })
            })
            .filter(|v| *v >= lo * (1.0 - 1e-9) && *v <= hi * (1.0 + 1e-9))
            .collect()
    };
    for mantissas in [
        &[1.0][..],
        &[1.0, 2.0, 5.0],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    ] {
        let t = within(mantissas);
        if t.len() >= 3 {
            return t;
        }
    }
    within(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
}

/// A tick's label: as many decimals as its size needs, at most three
/// significant figures (0.05, 0.2, 3, 1500).
pub fn tick_label(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let decimals = (2 - v.abs().log10().floor() as i32).clamp(0, 12) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use plotters::backend::BitMapBackend;

    /// An RGB buffer's pixel.
    pub(crate) fn px(buf: &[u8], width: u32, x: u32, y: u32) -> (u8, u8, u8) {
        let i = 3 * (y * width + x) as usize;
        (buf[i], buf[i + 1], buf[i + 2])
    }

    /// Pixels of text (near black) in the rectangle x0..x1 × y0..y1.
    pub(crate) fn inked(
        buf: &[u8],
        width: u32,
        (x0, x1): (u32, u32),
        (y0, y1): (u32, u32),
    ) -> usize {
        (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let (r, g, b) = px(buf, width, x, y);
                r < 110 && g < 110 && b < 110
            })
            .count()
    }

    fn heat(title: &str) -> Heat {
        Heat {
            title: title.into(),
            x: if title.is_empty() {
                ""
            } else {
                "column (pixel)"
            }
            .into(),
            y: if title.is_empty() { "" } else { "row (pixel)" }.into(),
            quantity: if title.is_empty() { "" } else { "counts" }.into(),
            scale: Scale::Linear,
            y_up: false,
            marks: vec![],
        }
    }

    /// Renders a 40 × 80 ramp; returns the buffer, its size and the texts.
    fn render(h: &Heat) -> (Vec<u8>, (u32, u32), Vec<String>) {
        font().unwrap();
        let img = Array2::from_shape_fn((40, 80), |(r, _)| r as f32);
        let size = heat_size(40, 80, 320);
        let mut buf = vec![0u8; (3 * size.0 * size.1) as usize];
        let texts = {
            let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
            let t = draw_heat_figure(&root, &img, 320, h).unwrap();
            root.present().unwrap();
            t
        };
        (buf, size, texts)
    }

    /// The title, both axis labels and the colour bar's label are drawn
    /// where they belong, and the bar runs from the image's lowest value
    /// (dark, bottom) to its highest (bright, top); with no texts those
    /// places stay blank.
    #[test]
    fn a_heat_figure_has_its_title_axes_and_colour_bar() {
        let (buf, (w, h), texts) = render(&Heat {
            scale: Scale::Log10,
            ..heat("raw.h5: time-averaged scattering")
        });
        assert_eq!(
            texts,
            [
                "raw.h5: time-averaged scattering",
                "column (pixel)",
                "row (pixel)",
                "log₁₀ counts"
            ]
        );
        // The title's band above the image (not the tick labels that
        // reach into it), the axis labels beyond the tick labels.
        let band = (EDGE + Y_AXIS + 40, EDGE + Y_AXIS + 280);
        let title = inked(&buf, w, band, (0, TITLE_H - 8));
        let y_axis = inked(&buf, w, (0, EDGE + 20), (TITLE_H, h - X_AXIS));
        let x_desc = inked(&buf, w, band, (h - 20, h));
        let bar_desc = inked(&buf, w, (w - EDGE - 22, w), (TITLE_H, h - X_AXIS));
        assert!(title > 50 && y_axis > 20 && x_desc > 20 && bar_desc > 20);
        // Bar: bright at the top, dark at the bottom.
        let bx = EDGE + Y_AXIS + 320 + GAP + BAR / 2;
        let (r_top, g_top, _) = px(&buf, w, bx, TITLE_H + 2);
        let (r_bot, g_bot, b_bot) = px(&buf, w, bx, h - X_AXIS - 2);
        assert!(r_top > 200 && g_top > 200, "viridis top is yellow");
        assert!(
            r_bot < 90 && g_bot < 40 && b_bot > 60,
            "viridis bottom is purple"
        );

        let (blank, _, _) = render(&heat(""));
        assert_eq!(inked(&blank, w, band, (0, TITLE_H - 8)), 0);
        assert_eq!(inked(&blank, w, (0, EDGE + 20), (TITLE_H, h - X_AXIS)), 0);
        assert_eq!(
            inked(&blank, w, (w - EDGE - 22, w), (TITLE_H, h - X_AXIS)),
            0
        );
    }

    /// Row 0 is at the top of an image and at the bottom of a `y_up` map.
    #[test]
    fn rows_run_down_an_image_and_up_a_map() {
        let (down, (w, _), _) = render(&heat("t"));
        let (up, _, _) = render(&Heat {
            y_up: true,
            ..heat("t")
        });
        let x = EDGE + Y_AXIS + 100;
        let top = TITLE_H + 11; // plotters leaves a pixel or so above the plot
                                // Row 0 holds the ramp's lowest value: dark purple.
        assert!(px(&down, w, x, top).1 < 60, "{:?}", px(&down, w, x, top));
        assert!(px(&up, w, x, top).1 > 180, "{:?}", px(&up, w, x, top));
    }

    /// A mark is a red circle centred on its pixel (row 10, column 60 of
    /// 40 × 80 drawn 4 px a pixel), nowhere else.
    #[test]
    fn marks_are_circled_on_their_pixel() {
        let (buf, (w, _), _) = render(&Heat {
            marks: vec![(10.0, 60.0)],
            ..heat("t")
        });
        let red = |(x0, x1): (u32, u32), (y0, y1): (u32, u32)| {
            (y0..y1)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .filter(|&(x, y)| {
                    let (r, g, b) = px(&buf, w, x, y);
                    r > 200 && g < 60 && b < 60
                })
                .count()
        };
        let (cx, cy) = (EDGE + Y_AXIS + 242, TITLE_H + 42);
        assert!(red((cx - 22, cx + 22), (cy - 22, cy + 22)) > 40);
        assert_eq!(
            red((cx - 4, cx + 4), (cy - 4, cy + 4)),
            0,
            "a ring, not a disc"
        );
        assert_eq!(
            red(
                (EDGE + Y_AXIS, EDGE + Y_AXIS + 160),
                (TITLE_H, TITLE_H + 160)
            ),
            0
        );
    }

    #[test]
    fn scales_name_themselves() {
        assert_eq!(Scale::Linear.label("phase (rad)"), "phase (rad)");
        assert_eq!(Scale::Log10.label("counts"), "log₁₀ counts");
        assert_eq!(Scale::Log10Plus1.label("counts"), "log₁₀(1 + counts)");
    }

    #[test]
    fn ticks_are_round_and_a_short_log_axis_still_has_three() {
        assert_eq!(
            nice_ticks(0.0, 512.0, 6),
            [0.0, 100.0, 200.0, 300.0, 400.0, 500.0]
        );
        assert_eq!(nice_ticks(0.0, 40.0, 6), [0.0, 10.0, 20.0, 30.0, 40.0]);
        let decades = log_ticks(1e-3, 2.0);
        assert_eq!(decades.len(), 4, "{decades:?}");
        for (t, want) in decades.iter().zip([1e-3, 1e-2, 1e-1, 1.0]) {
            assert!((t / want - 1.0).abs() < 1e-12, "{decades:?}");
        }
        let short = log_ticks(0.03, 0.25);
        assert_eq!(short.len(), 3, "{short:?}");
        let labels: Vec<String> = short.iter().map(|&v| tick_label(v)).collect();
        assert_eq!(labels, ["0.05", "0.1", "0.2"]);
        // Narrower than 1-2-5 can tick: every digit.
        assert_eq!(log_ticks(0.31, 0.72), [0.4, 0.5, 0.6, 0.7]);
        assert_eq!(tick_label(1500.0), "1500");
        assert_eq!(tick_label(2.5), "2.5");
        assert_eq!(tick_label(0.0123456), "0.0123");
    }
}
