//! HEDM files: detector frame stacks in HDF5 (uint8/16/32 or float32/64,
//! `/entry/data/data` or any named dataset), dark and flood images, and the
//! peak tables written as HDF5 and CSV. Every error names file and dataset.

use std::io::Write;
use std::path::{Path, PathBuf};

use hdf5::types::{FloatSize, IntSize, TypeDescriptor};
use ndarray::s;

use super::fit::{Peak, COLUMNS};

pub const DEFAULT_DATASET: &str = "/entry/data/data";

fn err(path: &Path, what: &str, e: impl std::fmt::Display) -> String {
    format!("{}: {what}: {e}", path.display())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    U8,
    U16,
    U32,
    F32,
    F64,
}

/// A stack of frames (N, rows, cols), or one frame (rows, cols).
pub struct Stack {
    path: PathBuf,
    name: String,
    ds: hdf5::Dataset,
    kind: Kind,
    pub frames: usize,
    pub rows: usize,
    pub cols: usize,
}

impl Stack {
    pub fn open(path: &Path, dataset: Option<&str>) -> Result<Self, String> {
        let name = dataset.unwrap_or(DEFAULT_DATASET).to_string();
        let file = crate::h5check::open(path).map_err(|e| err(path, "cannot open as HDF5", e))?;
        let ds = file.dataset(&name).map_err(|e| err(path, &name, e))?;
        let shape = ds.shape();
        let (frames, rows, cols) = match shape[..] {
            [n, r, c] => (n, r, c),
            [r, c] => (1, r, c),
            _ => {
                return Err(err(
                    path,
                    &name,
                    format!("expected (frames, rows, cols) or (rows, cols), found shape {shape:?}"),
                ))
            }
        };
        crate::h5check::whole(&ds).map_err(|e| err(path, &name, e))?;
        let desc = ds
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(|e| err(path, &name, e))?;
        let kind = match desc {
            TypeDescriptor::Unsigned(IntSize::U1) => Kind::U8,
            TypeDescriptor::Unsigned(IntSize::U2) => Kind::U16,
            TypeDescriptor::Unsigned(IntSize::U4) => Kind::U32,
            TypeDescriptor::Float(FloatSize::U4) => Kind::F32,
            TypeDescriptor::Float(FloatSize::U8) => Kind::F64,
            other => {
                return Err(err(
                    path,
                    &name,
                    format!("unsupported pixel type {other} (expected uint8/16/32 or float32/64)"),
                ))
            }
        };
        Ok(Stack {
            path: path.to_path_buf(),
            name,
            ds,
            kind,
            frames,
            rows,
            cols,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Frame `i` as f32, row-major.
    pub fn frame(&self, i: usize) -> Result<Vec<f32>, String> {
        if i >= self.frames {
            return Err(err(
                &self.path,
                &self.name,
                format!("frame {i} requested, the file has {}", self.frames),
            ));
        }
        Ok(match self.kind {
            Kind::U8 => self.read::<u8>(i)?.into_iter().map(f32::from).collect(),
            Kind::U16 => self.read::<u16>(i)?.into_iter().map(f32::from).collect(),
            Kind::U32 => self.read::<u32>(i)?.into_iter().map(|v| v as f32).collect(),
            Kind::F32 => self.read::<f32>(i)?,
            Kind::F64 => self.read::<f64>(i)?.into_iter().map(|v| v as f32).collect(),
        })
    }

    fn read<T: hdf5::H5Type + Copy>(&self, i: usize) -> Result<Vec<T>, String> {
        let a = if self.ds.ndim() == 2 {
            self.ds
                .read_2d::<T>()
                .map(|a| a.into_raw_vec_and_offset().0)
        } else {
            self.ds
                .read_slice_2d::<T, _>(s![i, .., ..])
                .map(|a| a.into_raw_vec_and_offset().0)
        };
        a.map_err(|e| err(&self.path, &self.name, format!("frame {i}: {e}")))
    }

    /// The mean of all frames: how dark and flood files are usually stored.
    pub fn mean(&self) -> Result<Vec<f32>, String> {
        let mut acc = vec![0f64; self.rows * self.cols];
        for i in 0..self.frames {
            for (a, v) in acc.iter_mut().zip(self.frame(i)?) {
                *a += v as f64;
            }
        }
        Ok(acc
            .into_iter()
            .map(|a| (a / self.frames.max(1) as f64) as f32)
            .collect())
    }
}

/// Writes frames (uint16, row-major, frame after frame) as `/entry/data/data`.
pub fn write_stack(
    path: &Path,
    frames: &[Vec<u16>],
    rows: usize,
    cols: usize,
) -> Result<(), String> {
    let f = hdf5::File::create(path).map_err(|e| err(path, "cannot create", e))?;
    let ds = f
        .new_dataset::<u16>()
        .chunk((1, rows, cols))
        .shape((frames.len(), rows, cols))
        .create(DEFAULT_DATASET)
        .map_err(|e| err(path, DEFAULT_DATASET, e))?;
    for (i, fr) in frames.iter().enumerate() {
        let a = ndarray::ArrayView2::from_shape((rows, cols), fr)
            .map_err(|e| err(path, DEFAULT_DATASET, e))?;
        ds.write_slice(a, s![i, .., ..])
            .map_err(|e| err(path, DEFAULT_DATASET, e))?;
    }
    Ok(())
}

/// Peaks as an HDF5 table `/peaks` (n × 30 doubles, column names in its
/// `columns` attribute) with `attrs` as string attributes of the root.
pub fn write_peaks_h5(path: &Path, peaks: &[Peak], attrs: &[(&str, String)]) -> Result<(), String> {
    let flat: Vec<f64> = peaks.iter().flat_map(|p| p.values()).collect();
    write_table_h5(path, &COLUMNS, flat, attrs)
}

/// A table of numbers as HDF5 `/peaks` (rows × `columns.len()` doubles
/// from `flat`, row after row; the names in its `columns` attribute) with
/// `attrs` as string attributes of the root, written through a temporary
/// file renamed into place.
pub fn write_table_h5(
    path: &Path,
    columns: &[&str],
    flat: Vec<f64>,
    attrs: &[(&str, String)],
) -> Result<(), String> {
    let tmp = path.with_extension("h5.temp");
    {
        let f = hdf5::File::create(&tmp).map_err(|e| err(&tmp, "cannot create", e))?;
        let a = ndarray::Array2::from_shape_vec((flat.len() / columns.len(), columns.len()), flat)
            .map_err(|e| err(&tmp, "/peaks", e))?;
        let ds = f
            .new_dataset_builder()
            .with_data(&a)
            .create("peaks")
            .map_err(|e| err(&tmp, "/peaks", e))?;
        let names: Vec<hdf5::types::VarLenUnicode> = columns
            .iter()
            .map(|c| c.parse().expect("column names are plain ASCII"))
            .collect();
        ds.new_attr_builder()
            .with_data(&names)
            .create("columns")
            .map_err(|e| err(&tmp, "/peaks columns", e))?;
        for (k, v) in attrs {
            let v: hdf5::types::VarLenUnicode =
                v.parse().map_err(|e| err(&tmp, k, format!("{e:?}")))?;
            f.new_attr::<hdf5::types::VarLenUnicode>()
                .create(*k)
                .and_then(|a| a.write_scalar(&v))
                .map_err(|e| err(&tmp, k, e))?;
        }
    }
    std::fs::rename(&tmp, path).map_err(|e| err(path, "cannot rename into place", e))
}

/// Reads a table written by [`write_peaks_h5`]: the rows, in column order.
pub fn read_peaks_h5(path: &Path) -> Result<Vec<[f64; 30]>, String> {
    let f = crate::h5check::open(path).map_err(|e| err(path, "cannot open as HDF5", e))?;
    let d = f.dataset("peaks").map_err(|e| err(path, "/peaks", e))?;
    crate::h5check::whole(&d).map_err(|e| err(path, "/peaks", e))?;
    let a = d.read_2d::<f64>().map_err(|e| err(path, "/peaks", e))?;
    if a.ncols() != COLUMNS.len() {
        return Err(err(
            path,
            "/peaks",
            format!("{} columns, expected {}", a.ncols(), COLUMNS.len()),
        ));
    }
    Ok(a.outer_iter()
        .map(|r| {
            let mut row = [0.0; 30];
            row.copy_from_slice(r.as_slice().expect("rows of a standard-layout array"));
            row
        })
        .collect())
}

/// Peaks as CSV with MIDAS's column names.
pub fn write_peaks_csv(path: &Path, peaks: &[Peak]) -> Result<(), String> {
    let flat: Vec<f64> = peaks.iter().flat_map(|p| p.values()).collect();
    let ints = [
        "SpotID",
        "NrPixels",
        "NrPxTot",
        "nPeaks",
        "returnCode",
        "maskTouched",
        "Frame",
    ];
    write_table_csv(path, &COLUMNS, &flat, &ints)
}

/// A table of numbers as CSV (header `columns`; the columns named in
/// `ints` as integers, the others with 6 decimals).
pub fn write_table_csv(
    path: &Path,
    columns: &[&str],
    flat: &[f64],
    ints: &[&str],
) -> Result<(), String> {
    let f = std::fs::File::create(path).map_err(|e| err(path, "cannot create", e))?;
    let mut w = std::io::BufWriter::new(f);
    let int: Vec<bool> = columns.iter().map(|c| ints.contains(c)).collect();
    let mut write = || -> std::io::Result<()> {
        writeln!(w, "{}", columns.join(","))?;
        for v in flat.chunks_exact(columns.len()) {
            let row: Vec<String> = v
                .iter()
                .zip(&int)
                .map(|(x, &i)| {
                    if i {
                        format!("{}", *x as i64)
                    } else {
                        format!("{x:.6}")
                    }
                })
                .collect();
            writeln!(w, "{}", row.join(","))?;
        }
        w.flush()
    };
    write().map_err(|e| err(path, "cannot write", e))
}
