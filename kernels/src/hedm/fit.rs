//! Joint fit of every region's peaks and MIDAS's per-peak output columns.

use rayon::prelude::*;
use serde::Serialize;

use super::init::{self, Geometry};
use super::lm::{self, LmOptions, Workspace};
use super::model::{self, SLOTS};
use super::regions::{self, Region};

/// One fitted peak: MIDAS's `AllPeaks_PS` columns, in its order.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Peak {
    #[serde(rename = "SpotID")]
    pub spot_id: u64,
    pub integrated_intensity: f64,
    pub omega: f64,
    /// Fitted centre (row, col), pixel centres at integers.
    pub y_cen: f64,
    pub z_cen: f64,
    #[serde(rename = "IMax")]
    pub imax: f64,
    pub radius: f64,
    pub eta: f64,
    pub sigma_r: f64,
    pub sigma_eta: f64,
    pub nr_pixels: u32,
    pub nr_px_tot: u32,
    #[serde(rename = "nPeaks")]
    pub n_peaks: u32,
    #[serde(rename = "maxY")]
    pub max_y: f64,
    #[serde(rename = "maxZ")]
    pub max_z: f64,
    #[serde(rename = "diffY")]
    pub diff_y: f64,
    #[serde(rename = "diffZ")]
    pub diff_z: f64,
    #[serde(rename = "rawIMax")]
    pub raw_imax: f64,
    #[serde(rename = "returnCode")]
    pub return_code: i32,
    #[serde(rename = "retVal")]
    pub ret_val: f64,
    #[serde(rename = "BG")]
    pub bg: f64,
    #[serde(rename = "SigmaGR")]
    pub sigma_gr: f64,
    #[serde(rename = "SigmaLR")]
    pub sigma_lr: f64,
    pub sigma_g_eta: f64,
    pub sigma_l_eta: f64,
    #[serde(rename = "MU")]
    pub mu: f64,
    pub raw_sum_intensity: f64,
    pub mask_touched: u8,
    #[serde(rename = "FitRMSE")]
    pub fit_rmse: f64,
    /// Frame index in the stack (not a MIDAS column).
    #[serde(rename = "Frame")]
    pub frame: u32,
}

/// Column names, as in the CSV header.
pub const COLUMNS: [&str; 30] = [
    "SpotID",
    "IntegratedIntensity",
    "Omega",
    "YCen",
    "ZCen",
    "IMax",
    "Radius",
    "Eta",
    "SigmaR",
    "SigmaEta",
    "NrPixels",
    "NrPxTot",
    "nPeaks",
    "maxY",
    "maxZ",
    "diffY",
    "diffZ",
    "rawIMax",
    "returnCode",
    "retVal",
    "BG",
    "SigmaGR",
    "SigmaLR",
    "SigmaGEta",
    "SigmaLEta",
    "MU",
    "RawSumIntensity",
    "maskTouched",
    "FitRMSE",
    "Frame",
];

impl Peak {
    /// The row as numbers, in [`COLUMNS`] order.
    pub fn values(&self) -> [f64; 30] {
        [
            self.spot_id as f64,
            self.integrated_intensity,
            self.omega,
            self.y_cen,
            self.z_cen,
            self.imax,
            self.radius,
            self.eta,
            self.sigma_r,
            self.sigma_eta,
            self.nr_pixels as f64,
            self.nr_px_tot as f64,
            self.n_peaks as f64,
            self.max_y,
            self.max_z,
            self.diff_y,
            self.diff_z,
            self.raw_imax,
            self.return_code as f64,
            self.ret_val,
            self.bg,
            self.sigma_gr,
            self.sigma_lr,
            self.sigma_g_eta,
            self.sigma_l_eta,
            self.mu,
            self.raw_sum_intensity,
            self.mask_touched as f64,
            self.fit_rmse,
            self.frame as f64,
        ]
    }
}

