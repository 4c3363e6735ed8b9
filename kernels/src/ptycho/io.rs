//! Ptychography files.
//!
//! Read: the self-describing dataset file (`/data/intensities (N,n,n)`,
//! DC-centred intensities; `/positions/px_center_yx` — probe-centre offsets
//! from the object centre, pty-chi's convention — or `/positions/px_corner_yx`
//! — top-left corners, tike's and PtyLab's; optional `/truth/object`,
//! `/truth/probe`, `/truth/illumination_mask`, `/init/probe`), and the
//! Ptychodus pair pty-chi reads (`/dp` in the diffraction file; `probe`,
//! `object` and `probe_position_{x,y}_m` in the product file, positions
//! converted with the object's pixel size). Complex arrays are HDF5
//! compounds `{r, i}` as h5py writes them.
//!
//! Written: the same dataset layout (by the simulator), and the result file
//! (`/object`, `/probe (modes,n,n)`, `/history/*`).

use std::path::Path;

use hdf5::File;
use rustfft::num_complex::Complex32;

use super::model::{Data, Field, Probe};
use super::recon::History;

fn err(path: &Path, what: &str, e: impl std::fmt::Display) -> String {
    format!("{}: {what}: {e}", path.display())
}

fn open(path: &Path) -> Result<File, String> {
    crate::h5check::open(path).map_err(|e| err(path, "cannot open as HDF5", e))
}

fn shape(f: &File, path: &Path, name: &str) -> Result<Vec<usize>, String> {
    f.dataset(name)
        .map(|d| d.shape())
        .map_err(|e| err(path, name, e))
}

/// Largest diffraction pattern or probe side read: 65536 pixels.
pub const MAX_PATTERN: usize = 1 << 16;

/// Largest object (or scan extent) a file may ask for: 2^30 pixels, 8 GiB
/// of complex values.
pub const MAX_OBJECT_PIXELS: usize = 1 << 30;

/// The dataset `name`, checked to be readable whole (see `h5check`).
fn dataset(f: &File, path: &Path, name: &str) -> Result<hdf5::Dataset, String> {
    let d = f.dataset(name).map_err(|e| err(path, name, e))?;
    crate::h5check::whole(&d).map_err(|e| err(path, name, e))?;
    Ok(d)
}

fn read_f32(f: &File, path: &Path, name: &str) -> Result<Vec<f32>, String> {
    dataset(f, path, name)?
        .read_raw::<f32>()
        .map_err(|e| err(path, name, e))
}

fn read_f64(f: &File, path: &Path, name: &str) -> Result<Vec<f64>, String> {
    dataset(f, path, name)?
        .read_raw::<f64>()
        .map_err(|e| err(path, name, e))
}

/// Refuses patterns that are not square, or larger than [`MAX_PATTERN`].
fn check_pattern(path: &Path, name: &str, n: usize, n2: usize) -> Result<(), String> {
    if n != n2 {
        return Err(err(
            path,
            name,
            format!("patterns are {n}×{n2}, not square"),
        ));
    }
    if n > MAX_PATTERN {
        return Err(err(
            path,
            name,
            format!("patterns of {n}×{n} are larger than {MAX_PATTERN}×{MAX_PATTERN}"),
        ));
    }
    Ok(())
}

/// Refuses an object larger than [`MAX_OBJECT_PIXELS`].
fn check_object(path: &Path, what: &str, (rows, cols): (usize, usize)) -> Result<(), String> {
    if rows.saturating_mul(cols) > MAX_OBJECT_PIXELS {
        return Err(err(
            path,
            what,
            format!("an object of {rows}×{cols} pixels is larger than {MAX_OBJECT_PIXELS} pixels"),
        ));
    }
    Ok(())
}

/// A complex dataset's type must be h5py's `{r, i}` of two floats inside
/// the compound: libhdf5 1.10 converts a damaged compound (a member past
/// its end, a size of gigabytes) by copying out of bounds.
fn check_complex(d: &hdf5::Dataset) -> Result<(), String> {
    use hdf5::types::TypeDescriptor;
    let desc = d
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(|e| e.to_string())?;
    let ok = match &desc {
        TypeDescriptor::Compound(c) => {
            c.size <= 16
                && c.fields.len() == 2
                && c.fields.iter().all(|f| {
                    matches!(f.ty, TypeDescriptor::Float(_)) && f.offset + f.ty.size() <= c.size
                })
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "type {desc} is not a complex {{r, i}} of two floats"
        ))
    }
}

