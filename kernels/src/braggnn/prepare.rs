//! Training patches from real frames: each peak of a `hedm.peaks` table
//! (the pseudo-Voigt fit gives the label, as upstream's labels are MIDAS
//! fits) cut from its frame around the brightest pixel next to the fitted
//! centre, cleaned of neighbours as at inference, with `aug` pixels of
//! margin for shifted crops. Only peaks the network can learn from are
//! kept: alone in their region (upstream keeps `npeaks == 1`), converged,
//! clear of the mask and of the frame's edge.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::patches::FrameView;
use crate::hedm::config::Config as Search;
use crate::hedm::fit::COLUMNS;
use crate::hedm::io::{read_peaks_h5, Stack};
use crate::hedm::regions::Scratch;
use crate::synthetic::braggnn::PatchSet;

/// What was kept and why the rest was not.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Prepared {
    pub peaks: usize,
    pub kept: usize,
    pub crowded: usize,
    pub not_converged: usize,
    pub masked: usize,
    pub edge: usize,
    /// The fitted centre lies more than 1.5 px from the window's centre.
    pub off_centre: usize,
}

fn column(name: &str) -> usize {
    COLUMNS
        .iter()
        .position(|c| *c == name)
        .expect("a hedm.peaks column")
}

/// Cuts `psz` patches (with `aug` px of margin) for the peaks of the
/// table `peaks` from the frames `search` names, corrected and thresholded
/// with `search`'s settings.
pub fn from_fits(
    search: &Search,
    peaks: &Path,
    psz: usize,
    aug: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(PatchSet, Prepared), String> {
    super::model::check_psz(psz)?;
    let rows = read_peaks_h5(peaks)?;
    let stack = Stack::open(&search.frames, search.dataset.as_deref())?;
    let o = search.options(stack.rows, stack.cols)?;
    o.check_images(stack.rows, stack.cols)?;
    let corr = o.corrections();
    let [frame, y, z, npk, rc, mask] = [
        "Frame",
        "YCen",
        "ZCen",
        "nPeaks",
        "returnCode",
        "maskTouched",
    ]
    .map(column);
    let mut st = Prepared {
        peaks: rows.len(),
        ..Prepared::default()
    };
    let mut by_frame: BTreeMap<usize, Vec<[f64; 2]>> = BTreeMap::new();
    for r in &rows {
        if r[npk] != 1.0 {
            st.crowded += 1;
        } else if r[rc] != 0.0 {
            st.not_converged += 1;
        } else if r[mask] != 0.0 {
            st.masked += 1;
        } else {
            let f = r[frame];
            if f < 0.0 || f as usize >= stack.frames {
                return Err(format!(
                    "{}: a peak of frame {f}, but {} has {} frames",
                    peaks.display(),
                    stack.path().display(),
                    stack.frames
                ));
            }
            by_frame.entry(f as usize).or_default().push([r[y], r[z]]);
        }
    }
    let side = psz + 2 * aug;
    let mut set = PatchSet {
        psz,
        aug,
        pixels: Vec::new(),
        centres: Vec::new(),
    };
    let mut scratch = Scratch::default();
    let mut window = vec![0f32; side * side];
    let total = by_frame.len();
    for (done, (f, centres)) in by_frame.into_iter().enumerate() {
        let raw = stack.frame(f)?;
        o.correct(&raw, stack.rows, stack.cols, &mut scratch);
        let view = FrameView {
            raw: &raw,
            img: &scratch.img,
            rows: stack.rows,
            cols: stack.cols,
            corr,
        };
        for [row, col] in centres {
            let at = view.brightest_near(row, col, 1);
            let cut = view.cut(at, side, &mut window);
            let label = [row - cut.corner[0] as f64, col - cut.corner[1] as f64];
            let mid = (side / 2) as f64;
            if cut.edge {
                st.edge += 1;
            } else if (label[0] - mid).abs() > 1.5 || (label[1] - mid).abs() > 1.5 {
                st.off_centre += 1;
            } else {
                set.pixels.extend_from_slice(&window);
                set.centres.push(label);
                st.kept += 1;
            }
        }
        progress(done + 1, total);
    }
    if set.is_empty() {
        return Err(format!(
            "{}: no usable peak (of {}: {} crowded, {} not converged, {} masked, {} at the edge, {} off centre)",
            peaks.display(),
            st.peaks,
            st.crowded,
            st.not_converged,
            st.masked,
            st.edge,
            st.off_centre
        ));
    }
    Ok((set, st))
}

/// [`from_fits`], written to `OUT/NAME_patches.h5` (the search's output
/// directory and base name).
pub fn run(
    search: &Search,
    peaks: &Path,
    psz: usize,
    aug: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(PathBuf, Prepared), String> {
    let (set, st) = from_fits(search, peaks, psz, aug, progress)?;
    std::fs::create_dir_all(&search.out)
        .map_err(|e| format!("{}: cannot create: {e}", search.out.display()))?;
    let [file] = search.outputs(["patches.h5"]);
    super::io::write(&file, &set)?;
    Ok((file, st))
}