/// Where the fit happens and how the columns are computed.
#[derive(Clone, Copy, Debug)]
pub struct FitOptions {
    pub geometry: Geometry,
    /// Beam centre (row, col) for the Radius/Eta columns in cartesian mode.
    pub centre: (f64, f64),
    pub lm: LmOptions,
}

/// Fits one region; peaks come back in the region's maxima order.
pub fn fit_region(
    reg: &Region,
    o: &FitOptions,
    omega: f64,
    frame: u32,
    ws: &mut Workspace,
) -> (Vec<Peak>, lm::Fit) {
    let (u, v) = regions::coords(reg, o.geometry);
    let start = init::start(o.geometry, &u, &v, &reg.z, &reg.maxima, reg.threshold);
    let mut x = start.x;
    let f = lm::fit(&mut x, &start.lo, &start.hi, &u, &v, &reg.z, &o.lm, ws);
    (columns(reg, o, &x, &u, &v, &f, omega, frame), f)
}

#[allow(clippy::too_many_arguments)]
fn columns(
    reg: &Region,
    o: &FitOptions,
    x: &[f64],
    u: &[f64],
    v: &[f64],
    f: &lm::Fit,
    omega: f64,
    frame: u32,
) -> Vec<Peak> {
    let n = reg.maxima.len();
    let bg = x[0];
    let rmse = f.sse.sqrt();
    let imax_sum: f64 = (0..n).map(|j| x[1 + SLOTS * j]).sum();
    let zsum: f64 = reg.z.iter().sum();
    (0..n)
        .map(|j| {
            let p = &x[1 + SLOTS * j..1 + SLOTS * (j + 1)];
            let (mut integrated, mut npx) = (0.0, 0u32);
            for i in 0..u.len() {
                let val = model::peak(p, u[i], v[i]);
                if val > bg {
                    integrated += val + bg;
                    npx += 1;
                } else {
                    integrated += val;
                }
            }
            let (row, col) = o.geometry.pixel(p[1], p[2]);
            let (radius, eta) = match o.geometry {
                Geometry::Polar { .. } => (p[1], p[2]),
                Geometry::Cartesian => Geometry::Polar {
                    row0: o.centre.0,
                    col0: o.centre.1,
                }
                .coords(row, col),
            };
            let m = reg.maxima[j];
            let (max_y, max_z) = (reg.rows[m] as f64, reg.cols[m] as f64);
            Peak {
                spot_id: 0,
                integrated_intensity: integrated,
                omega,
                y_cen: row,
                z_cen: col,
                imax: p[0],
                radius,
                eta,
                sigma_r: p[4].max(p[5]),
                sigma_eta: p[6].max(p[7]),
                nr_pixels: npx,
                nr_px_tot: reg.z.len() as u32,
                n_peaks: n as u32,
                max_y,
                max_z,
                diff_y: max_y - row,
                diff_z: max_z - col,
                raw_imax: reg.z[m],
                return_code: f.rc as i32,
                ret_val: rmse,
                bg,
                sigma_gr: p[4],
                sigma_lr: p[5],
                sigma_g_eta: p[6],
                sigma_l_eta: p[7],
                mu: p[3],
                raw_sum_intensity: if imax_sum > 0.0 {
                    zsum * p[0] / imax_sum
                } else {
                    zsum / n as f64
                },
                mask_touched: reg.mask_touched as u8,
                fit_rmse: rmse,
                frame,
            }
        })
        .collect()
}

/// Fits every region of a frame in parallel; spot ids follow region order.
pub fn fit_regions(regs: &[Region], o: &FitOptions, omega: f64, frame: u32) -> Vec<Peak> {
    let per: Vec<Vec<Peak>> = regs
        .par_iter()
        .map_init(Workspace::default, |ws, r| {
            fit_region(r, o, omega, frame, ws).0
        })
        .collect();
    per.into_iter().flatten().collect()
}