fn read_c32(f: &File, path: &Path, name: &str) -> Result<(Vec<Complex32>, Vec<usize>), String> {
    let d = dataset(f, path, name)?;
    check_complex(&d).map_err(|e| err(path, name, e))?;
    let v = d
        .read_raw::<Complex32>()
        .map_err(|e| err(path, name, format!("{e} (expected complex {{r, i}})")))?;
    Ok((v, d.shape()))
}

/// A probe from a complex dataset `(n,n)`, `(modes,n,n)` or `(opr,modes,n,n)`
/// (the first OPR mode is taken).
fn read_probe(f: &File, path: &Path, name: &str) -> Result<Probe, String> {
    let (v, s) = read_c32(f, path, name)?;
    let (modes, n) = match s.as_slice() {
        [a, b] if a == b => (1, *a),
        [m, a, b] if a == b => (*m, *a),
        [_, m, a, b] if a == b => (*m, *a),
        other => {
            return Err(err(
                path,
                name,
                format!("probe shape {other:?} is not (modes,) n × n"),
            ))
        }
    };
    // The first `modes` n × n blocks: an empty leading axis holds none.
    let len = n.checked_mul(n).and_then(|nn| nn.checked_mul(modes));
    if modes == 0 || n == 0 || len.is_none_or(|len| len > v.len()) {
        return Err(err(
            path,
            name,
            format!("probe shape {s:?} holds no n × n mode"),
        ));
    }
    Ok(Probe {
        n,
        modes,
        data: v[..modes * n * n].to_vec(),
    })
}

/// A probe file given as `probe = "PATH"`: a complex dataset `/probe`
/// whose last axis is n, taken as `len / n²` modes of n × n.
pub fn read_probe_file(path: &Path) -> Result<Probe, String> {
    let f = open(path)?;
    let (v, s) = read_c32(&f, path, "probe")?;
    let n = *s.last().unwrap_or(&0);
    let nn = n.checked_mul(n).filter(|_| n <= MAX_PATTERN).unwrap_or(0);
    if nn == 0 || v.is_empty() || v.len() % nn != 0 {
        return Err(err(
            path,
            "probe",
            format!("shape {s:?} is not (modes,) n × n"),
        ));
    }
    Ok(Probe {
        n,
        modes: v.len() / nn,
        data: v,
    })
}

/// What a dataset file holds.
pub struct Loaded {
    pub data: Data,
    /// A probe to start from (`/init/probe`, or the product file's probe).
    pub init_probe: Option<Probe>,
    pub truth_probe: Option<Probe>,
    pub truth_object: Option<Field>,
    pub truth_mask: Option<Vec<bool>>,
}

