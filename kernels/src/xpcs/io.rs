//! HDF5 input in the APS layouts (reference/xpcs.md §4): raw frames at
//! `/entry/data/data` (N, H, W) and the qmap group `/qmap` written by
//! pySimpleMask. Writers for both let the synthetic generator produce files
//! the reference tools read. Every error names the file and the dataset.

use std::path::Path;

use hdf5::types::{IntSize, TypeDescriptor};
use ndarray::{s, Array2, Array3};

use super::QMap;

pub const RAW_DATASET: &str = "/entry/data/data";

fn err(path: &Path, what: &str, e: impl std::fmt::Display) -> String {
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
    path: std::path::PathBuf,
    ds: hdf5::Dataset,
    pixel: Pixel,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
}

impl RawFile {
    pub fn open(path: &Path) -> Result<Self, String> {
        let file = hdf5::File::open(path).map_err(|e| err(path, "cannot open as HDF5", e))?;
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

    /// Frames `start..start + count`, whole, in the stored count type.
    pub fn read_frames(&self, start: usize, count: usize) -> Result<Frames, String> {
        if start + count > self.frames {
            return Err(err(
                &self.path,
                RAW_DATASET,
                format!(
                    "frames {start}..{} requested, the file has {}",
                    start + count,
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

/// Reads `/qmap`: the dynamic and static maps and the mask are required and
/// must share one (H, W) shape; bin q values are read when present.
pub fn read_qmap(path: &Path) -> Result<QMap, String> {
    let file = hdf5::File::open(path).map_err(|e| err(path, "cannot open as HDF5", e))?;
    let read_map = |name: &str| -> Result<Array2<u32>, String> {
        let full = format!("/qmap/{name}");
        let ds = file.dataset(&full).map_err(|e| err(path, &full, e))?;
        if ds.ndim() != 2 {
            return Err(err(
                path,
                &full,
                format!("expected a 2-D map, found shape {:?}", ds.shape()),
            ));
        }
        ds.read_2d::<u32>().map_err(|e| err(path, &full, e))
    };
    let dq = read_map("dynamic_roi_map")?;
    let sq = read_map("static_roi_map")?;
    let mask = read_map("mask")?;
    for (name, m) in [("static_roi_map", &sq), ("mask", &mask)] {
        if m.dim() != dq.dim() {
            return Err(err(
                path,
                &format!("/qmap/{name}"),
                format!(
                    "shape {:?} differs from dynamic_roi_map {:?}",
                    m.dim(),
                    dq.dim()
                ),
            ));
        }
    }
    let values = |name: &str| -> Vec<f64> {
        file.dataset(&format!("/qmap/{name}"))
            .and_then(|d| d.read_raw::<f64>())
            .unwrap_or_default()
    };
    let (height, width) = dq.dim();
    Ok(QMap {
        width,
        height,
        mask: mask.iter().map(|&m| u8::from(m != 0)).collect(),
        sqmap: sq.iter().copied().collect(),
        dqmap: dq.iter().copied().collect(),
        sq_values: values("static_v_list_dim0"),
        dq_values: values("dynamic_v_list_dim0"),
    })
}

/// Writes frames as `/entry/data/data`, uint16 (N, H, W).
pub fn write_raw(
    path: &Path,
    frames: &[u16],
    n: usize,
    height: usize,
    width: usize,
) -> Result<(), String> {
    let arr = Array3::from_shape_vec((n, height, width), frames.to_vec())
        .map_err(|e| err(path, RAW_DATASET, e))?;
    let file = hdf5::File::create(path).map_err(|e| err(path, "cannot create", e))?;
    let group = file
        .create_group("entry")
        .and_then(|g| g.create_group("data"))
        .map_err(|e| err(path, "/entry/data", e))?;
    group
        .new_dataset_builder()
        .chunk((1, height, width))
        .with_data(&arr)
        .create("data")
        .map_err(|e| err(path, RAW_DATASET, e))?;
    Ok(())
}

/// Writes the qmap datasets the reference and the viewer read.
pub fn write_qmap(path: &Path, q: &QMap) -> Result<(), String> {
    let file = hdf5::File::create(path).map_err(|e| err(path, "cannot create", e))?;
    let g = file
        .create_group("qmap")
        .map_err(|e| err(path, "/qmap", e))?;
    let shape = (q.height, q.width);
    let map = |name: &str, v: Vec<u32>| -> Result<(), String> {
        let a = Array2::from_shape_vec(shape, v).map_err(|e| err(path, name, e))?;
        g.new_dataset_builder()
            .with_data(&a)
            .create(name)
            .map(|_| ())
            .map_err(|e| err(path, &format!("/qmap/{name}"), e))
    };
    map("dynamic_roi_map", q.dqmap.clone())?;
    map("static_roi_map", q.sqmap.clone())?;
    map("mask", q.mask.iter().map(|&m| u32::from(m)).collect())?;
    for (name, v) in [
        ("dynamic_v_list_dim0", &q.dq_values),
        ("static_v_list_dim0", &q.sq_values),
    ] {
        g.new_dataset_builder()
            .with_data(v.as_slice())
            .create(name)
            .map_err(|e| err(path, &format!("/qmap/{name}"), e))?;
    }
    Ok(())
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
        write_qmap(&qm, &data.qmap).unwrap();
        let q = read_qmap(&qm).unwrap();
        assert_eq!((q.width, q.height), (32, 32));
        assert_eq!(q.dqmap, data.qmap.dqmap);
        assert_eq!(q.sqmap, data.qmap.sqmap);
        assert_eq!(q.mask, data.qmap.mask);
        assert_eq!(q.dq_values, data.qmap.dq_values);
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
            .with_data(&Array3::<f32>::zeros((2, 4, 4)))
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
