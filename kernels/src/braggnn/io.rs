//! Patch files: `/patches (N, side, side)` float32 counts and `/centres
//! (N, 2)` float64 peak centres (row, col) in each patch's pixel
//! coordinates (pixel centres at integers), with the network's patch size
//! `psz` and the margin `aug` (side = psz + 2·aug) as root attributes.
//! Made by the synthetic generator, or cut from real frames around fitted
//! peaks. Every error names the file and the dataset.

use std::path::Path;

use hdf5::File;

use crate::synthetic::braggnn::PatchSet;

fn err(path: &Path, what: &str, e: impl std::fmt::Display) -> String {
    format!("{}: {what}: {e}", path.display())
}

/// Writes `set` to `path` through a temporary file renamed into place.
pub fn write(path: &Path, set: &PatchSet) -> Result<(), String> {
    let tmp = path.with_extension("h5.partial");
    {
        let f = File::create(&tmp).map_err(|e| err(&tmp, "cannot create", e))?;
        let side = set.side();
        f.new_dataset::<f32>()
            .chunk((set.len().clamp(1, 4096), side, side))
            .shape((set.len(), side, side))
            .create("patches")
            .and_then(|d| d.write_raw(&set.pixels))
            .map_err(|e| err(&tmp, "patches", e))?;
        let flat: Vec<f64> = set.centres.iter().flatten().copied().collect();
        f.new_dataset::<f64>()
            .shape((set.len(), 2))
            .create("centres")
            .and_then(|d| d.write_raw(&flat))
            .map_err(|e| err(&tmp, "centres", e))?;
        for (k, v) in [("psz", set.psz), ("aug", set.aug)] {
            f.new_attr::<u64>()
                .create(k)
                .and_then(|a| a.write_scalar(&(v as u64)))
                .map_err(|e| err(&tmp, k, e))?;
        }
    }
    std::fs::rename(&tmp, path).map_err(|e| err(path, "cannot rename into place", e))
}

/// Reads a patch file, checking that its shapes agree with each other.
pub fn read(path: &Path) -> Result<PatchSet, String> {
    let f = File::open(path).map_err(|e| err(path, "cannot open as HDF5", e))?;
    let attr = |k: &str| -> Result<usize, String> {
        f.attr(k)
            .and_then(|a| a.read_scalar::<u64>())
            .map(|v| v as usize)
            .map_err(|e| err(path, &format!("attribute {k}"), e))
    };
    let (psz, aug) = (attr("psz")?, attr("aug")?);
    let side = psz + 2 * aug;
    let d = f.dataset("patches").map_err(|e| err(path, "patches", e))?;
    let shape = d.shape();
    if shape.len() != 3 || shape[1] != side || shape[2] != side {
        return Err(err(
            path,
            "patches",
            format!("shape {shape:?}, expected (N, {side}, {side}) for psz {psz} and aug {aug}"),
        ));
    }
    let pixels = d.read_raw::<f32>().map_err(|e| err(path, "patches", e))?;
    if let Some(i) = pixels.iter().position(|v| !v.is_finite()) {
        let s = side * side;
        return Err(err(
            path,
            "patches",
            format!(
                "patch {} pixel ({}, {}) is not finite",
                i / s,
                i % s / side,
                i % side
            ),
        ));
    }
    let c = f.dataset("centres").map_err(|e| err(path, "centres", e))?;
    if c.shape() != [shape[0], 2] {
        return Err(err(
            path,
            "centres",
            format!("shape {:?}, expected ({}, 2)", c.shape(), shape[0]),
        ));
    }
    let flat = c.read_raw::<f64>().map_err(|e| err(path, "centres", e))?;
    let centres: Vec<[f64; 2]> = flat.chunks_exact(2).map(|p| [p[0], p[1]]).collect();
    if let Some(i) = centres.iter().position(|p| {
        !(p[0] >= -0.5 && p[0] <= side as f64 - 0.5 && p[1] >= -0.5 && p[1] <= side as f64 - 0.5)
    }) {
        return Err(err(
            path,
            "centres",
            format!(
                "patch {i}: centre {:?} lies outside its {side}×{side} patch",
                centres[i]
            ),
        ));
    }
    Ok(PatchSet {
        psz,
        aug,
        pixels,
        centres,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_files_round_trip_and_bad_ones_are_named() {
        let t = tempfile::tempdir().unwrap();
        let set = crate::synthetic::braggnn::patches(20, 11, 1, 9);
        let p = t.path().join("p.h5");
        write(&p, &set).unwrap();
        let back = read(&p).unwrap();
        assert_eq!(back.pixels, set.pixels);
        assert_eq!(back.centres, set.centres);
        assert_eq!((back.psz, back.aug), (11, 1));
        let bad = crate::synthetic::braggnn::PatchSet {
            centres: vec![[40.0, 2.0]; 20],
            ..set
        };
        let q = t.path().join("bad.h5");
        write(&q, &bad).unwrap();
        let e = read(&q).unwrap_err();
        assert!(e.contains("bad.h5") && e.contains("patch 0"), "{e}");
    }
}
