//! The results file (reference/xpcs.md §5): the layout boost_corr writes
//! and pyXPCSViewer opens. It starts as a byte copy of the beamline's
//! `*_metadata.hdf`, gets the qmap group copied in, then the averages and
//! the multitau and/or two-time results. It is written as `NAME.temp` and
//! renamed when complete, so a reader never sees half a file.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use hdf5::types::VarLenUnicode;
use ndarray::{Array2, Array3, ArrayView2, Dimension};

/// Datasets with more elements than this are lzf-compressed (as the reference).
const COMPRESS_ABOVE: usize = 8192;
/// Chunk edge cap along the last two dimensions.
const CHUNK_CAP: usize = 16384;

use super::io::err;

/// `name_results.hdf` for a raw file: the basename without its extension
/// and any trailing `.tpx`/`.hdf`/`.bin` and `_metadata`, then `_1`, `_2`, …
/// if the name is taken and `overwrite` is false ([`crate::output`]'s rule;
/// the summary and figures take the results file's stem). (The reference strips a
/// character set rather than the literal suffix, which eats names ending in
/// e.g. `_data`; we strip the literal suffix.)
pub fn results_path(out_dir: &Path, raw: &Path, overwrite: bool) -> PathBuf {
    let mut stem = raw
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "xpcs".into());
    for ext in [".tpx", ".hdf", ".bin"] {
        if let Some(s) = stem.strip_suffix(ext) {
            stem = s.to_string();
        }
    }
    if let Some(s) = stem.strip_suffix("_metadata") {
        stem = s.to_string();
    }
    let at = |tag: &str| out_dir.join(format!("{stem}_results{tag}.hdf"));
    at(&crate::output::fresh_tag(overwrite, |tag| vec![at(tag)]))
}

/// A configuration value recorded under `…/config`.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigValue {
    Int(i64),
    Float(f64),
    Text(String),
}

/// An open results file being written.
pub struct ResultsWriter {
    temp: PathBuf,
    path: PathBuf,
    file: hdf5::File,
    /// Set by `finish`: the temp file is then kept for the rename.
    complete: bool,
}

