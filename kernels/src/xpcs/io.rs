//! HDF5 input in the APS layouts (reference/xpcs.md §4): raw frames at
//! `/entry/data/data` (N, H, W) and the qmap group `/qmap` written by
//! pySimpleMask. Writers for both let the synthetic generator produce files
//! the reference tools read. Every error names the file and the dataset.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use hdf5::types::{FixedAscii, IntSize, TypeDescriptor, VarLenUnicode};
use ndarray::{s, Array2};

use super::QMap;

pub const RAW_DATASET: &str = "/entry/data/data";

/// "FILE: WHAT: ERROR", the form of every I/O error of the XPCS kernels.
pub(crate) fn err(path: &Path, what: &str, e: impl std::fmt::Display) -> String {
    format!("{}: {what}: {e}", path.display())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pixel {
    U8,
    U16,
    U32,
}

/// An open raw-data file.
pub struct RawFile {
    path: PathBuf,
    ds: hdf5::Dataset,
    pixel: Pixel,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
}

impl RawFile {
    pub fn open(path: &Path) -> Result<Self, String> {
        let file = crate::h5check::open(path).map_err(|e| err(path, "cannot open as HDF5", e))?;
        let ds = file
            .dataset(RAW_DATASET)
            .map_err(|e| err(path, RAW_DATASET, e))?;
        let shape = ds.shape();
        let [frames, height, width] = shape[..] else {
            return Err(err(
                path,
                RAW_DATASET,
                format!("expected 3 dimensions (frames, height, width), found shape {shape:?}"),
            ));
        };
        crate::h5check::whole(&ds).map_err(|e| err(path, RAW_DATASET, e))?;
        let desc = ds
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(|e| err(path, RAW_DATASET, e))?;
        let pixel = match desc {
            TypeDescriptor::Unsigned(IntSize::U1) => Pixel::U8,
            TypeDescriptor::Unsigned(IntSize::U2) => Pixel::U16,
            TypeDescriptor::Unsigned(IntSize::U4) => Pixel::U32,
            other => {
                return Err(err(
                    path,
                    RAW_DATASET,
                    format!("unsupported pixel type {other} (expected uint8, uint16 or uint32)"),
                ))
            }
        };
        Ok(RawFile {
            path: path.to_path_buf(),
            ds,
            pixel,
            frames,
            height,
            width,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Frames `start..start + count`, whole, in the stored count type.
    pub fn read_frames(&self, start: usize, count: usize) -> Result<Frames, String> {
        if start.checked_add(count).is_none_or(|end| end > self.frames) {
            return Err(err(
                &self.path,
                RAW_DATASET,
                format!(
                    "frames {start}..{} requested, the file has {}",
                    start as u128 + count as u128,
                    self.frames
                ),
            ));
        }
        Ok(match self.pixel {
            Pixel::U8 => Frames::U8(self.slab(start, count)?),
            Pixel::U16 => Frames::U16(self.slab(start, count)?),
            Pixel::U32 => Frames::U32(self.slab(start, count)?),
        })
    }

    /// Frames `start..start + count`, only the detector pixels `pixels`
    /// (flat indices), as f32 in frame-major order.
    pub fn read(&self, start: usize, count: usize, pixels: &[usize]) -> Result<Vec<f32>, String> {
        let px = self.height * self.width;
        let frames = self.read_frames(start, count)?;
        Ok((0..count)
            .flat_map(|t| pixels.iter().map(move |&p| t * px + p))
            .map(|i| frames.get(i))
            .collect())
    }

    fn slab<T: hdf5::H5Type + Copy>(&self, start: usize, count: usize) -> Result<Vec<T>, String> {
        let a = self
            .ds
            .read_slice::<T, _, ndarray::Ix3>(s![start..start + count, .., ..])
            .map_err(|e| err(&self.path, RAW_DATASET, e))?;
        Ok(a.into_raw_vec_and_offset().0)
    }
}

/// Any file of detector frames: HDF5 `/entry/data/data` or legacy IMM.
pub trait FrameSource: Send + Sync {
    fn path(&self) -> &Path;
    /// (frames, height, width).
    fn shape(&self) -> (usize, usize, usize);
    /// Frames `start..start + count`, whole, in the stored count type.
    fn read_frames(&self, start: usize, count: usize) -> Result<Frames, String>;
}

impl FrameSource for RawFile {
    fn path(&self) -> &Path {
        &self.path
    }
    fn shape(&self) -> (usize, usize, usize) {
        (self.frames, self.height, self.width)
    }
    fn read_frames(&self, start: usize, count: usize) -> Result<Frames, String> {
        RawFile::read_frames(self, start, count)
    }
}

impl FrameSource for super::imm::ImmFile {
    fn path(&self) -> &Path {
        super::imm::ImmFile::path(self)
    }
    fn shape(&self) -> (usize, usize, usize) {
        (self.frames, self.height, self.width)
    }
    fn read_frames(&self, start: usize, count: usize) -> Result<Frames, String> {
        super::imm::ImmFile::read_frames(self, start, count)
    }
}

/// Opens a raw file by its content: IMM when it looks like one, else HDF5.
pub fn open_frames(path: &Path) -> Result<Box<dyn FrameSource>, String> {
    if super::imm::is_imm(path) {
        Ok(Box::new(super::imm::ImmFile::open(path)?))
    } else {
        Ok(Box::new(RawFile::open(path)?))
    }
}

/// Whole frames in the file's count type, frame-major.
pub enum Frames {
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
}

impl Frames {
    /// Value `i` as f32.
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Frames::U8(v) => f32::from(v[i]),
            Frames::U16(v) => f32::from(v[i]),
            Frames::U32(v) => v[i] as f32,
        }
    }
}

/// Detector geometry as pySimpleMask stores it next to the partition.
#[derive(Clone, Debug, PartialEq)]
pub struct Geometry {
    /// Beam centre, pixels (column, row).
    pub beam_center_x: f64,
    pub beam_center_y: f64,
    /// Pixel pitch, metres.
    pub pixel_size: f64,
    /// Sample to detector, metres.
    pub detector_distance: f64,
    pub energy_kev: f64,
}

/// A qmap file's content: the partition the kernels use plus what the
/// viewer needs to label it. Bins are numbered 1.. over the non-empty bins
/// of a linear q grid; `*_mapping[k]` is the grid index of bin k + 1.
#[derive(Clone, Debug)]
pub struct QMapFile {
    pub qmap: QMap,
    pub geometry: Geometry,
    pub static_centres: Vec<f64>,
    pub static_mapping: Vec<i64>,
    pub dynamic_centres: Vec<f64>,
    pub dynamic_mapping: Vec<i64>,
}

/// Reads `/qmap`: the dynamic and static maps and the mask are required and
/// must share one (H, W) shape. Bin q values come from the v-lists through
/// the index mappings when present (n_phi = 1 assumed for q values).
pub fn read_qmap(path: &Path) -> Result<QMap, String> {
    read_qmap_group(path, "/qmap")
}

/// Reads a qmap group wherever it is (`/xpcs/qmap` in a results file).
pub fn read_qmap_group(path: &Path, group: &str) -> Result<QMap, String> {
    let file = crate::h5check::open(path).map_err(|e| err(path, "cannot open as HDF5", e))?;
    let read_map = |name: &str| -> Result<Array2<u32>, String> {
        let full = format!("{group}/{name}");
        let ds = file.dataset(&full).map_err(|e| err(path, &full, e))?;
        if ds.ndim() != 2 {
            return Err(err(
                path,
                &full,
                format!("expected a 2-D map, found shape {:?}", ds.shape()),
            ));
        }
        crate::h5check::whole(&ds).map_err(|e| err(path, &full, e))?;
        ds.read_2d::<u32>().map_err(|e| err(path, &full, e))
    };
    let dq = read_map("dynamic_roi_map")?;
    let sq = read_map("static_roi_map")?;
    let mask = read_map("mask")?;
    for (name, m) in [("static_roi_map", &sq), ("mask", &mask)] {
        if m.dim() != dq.dim() {
            return Err(err(
                path,
                &format!("{group}/{name}"),
                format!(
                    "shape {:?} differs from dynamic_roi_map {:?}",
                    m.dim(),
                    dq.dim()
                ),
            ));
        }
    }
    let bin_q = |kind: &str| -> Vec<f64> {
        let read = |name: &str| {
            file.dataset(&format!("{group}/{kind}_{name}"))
                .ok()
                .filter(|d| crate::h5check::whole(d).is_ok())
        };
        let centres = read("v_list_dim0")
            .and_then(|d| d.read_raw::<f64>().ok())
            .unwrap_or_default();
        let n_phi = read("v_list_dim1").map(|d| d.size().max(1)).unwrap_or(1);
        match read("index_mapping").and_then(|d| d.read_raw::<i64>().ok()) {
            Some(m) => m
                .iter()
                .map(|&i| {
                    centres
                        .get(i.max(0) as usize / n_phi)
                        .copied()
                        .unwrap_or(f64::NAN)
                })
                .collect(),
            None => centres,
        }
    };
    let (height, width) = dq.dim();
    // Everything downstream sizes its tables by the largest bin: one bad
    // value must be an error here, not an allocation of 100 GB.
    for (kind, map) in [("dynamic", &dq), ("static", &sq)] {
        let largest = map.iter().copied().max().unwrap_or(0) as u64;
        let read_ints = |name: &str| -> Option<Vec<i64>> {
            file.dataset(&format!("{group}/{kind}_{name}"))
                .ok()
                .filter(|d| crate::h5check::whole(d).is_ok())
                .and_then(|d| d.read_raw::<i64>().ok())
        };
        let (limit, what) = match (read_ints("num_pts"), read_ints("index_mapping")) {
            (Some(n), _) if !n.is_empty() => {
                let bins = n.iter().map(|&x| x.max(0) as u64).product::<u64>();
                (bins, format!("{kind}_num_pts ({bins})"))
            }
            (_, Some(m)) => (
                m.len() as u64,
                format!("{kind}_index_mapping ({} bins)", m.len()),
            ),
            _ => {
                let pixels = (height * width) as u64;
                (pixels, format!("the map's {pixels} pixels"))
            }
        };
        if largest > limit {
            return Err(err(
                path,
                &format!("{group}/{kind}_roi_map"),
                format!("bin {largest} exceeds {what}"),
            ));
        }
    }
    Ok(QMap {
        width,
        height,
        mask: mask.iter().map(|&m| u8::from(m != 0)).collect(),
        sqmap: sq.iter().copied().collect(),
        dqmap: dq.iter().copied().collect(),
        sq_values: bin_q("static"),
        dq_values: bin_q("dynamic"),
    })
}

/// Writes frames to `/entry/data/data`, uint16 (N, H, W), one chunk per
/// frame, as they are produced: memory is bounded by what `append` gets.
pub struct RawWriter {
    path: PathBuf,
    ds: hdf5::Dataset,
    frames: usize,
    written: usize,
    frame_len: usize,
}

impl RawWriter {
    pub fn create(path: &Path, frames: usize, height: usize, width: usize) -> Result<Self, String> {
        let file = hdf5::File::create(path).map_err(|e| err(path, "cannot create", e))?;
        let ds = file
            .create_group("entry")
            .and_then(|g| g.create_group("data"))
            .and_then(|g| {
                g.new_dataset::<u16>()
                    .chunk((1, height, width))
                    .shape((frames, height, width))
                    .create("data")
            })
            .map_err(|e| err(path, RAW_DATASET, e))?;
        Ok(RawWriter {
            path: path.to_path_buf(),
            ds,
            frames,
            written: 0,
            frame_len: height * width,
        })
    }

    /// Appends whole frames (frame-major).
    pub fn append(&mut self, data: &[u16]) -> Result<(), String> {
        let n = data.len() / self.frame_len.max(1);
        if n * self.frame_len != data.len() || self.written + n > self.frames {
            return Err(err(
                &self.path,
                RAW_DATASET,
                format!(
                    "cannot append {} values: frames hold {} each and {} of {} are written",
                    data.len(),
                    self.frame_len,
                    self.written,
                    self.frames
                ),
            ));
        }
        let shape = self.ds.shape();
        let view = ndarray::ArrayView3::from_shape((n, shape[1], shape[2]), data)
            .map_err(|e| err(&self.path, RAW_DATASET, e))?;
        self.ds
            .write_slice(view, s![self.written..self.written + n, .., ..])
            .map_err(|e| err(&self.path, RAW_DATASET, e))?;
        self.written += n;
        Ok(())
    }

    /// Checks every frame was written and closes the file.
    pub fn finish(self) -> Result<(), String> {
        if self.written != self.frames {
            return Err(err(
                &self.path,
                RAW_DATASET,
                format!("{} of {} frames written", self.written, self.frames),
            ));
        }
        Ok(())
    }
}

/// Writes whole frames in one call (small test data).
pub fn write_raw(
    path: &Path,
    frames: &[u16],
    n: usize,
    height: usize,
    width: usize,
) -> Result<(), String> {
    let mut w = RawWriter::create(path, n, height, width)?;
    w.append(frames)?;
    w.finish()
}

fn scalar<T: hdf5::H5Type>(g: &hdf5::Group, path: &Path, name: &str, v: T) -> Result<(), String> {
    g.new_dataset::<T>()
        .create(name)
        .and_then(|d| d.write_scalar(&v))
        .map_err(|e| err(path, &format!("{}/{name}", g.name()), e))
}

fn text(g: &hdf5::Group, path: &Path, name: &str, v: &str) -> Result<(), String> {
    let v = VarLenUnicode::from_str(v).map_err(|e| err(path, name, e))?;
    scalar(g, path, name, v)
}

fn vector<T: hdf5::H5Type>(
    g: &hdf5::Group,
    path: &Path,
    name: &str,
    v: &[T],
) -> Result<(), String> {
    g.new_dataset_builder()
        .with_data(v)
        .create(name)
        .map(|_| ())
        .map_err(|e| err(path, &format!("{}/{name}", g.name()), e))
}

fn group(parent: &hdf5::Group, path: &Path, name: &str) -> Result<hdf5::Group, String> {
    parent
        .group(name)
        .or_else(|_| parent.create_group(name))
        .map_err(|e| err(path, &format!("{}/{name}", parent.name()), e))
}

/// Writes the `/qmap` group as pySimpleMask does: the maps the correlator
/// reads plus the geometry, bin centres, index mappings and labels the
/// viewer reads, and a `hash` attribute identifying the partition.
pub fn write_qmap(path: &Path, q: &QMapFile) -> Result<(), String> {
    let file = hdf5::File::create(path).map_err(|e| err(path, "cannot create", e))?;
    let g = group(&file, path, "qmap")?;
    let m = &q.qmap;
    let shape = (m.height, m.width);
    let map = |name: &str, v: Vec<u32>| -> Result<(), String> {
        let a = Array2::from_shape_vec(shape, v).map_err(|e| err(path, name, e))?;
        g.new_dataset_builder()
            .with_data(&a)
            .create(name)
            .map(|_| ())
            .map_err(|e| err(path, &format!("/qmap/{name}"), e))
    };
    map("dynamic_roi_map", m.dqmap.clone())?;
    map("static_roi_map", m.sqmap.clone())?;
    map("mask", m.mask.iter().map(|&v| u32::from(v)).collect())?;
    for (kind, centres, mapping) in [
        ("static", &q.static_centres, &q.static_mapping),
        ("dynamic", &q.dynamic_centres, &q.dynamic_mapping),
    ] {
        vector(&g, path, &format!("{kind}_v_list_dim0"), centres)?;
        vector(&g, path, &format!("{kind}_v_list_dim1"), &[0.0f64])?;
        vector(&g, path, &format!("{kind}_index_mapping"), mapping)?;
        vector(
            &g,
            path,
            &format!("{kind}_num_pts"),
            &[centres.len() as i64, 1],
        )?;
    }
    let geo = &q.geometry;
    scalar(&g, path, "beam_center_x", geo.beam_center_x)?;
    scalar(&g, path, "beam_center_y", geo.beam_center_y)?;
    scalar(&g, path, "pixel_size", geo.pixel_size)?;
    scalar(&g, path, "detector_distance", geo.detector_distance)?;
    scalar(&g, path, "energy", geo.energy_kev)?;
    let label = |s: &str| FixedAscii::<8>::from_ascii(s).expect("short ascii label");
    vector(&g, path, "map_names", &[label("q"), label("phi")])?;
    vector(&g, path, "map_units", &[label("1/A"), label("deg")])?;
    text(&g, path, "source_file", &path.display().to_string())?;
    let hash = partition_hash(m);
    g.new_attr::<VarLenUnicode>()
        .create("hash")
        .and_then(|a| a.write_scalar(&VarLenUnicode::from_str(&hash).expect("hex")))
        .map_err(|e| err(path, "/qmap attribute hash", e))?;
    Ok(())
}

/// FNV-1a over the maps and mask: equal partitions get equal hashes.
fn partition_hash(m: &QMap) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u32| {
        for b in x.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(m.width as u32);
    eat(m.height as u32);
    for i in 0..m.mask.len() {
        eat(u32::from(m.mask[i]));
        eat(m.sqmap[i]);
        eat(m.dqmap[i]);
    }
    format!("{h:016x}")
}

/// What the beamline records next to the raw data (`*_metadata.hdf`): the
/// results file starts as a copy of it.
#[derive(Clone, Debug)]
pub struct Metadata {
    pub frame_time: f64,
    pub count_time: f64,
    pub geometry: Geometry,
    pub detector: String,
}

/// Writes a metadata file in the APS NeXus layout the correlator and the
/// viewer read (schema version, start time, detector timing, energy).
pub fn write_metadata(path: &Path, m: &Metadata) -> Result<(), String> {
    let file = hdf5::File::create(path).map_err(|e| err(path, "cannot create", e))?;
    let entry = group(&file, path, "entry")?;
    text(&entry, path, "schema_version", "1.0")?;
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    text(&entry, path, "start_time", &iso8601(start))?;
    let inst = group(&entry, path, "instrument")?;
    let bluesky = group(&inst, path, "bluesky")?;
    let meta = group(&bluesky, path, "metadata")?;
    text(&meta, path, "source", "beamflow")?;
    let det = group(&inst, path, "detector_1")?;
    scalar(&det, path, "frame_time", m.frame_time)?;
    scalar(&det, path, "count_time", m.count_time)?;
    scalar(&det, path, "x_pixel_size", m.geometry.pixel_size)?;
    scalar(&det, path, "y_pixel_size", m.geometry.pixel_size)?;
    scalar(&det, path, "distance", m.geometry.detector_distance)?;
    scalar(&det, path, "beam_center_x", m.geometry.beam_center_x)?;
    scalar(&det, path, "beam_center_y", m.geometry.beam_center_y)?;
    text(&det, path, "description", &m.detector)?;
    let beam = group(&inst, path, "incident_beam")?;
    scalar(&beam, path, "incident_energy", m.geometry.energy_kev)?;
    Ok(())
}

/// `/entry/instrument/detector_1/frame_time` of a metadata file, seconds.
pub fn read_frame_time(path: &Path) -> Result<f64, String> {
    const NAME: &str = "/entry/instrument/detector_1/frame_time";
    let file = crate::h5check::open(path).map_err(|e| err(path, "cannot open as HDF5", e))?;
    let v: f64 = file
        .dataset(NAME)
        .and_then(|d| {
            if d.ndim() == 0 {
                d.read_scalar()
            } else if let Err(e) = crate::h5check::whole(&d) {
                Err(hdf5::Error::from(e.as_str()))
            } else {
                d.read_raw::<f64>().and_then(|v| {
                    v.first()
                        .copied()
                        .ok_or_else(|| hdf5::Error::from("empty dataset"))
                })
            }
        })
        .map_err(|e| err(path, NAME, e))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(err(
            path,
            NAME,
            format!("{v} is not a positive time in seconds"),
        ));
    }
    Ok(v)
}

/// Seconds since the epoch as an ISO 8601 UTC time (civil-from-days).
fn iso8601(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// `NAME_metadata.hdf` beside the raw file, else the only `*_metadata.hdf` there.
pub fn find_metadata(raw: &Path) -> Result<PathBuf, String> {
    // A bare file name's parent is "": the current directory.
    let dir = raw
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stem = raw
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let direct = dir.join(format!("{stem}_metadata.hdf"));
    if direct.exists() {
        return Ok(direct);
    }
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: cannot list: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with("_metadata.hdf"))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "{}: no *_metadata.hdf next to the raw file {} (name the metadata file: --meta FILE, or `meta` in a flow step)",
            dir.display(),
            raw.display()
        )),
        many => Err(format!(
            "{}: {} *_metadata.hdf files next to the raw file {}; name one: --meta FILE, or `meta` in a flow step",
            dir.display(),
            many.len(),
            raw.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::xpcs::{generate, SpeckleConfig};

    #[test]
    fn raw_and_qmap_round_trip_through_hdf5() {
        let t = tempfile::tempdir().unwrap();
        let cfg = SpeckleConfig {
            size: 32,
            frames: 40,
            ..Default::default()
        };
        let data = generate(&cfg);
        let (raw, qm) = (t.path().join("raw.h5"), t.path().join("qmap.hdf"));
        write_raw(&raw, &data.frames, 40, 32, 32).unwrap();
        write_qmap(&qm, &data.scene.qmap_file).unwrap();
        let q = read_qmap(&qm).unwrap();
        assert_eq!((q.width, q.height), (32, 32));
        let want = data.scene.qmap();
        assert_eq!(q.dqmap, want.dqmap);
        assert_eq!(q.sqmap, want.sqmap);
        assert_eq!(q.mask, want.mask);
        assert_eq!(q.dq_values, want.dq_values);
        assert_eq!(q.sq_values, want.sq_values);
        let f = RawFile::open(&raw).unwrap();
        assert_eq!((f.frames, f.height, f.width), (40, 32, 32));
        let pixels = q.valid_pixels();
        let got = f.read(5, 3, &pixels).unwrap();
        let frames = &data.frames;
        let want: Vec<f32> = (5..8)
            .flat_map(|fr| {
                pixels
                    .iter()
                    .map(move |&p| f32::from(frames[fr * 1024 + p]))
            })
            .collect();
        assert_eq!(got, want);
        let e = f.read(39, 2, &pixels).unwrap_err();
        assert!(
            e.ends_with("/entry/data/data: frames 39..41 requested, the file has 40"),
            "{e}"
        );
    }

    #[test]
    fn bad_files_name_the_file_and_dataset() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("empty.h5");
        hdf5::File::create(&p).unwrap();
        let e = RawFile::open(&p).err().unwrap();
        assert!(
            e.starts_with(&format!("{}: /entry/data/data:", p.display())),
            "{e}"
        );
        let e = read_qmap(&p).unwrap_err();
        assert!(e.contains("/qmap/dynamic_roi_map"), "{e}");
        // Float frames are not detector counts.
        let f = t.path().join("float.h5");
        let file = hdf5::File::create(&f).unwrap();
        let g = file
            .create_group("entry")
            .unwrap()
            .create_group("data")
            .unwrap();
        g.new_dataset_builder()
            .with_data(&ndarray::Array3::<f32>::zeros((2, 4, 4)))
            .create("data")
            .unwrap();
        drop(file);
        let e = RawFile::open(&f).err().unwrap();
        assert!(e.contains("unsupported pixel type"), "{e}");
        // A mask of another shape than the maps.
        let qp = t.path().join("q.hdf");
        let file = hdf5::File::create(&qp).unwrap();
        let g = file.create_group("qmap").unwrap();
        g.new_dataset_builder()
            .with_data(&Array2::<u32>::zeros((4, 4)))
            .create("dynamic_roi_map")
            .unwrap();
        g.new_dataset_builder()
            .with_data(&Array2::<u32>::zeros((4, 4)))
            .create("static_roi_map")
            .unwrap();
        g.new_dataset_builder()
            .with_data(&Array2::<u32>::zeros((4, 5)))
            .create("mask")
            .unwrap();
        drop(file);
        let e = read_qmap(&qp).unwrap_err();
        assert!(
            e.ends_with("/qmap/mask: shape (4, 5) differs from dynamic_roi_map (4, 4)"),
            "{e}"
        );
        // Not HDF5 at all.
        let junk = t.path().join("junk.h5");
        std::fs::write(&junk, b"not hdf5").unwrap();
        assert!(RawFile::open(&junk)
            .err()
            .unwrap()
            .contains("cannot open as HDF5"));
    }
}