/// Reads a dataset: the self-describing layout, or the Ptychodus pair when
/// `meta` (the product file) is given.
pub fn read(path: &Path, meta: Option<&Path>) -> Result<Loaded, String> {
    let f = open(path)?;
    if let Some(meta) = meta {
        return read_ptychodus(&f, path, meta);
    }
    if f.dataset("dp").is_ok() && f.dataset("data/intensities").is_err() {
        return Err(format!(
            "{}: a Ptychodus diffraction file (`/dp`): give its product file too (--meta)",
            path.display()
        ));
    }
    let s = shape(&f, path, "data/intensities")?;
    let [count, n, n2] = s[..] else {
        return Err(err(
            path,
            "data/intensities",
            format!("shape {s:?} is not (N, n, n)"),
        ));
    };
    check_pattern(path, "data/intensities", n, n2)?;
    let intensities = read_f32(&f, path, "data/intensities")?;
    let truth_object = match f.dataset("truth/object") {
        Ok(_) => {
            let (v, s) = read_c32(&f, path, "truth/object")?;
            let [rows, cols] = s[..] else {
                return Err(err(
                    path,
                    "truth/object",
                    format!("shape {s:?} is not (H, W)"),
                ));
            };
            Some(Field {
                rows,
                cols,
                data: v,
            })
        }
        Err(_) => None,
    };
    let object_shape = match (&truth_object, f.attr("object_shape")) {
        (Some(o), _) => (o.rows, o.cols),
        (None, Ok(a)) => {
            if a.shape().iter().product::<usize>() != 2 {
                return Err(err(
                    path,
                    "object_shape",
                    format!("shape {:?} is not 2 values (rows, cols)", a.shape()),
                ));
            }
            let v = a
                .read_raw::<u64>()
                .map_err(|e| err(path, "object_shape", e))?;
            let side = |x: u64| usize::try_from(x).unwrap_or(usize::MAX);
            (side(v[0]), side(v[1]))
        }
        (None, Err(_)) => (0, 0),
    };
    let positions = |name: &str| -> Result<Option<Vec<[f64; 2]>>, String> {
        if f.dataset(name).is_err() {
            return Ok(None);
        }
        let v = read_f64(&f, path, name)?;
        if v.len() != 2 * count {
            return Err(err(
                path,
                name,
                format!("{} values for {count} positions (N, 2)", v.len()),
            ));
        }
        Ok(Some(v.chunks(2).map(|p| [p[0], p[1]]).collect()))
    };
    let data = if let Some(c) = positions("positions/px_center_yx")? {
        let shape = if object_shape.0 > 0 {
            object_shape
        } else {
            Data::shape_for(&c, n, 16)
        };
        check_object(path, "positions/px_center_yx", shape)?;
        Data::from_centres(&intensities, n, &c, shape)
    } else if let Some(c) = positions("positions/px_corner_yx")? {
        let shape = if object_shape.0 > 0 {
            object_shape
        } else {
            let ext = |k: usize| {
                let far = c.iter().map(|p| p[k].round() as usize).max().unwrap_or(0);
                far.saturating_add(n)
            };
            (ext(0), ext(1))
        };
        check_object(path, "positions/px_corner_yx", shape)?;
        Data::from_corners(&intensities, n, &c, shape)
    } else {
        return Err(format!(
            "{}: no positions (/positions/px_center_yx or /positions/px_corner_yx)",
            path.display()
        ));
    }
    .map_err(|e| format!("{}: {e}", path.display()))?;
    let probe = |name: &str| -> Result<Option<Probe>, String> {
        match f.dataset(name) {
            Ok(_) => read_probe(&f, path, name).map(Some),
            Err(_) => Ok(None),
        }
    };
    let truth_mask = match f.dataset("truth/illumination_mask") {
        Ok(d) => {
            crate::h5check::whole(&d).map_err(|e| err(path, "truth/illumination_mask", e))?;
            let v = d
                .read_raw::<u8>()
                .or_else(|_| {
                    d.read_raw::<bool>()
                        .map(|b| b.into_iter().map(u8::from).collect())
                })
                .map_err(|e| err(path, "truth/illumination_mask", e))?;
            Some(v.into_iter().map(|b| b != 0).collect())
        }
        Err(_) => None,
    };
    Ok(Loaded {
        data,
        init_probe: probe("init/probe")?,
        truth_probe: probe("truth/probe")?,
        truth_object,
        truth_mask,
    })
}

fn read_ptychodus(dp: &File, path: &Path, meta: &Path) -> Result<Loaded, String> {
    let s = shape(dp, path, "dp")?;
    let [count, n, n2] = s[..] else {
        return Err(err(path, "dp", format!("shape {s:?} is not (N, n, n)")));
    };
    check_pattern(path, "dp", n, n2)?;
    let intensities = read_f32(dp, path, "dp")?;
    let m = open(meta)?;
    let probe = read_probe(&m, meta, "probe")?;
    let od = m.dataset("object").map_err(|e| err(meta, "object", e))?;
    let os = od.shape();
    let (rows, cols) = match os[..] {
        [r, c] => (r, c),
        [_, r, c] => (r, c),
        _ => {
            return Err(err(
                meta,
                "object",
                format!("shape {os:?} is not ([layers,] H, W)"),
            ))
        }
    };
    let px = |name: &str| -> Result<f64, String> {
        od.attr(name)
            .and_then(|a| a.read_scalar::<f64>())
            .map_err(|e| err(meta, &format!("object attribute {name}"), e))
    };
    let (ph, pw) = (px("pixel_height_m")?, px("pixel_width_m")?);
    if !(ph > 0.0 && pw > 0.0) {
        return Err(err(meta, "object", format!("pixel size {ph} × {pw} m")));
    }
    let (y, x) = (
        read_f64(&m, meta, "probe_position_y_m")?,
        read_f64(&m, meta, "probe_position_x_m")?,
    );
    if y.len() != count || x.len() != count {
        return Err(format!(
            "{}: {} / {} positions for {count} patterns in {}",
            meta.display(),
            y.len(),
            x.len(),
            path.display()
        ));
    }
    let centres: Vec<[f64; 2]> = y.iter().zip(&x).map(|(y, x)| [y / ph, x / pw]).collect();
    check_object(meta, "object", (rows, cols))?;
    let data = Data::from_centres(&intensities, n, &centres, (rows, cols))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if probe.n != n {
        return Err(format!(
            "{}: the probe is {}×{} but the patterns in {} are {n}×{n}",
            meta.display(),
            probe.n,
            probe.n,
            path.display()
        ));
    }
    Ok(Loaded {
        data,
        init_probe: Some(probe),
        truth_probe: None,
        truth_object: None,
        truth_mask: None,
    })
}