impl ResultsWriter {
    /// Copies `metadata` to `path.temp`, checks it is a metadata file
    /// (`/entry/schema_version`), and copies `qmap`'s `/qmap` group to
    /// `/xpcs/qmap`. Records the raw file's absolute path.
    pub fn create(path: &Path, metadata: &Path, qmap: &Path, raw: &Path) -> Result<Self, String> {
        let temp = path.with_extension("hdf.temp");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(dir, "cannot create", e))?;
        }
        std::fs::copy(metadata, &temp)
            .map_err(|e| err(metadata, &format!("cannot copy to {}", temp.display()), e))?;
        let file =
            hdf5::File::open_rw(&temp).map_err(|e| err(metadata, "cannot open as HDF5", e))?;
        if file.dataset("/entry/schema_version").is_err() {
            drop(file);
            let _ = std::fs::remove_file(&temp);
            return Err(err(
                metadata,
                "/entry/schema_version",
                "missing: not a beamline metadata file",
            ));
        }
        let w = ResultsWriter {
            temp,
            path: path.to_path_buf(),
            file,
            complete: false,
        };
        let xpcs = w.group("/xpcs")?;
        let src = crate::h5check::open(qmap).map_err(|e| err(qmap, "cannot open as HDF5", e))?;
        let group = src.group("/qmap").map_err(|e| err(qmap, "/qmap", e))?;
        if xpcs.link_exists("qmap") {
            xpcs.unlink("qmap").map_err(|e| w.fail("/xpcs/qmap", e))?;
        }
        group
            .copy_to(&xpcs, "qmap")
            .map_err(|e| err(qmap, "copying /qmap into the results", e))?;
        let abs = std::fs::canonicalize(raw).unwrap_or_else(|_| raw.to_path_buf());
        w.text("/xpcs", "rawdata_path", &abs.display().to_string())?;
        Ok(w)
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) -> String {
        err(&self.temp, what, e)
    }

    /// Opens or creates the group at absolute `path`, parents included.
    fn group(&self, path: &str) -> Result<hdf5::Group, String> {
        let mut g = self.file.group("/").map_err(|e| self.fail("/", e))?;
        for part in path.split('/').filter(|s| !s.is_empty()) {
            g = match g.group(part) {
                Ok(sub) => sub,
                Err(_) => g.create_group(part).map_err(|e| self.fail(path, e))?,
            };
        }
        Ok(g)
    }

    fn text(&self, group: &str, name: &str, v: &str) -> Result<(), String> {
        let g = self.group(group)?;
        let v = VarLenUnicode::from_str(v).map_err(|e| self.fail(name, e))?;
        g.new_dataset::<VarLenUnicode>()
            .create(name)
            .and_then(|d| d.write_scalar(&v))
            .map_err(|e| self.fail(&format!("{group}/{name}"), e))
    }

    /// Writes an n-D array with the reference's compression and chunking.
    fn array<T: hdf5::H5Type + Clone, D: Dimension>(
        &self,
        group: &str,
        name: &str,
        a: ndarray::ArrayView<T, D>,
    ) -> Result<(), String> {
        let g = self.group(group)?;
        let full = format!("{group}/{name}");
        let shape = a.shape().to_vec();
        let mut b = g.new_dataset_builder();
        if a.len() > COMPRESS_ABOVE {
            let nd = shape.len();
            let chunk: Vec<usize> = shape
                .iter()
                .enumerate()
                .map(|(i, &s)| {
                    if i + 2 >= nd {
                        s.clamp(1, CHUNK_CAP)
                    } else {
                        1
                    }
                })
                .collect();
            b = b.chunk(chunk).lzf();
        }
        b.with_data(&a.as_standard_layout())
            .create(name)
            .map(|_| ())
            .map_err(|e| self.fail(&full, e))
    }

    fn config(&self, group: &str, items: &[(&str, ConfigValue)]) -> Result<(), String> {
        let g = self.group(group)?;
        for (name, v) in items {
            let r = match v {
                ConfigValue::Int(x) => g
                    .new_dataset::<i64>()
                    .create(*name)
                    .and_then(|d| d.write_scalar(x)),
                ConfigValue::Float(x) => g
                    .new_dataset::<f64>()
                    .create(*name)
                    .and_then(|d| d.write_scalar(x)),
                ConfigValue::Text(s) => {
                    let s = VarLenUnicode::from_str(s).map_err(|e| self.fail(name, e))?;
                    g.new_dataset::<VarLenUnicode>()
                        .create(*name)
                        .and_then(|d| d.write_scalar(&s))
                }
            };
            r.map_err(|e| self.fail(&format!("{group}/{name}"), e))?;
        }
        Ok(())
    }

    /// The time-averaged products: SAXS image (H, W), its static-bin profile,
    /// the profile per time segment (n_seg, n_sq) and intensity vs time.
    pub fn averages(
        &self,
        saxs_2d: ArrayView2<f32>,
        saxs_1d: &[f32],
        segments: ArrayView2<f32>,
        intensity_vs_time: &[f64],
    ) -> Result<(), String> {
        let (h, w) = saxs_2d.dim();
        let img = saxs_2d
            .to_shape((1, h, w))
            .map_err(|e| self.fail("saxs_2d", e))?;
        self.array("/xpcs/temporal_mean", "scattering_2d", img.view())?;
        let prof = ndarray::ArrayView2::from_shape((1, saxs_1d.len()), saxs_1d)
            .map_err(|e| self.fail("saxs_1d", e))?;
        self.array("/xpcs/temporal_mean", "scattering_1d", prof)?;
        self.array("/xpcs/temporal_mean", "scattering_1d_segments", segments)?;
        let n = intensity_vs_time.len();
        let mut it = Array2::<f32>::zeros((2, n));
        for (i, &v) in intensity_vs_time.iter().enumerate() {
            it[[0, i]] = i as f32;
            it[[1, i]] = v as f32;
        }
        self.array("/xpcs/spatial_mean", "intensity_vs_time", it.view())
    }

    /// Multi-tau g2 (T, n_dq) with its error, delays in frames.
    pub fn multitau(
        &self,
        delays: &[u64],
        g2: ArrayView2<f32>,
        g2_err: ArrayView2<f32>,
        config: &[(&str, ConfigValue)],
    ) -> Result<(), String> {
        let d: Vec<i64> = delays.iter().map(|&t| t as i64).collect();
        self.array("/xpcs/multitau", "delay_list", ndarray::aview1(&d))?;
        self.array("/xpcs/multitau", "normalized_g2", g2)?;
        self.array("/xpcs/multitau", "normalized_g2_err", g2_err)?;
        self.config("/xpcs/multitau/config", config)
    }

    /// One two-time map, numbered from 1 in processing order.
    pub fn twotime_map(&self, number: usize, c2: ArrayView2<f32>) -> Result<(), String> {
        let name = format!("c2_{number:05}");
        let g = self.group("/xpcs/twotime/correlation_map")?;
        let (n, m) = c2.dim();
        g.new_dataset_builder()
            .chunk((n.clamp(1, CHUNK_CAP), m.clamp(1, CHUNK_CAP)))
            .lzf()
            .with_data(&c2.as_standard_layout())
            .create(name.as_str())
            .map(|_| ())
            .map_err(|e| self.fail(&format!("/xpcs/twotime/correlation_map/{name}"), e))
    }

    /// Two-time g2 by lag (N, n_dq), per block (N/5, 5, n_dq), and the dq of
    /// each map in map order.
    pub fn twotime(
        &self,
        g2: ArrayView2<f32>,
        segments: &Array3<f32>,
        processed_bins: &[i32],
        config: &[(&str, ConfigValue)],
    ) -> Result<(), String> {
        self.array("/xpcs/twotime", "normalized_g2", g2)?;
        self.array("/xpcs/twotime", "normalized_g2_segments", segments.view())?;
        self.array(
            "/xpcs/twotime",
            "processed_bins",
            ndarray::aview1(processed_bins),
        )?;
        self.config("/xpcs/twotime/config", config)
    }

    /// Closes the file and moves it to its final name.
    pub fn finish(mut self) -> Result<PathBuf, String> {
        self.file.flush().map_err(|e| err(&self.temp, "flush", e))?;
        self.complete = true;
        let (temp, path) = (self.temp.clone(), self.path.clone());
        drop(self);
        std::fs::rename(&temp, &path)
            .map_err(|e| err(&temp, &format!("cannot rename to {}", path.display()), e))?;
        Ok(path)
    }
}

impl Drop for ResultsWriter {
    /// An abandoned file (an error on the way) does not stay behind.
    fn drop(&mut self) {
        if !self.complete && self.temp.exists() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// What the figures need from a results file.
pub struct Contents {
    pub saxs_2d: Array2<f32>,
    /// Multi-tau: τ in seconds and g2, g2_err (T, n_dq).
    pub multitau: Option<(Vec<f64>, super::G2Result)>,
    /// The first two-time map (upper triangle) and its dq.
    pub first_c2: Option<(u32, Array2<f32>)>,
    /// q of each dynamic bin, Å⁻¹.
    pub dq_values: Vec<f64>,
}

/// Reads back a results file written by [`ResultsWriter`] (or the reference).
pub fn read(path: &Path) -> Result<Contents, String> {
    let f = hdf5::File::open(path).map_err(|e| err(path, "cannot open as HDF5", e))?;
    let ds = |name: &str| f.dataset(name).map_err(|e| err(path, name, e));
    let img: Array3<f32> = ds("/xpcs/temporal_mean/scattering_2d")?
        .read()
        .map_err(|e| err(path, "/xpcs/temporal_mean/scattering_2d", e))?;
    if img.shape()[0] == 0 {
        return Err(err(path, "/xpcs/temporal_mean/scattering_2d", "empty"));
    }
    let saxs_2d = img.index_axis_move(ndarray::Axis(0), 0);
    let dq_values = super::io::read_qmap_group(path, "/xpcs/qmap")?.dq_values;
    let scalar = |name: &str| -> Result<f64, String> {
        let d = ds(name)?;
        d.read_scalar::<f64>()
            .or_else(|_| d.read_scalar::<i64>().map(|v| v as f64))
            .map_err(|e| err(path, name, e))
    };
    let multitau = if f.link_exists("/xpcs/multitau/normalized_g2") {
        let t0 = scalar("/entry/instrument/detector_1/frame_time")?
            * scalar("/xpcs/multitau/config/stride_frame")?
            * scalar("/xpcs/multitau/config/avg_frame")?;
        let tau: Vec<i64> = ds("/xpcs/multitau/delay_list")?
            .read_raw()
            .map_err(|e| err(path, "/xpcs/multitau/delay_list", e))?;
        let g2 = ds("/xpcs/multitau/normalized_g2")?
            .read_2d()
            .map_err(|e| err(path, "/xpcs/multitau/normalized_g2", e))?;
        let g2_err = ds("/xpcs/multitau/normalized_g2_err")?
            .read_2d()
            .map_err(|e| err(path, "/xpcs/multitau/normalized_g2_err", e))?;
        Some((
            tau.iter().map(|&t| t as f64 * t0).collect(),
            super::G2Result {
                tau: tau.iter().map(|&t| t.max(0) as u64).collect(),
                g2,
                g2_err,
            },
        ))
    } else {
        None
    };
    let first_c2 = if f.link_exists("/xpcs/twotime/correlation_map/c2_00001") {
        let bins: Vec<i32> = ds("/xpcs/twotime/processed_bins")?
            .read_raw()
            .map_err(|e| err(path, "/xpcs/twotime/processed_bins", e))?;
        let c2 = ds("/xpcs/twotime/correlation_map/c2_00001")?
            .read_2d()
            .map_err(|e| err(path, "/xpcs/twotime/correlation_map/c2_00001", e))?;
        Some((bins.first().copied().unwrap_or(0).max(0) as u32, c2))
    } else {
        None
    };
    Ok(Contents {
        saxs_2d,
        multitau,
        first_c2,
        dq_values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_reference_rule_with_a_literal_suffix() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let p = |s: &str| results_path(d, Path::new(s), false);
        assert_eq!(p("/x/A001_sample.h5"), d.join("A001_sample_results.hdf"));
        assert_eq!(p("/x/run.bin.hdf"), d.join("run_results.hdf"));
        assert_eq!(p("/x/q7_metadata.hdf"), d.join("q7_results.hdf"));
        // The reference would strip `_data` from this one; we keep it.
        assert_eq!(p("/x/my_data.h5"), d.join("my_data_results.hdf"));
        std::fs::write(d.join("A001_sample_results.hdf"), b"").unwrap();
        assert_eq!(p("/x/A001_sample.h5"), d.join("A001_sample_results_1.hdf"));
        assert_eq!(
            results_path(d, Path::new("/x/A001_sample.h5"), true),
            d.join("A001_sample_results.hdf")
        );
    }
}