fn write_c32(
    f: &File,
    path: &Path,
    name: &str,
    v: &[Complex32],
    shape: &[usize],
) -> Result<(), String> {
    f.new_dataset::<Complex32>()
        .shape(shape)
        .create(name)
        .and_then(|d| d.write_raw(v))
        .map_err(|e| err(path, name, e))
}

fn write_f64(f: &File, path: &Path, name: &str, v: &[f64], shape: &[usize]) -> Result<(), String> {
    f.new_dataset::<f64>()
        .shape(shape)
        .create(name)
        .and_then(|d| d.write_raw(v))
        .map_err(|e| err(path, name, e))
}

fn write_str_attr(f: &File, path: &Path, name: &str, v: &str) -> Result<(), String> {
    let s: hdf5::types::VarLenUnicode = v.parse().map_err(|e| err(path, name, e))?;
    f.new_attr::<hdf5::types::VarLenUnicode>()
        .create(name)
        .and_then(|a| a.write_scalar(&s))
        .map_err(|e| err(path, name, e))
}

/// Writes through a temporary file renamed into place, so a reader never
/// sees half a file.
fn atomically(
    path: &Path,
    body: impl FnOnce(&File, &Path) -> Result<(), String>,
) -> Result<(), String> {
    let tmp = path.with_extension("h5.temp");
    {
        let f = File::create(&tmp).map_err(|e| err(&tmp, "cannot create", e))?;
        body(&f, &tmp)?;
    }
    std::fs::rename(&tmp, path).map_err(|e| err(path, "cannot rename into place", e))
}

/// The simulator's output in the self-describing layout.
#[allow(clippy::too_many_arguments)]
pub fn write_dataset(
    path: &Path,
    intensities: &[f32],
    n: usize,
    centres: &[[f64; 2]],
    corners: &[(usize, usize)],
    truth: Option<(&Field, &Probe, &[bool])>,
    init_probe: Option<&Probe>,
    attrs: &[(&str, String)],
) -> Result<(), String> {
    atomically(path, |f, p| {
        f.create_group("data").map_err(|e| err(p, "data", e))?;
        f.create_group("positions")
            .map_err(|e| err(p, "positions", e))?;
        f.new_dataset::<f32>()
            .chunk((1, n, n))
            .shape((centres.len(), n, n))
            .create("data/intensities")
            .and_then(|d| d.write_raw(intensities))
            .map_err(|e| err(p, "data/intensities", e))?;
        let flat: Vec<f64> = centres.iter().flatten().copied().collect();
        write_f64(f, p, "positions/px_center_yx", &flat, &[centres.len(), 2])?;
        let flat: Vec<f64> = corners
            .iter()
            .flat_map(|c| [c.0 as f64, c.1 as f64])
            .collect();
        write_f64(f, p, "positions/px_corner_yx", &flat, &[corners.len(), 2])?;
        if let Some((obj, probe, mask)) = truth {
            f.create_group("truth").map_err(|e| err(p, "truth", e))?;
            write_c32(f, p, "truth/object", &obj.data, &[obj.rows, obj.cols])?;
            write_c32(
                f,
                p,
                "truth/probe",
                &probe.data,
                &[probe.modes, probe.n, probe.n],
            )?;
            let m: Vec<u8> = mask.iter().map(|&b| u8::from(b)).collect();
            f.new_dataset::<u8>()
                .shape((obj.rows, obj.cols))
                .create("truth/illumination_mask")
                .and_then(|d| d.write_raw(&m))
                .map_err(|e| err(p, "truth/illumination_mask", e))?;
        }
        if let Some(probe) = init_probe {
            f.create_group("init").map_err(|e| err(p, "init", e))?;
            write_c32(
                f,
                p,
                "init/probe",
                &probe.data,
                &[probe.modes, probe.n, probe.n],
            )?;
        }
        for (k, v) in attrs {
            write_str_attr(f, p, k, v)?;
        }
        Ok(())
    })
}

/// The reconstruction: `/object`, `/probe (modes, n, n)`, `/history/loss`,
/// `/history/seconds` and, when the truth was known, `/history/nrmse` and
/// `/history/phase_rms`; `attrs` as string attributes.
pub fn write_result(
    path: &Path,
    obj: &Field,
    probe: &Probe,
    history: &History,
    positions: Option<&[[f64; 2]]>,
    attrs: &[(&str, String)],
) -> Result<(), String> {
    atomically(path, |f, p| {
        write_c32(f, p, "object", &obj.data, &[obj.rows, obj.cols])?;
        write_c32(f, p, "probe", &probe.data, &[probe.modes, probe.n, probe.n])?;
        f.create_group("history")
            .map_err(|e| err(p, "history", e))?;
        write_f64(f, p, "history/loss", &history.loss, &[history.loss.len()])?;
        write_f64(
            f,
            p,
            "history/seconds",
            &history.seconds,
            &[history.seconds.len()],
        )?;
        if !history.error.is_empty() {
            let e: Vec<f64> = history.error.iter().map(|e| e.nrmse).collect();
            write_f64(f, p, "history/nrmse", &e, &[e.len()])?;
            let e: Vec<f64> = history.error.iter().map(|e| e.phase_rms).collect();
            write_f64(f, p, "history/phase_rms", &e, &[e.len()])?;
        }
        if let Some(pos) = positions {
            f.create_group("positions")
                .map_err(|e| err(p, "positions", e))?;
            let flat: Vec<f64> = pos.iter().flatten().copied().collect();
            write_f64(f, p, "positions/px_corner_yx", &flat, &[pos.len(), 2])?;
        }
        for (k, v) in attrs {
            write_str_attr(f, p, k, v)?;
        }
        Ok(())
    })
}

/// Writes a Ptychodus pair (`/dp`; product file with `probe`, `object`,
/// positions in metres for an object pixel of `pixel_m`), as pty-chi's own
/// tests read them.
#[allow(clippy::too_many_arguments)]
pub fn write_ptychodus(
    dp: &Path,
    meta: &Path,
    intensities: &[f32],
    n: usize,
    centres: &[[f64; 2]],
    probe: &Probe,
    object: &Field,
    pixel_m: f64,
) -> Result<(), String> {
    atomically(dp, |f, p| {
        f.new_dataset::<f32>()
            .shape((centres.len(), n, n))
            .create("dp")
            .and_then(|d| d.write_raw(intensities))
            .map_err(|e| err(p, "dp", e))
    })?;
    atomically(meta, |f, p| {
        write_c32(f, p, "probe", &probe.data, &[probe.modes, n, n])?;
        write_c32(f, p, "object", &object.data, &[1, object.rows, object.cols])?;
        let od = f.dataset("object").map_err(|e| err(p, "object", e))?;
        for k in ["pixel_height_m", "pixel_width_m"] {
            od.new_attr::<f64>()
                .create(k)
                .and_then(|a| a.write_scalar(&pixel_m))
                .map_err(|e| err(p, k, e))?;
        }
        let y: Vec<f64> = centres.iter().map(|c| c[0] * pixel_m).collect();
        let x: Vec<f64> = centres.iter().map(|c| c[1] * pixel_m).collect();
        write_f64(f, p, "probe_position_y_m", &y, &[y.len()])?;
        write_f64(f, p, "probe_position_x_m", &x, &[x.len()])?;
        let idx: Vec<i64> = (0..centres.len() as i64).collect();
        f.new_dataset::<i64>()
            .shape(idx.len())
            .create("probe_position_indexes")
            .and_then(|d| d.write_raw(&idx))
            .map_err(|e| err(p, "probe_position_indexes", e))
    })
}
