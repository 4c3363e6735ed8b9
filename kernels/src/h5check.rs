//! Checks made before a user's HDF5 file is opened, and before one of its
//! datasets is read into memory.
//!
//! A dataset's header may declare any shape; HDF5 finds out that the file
//! holds nothing of the sort only while reading, after the reader has
//! allocated room for the whole shape. A shape whose element count does not
//! fit in `usize`, or that needs more bytes than the file stores for the
//! dataset could ever expand to, is refused here with a message instead.
//! [`open`] does the same for the one superblock field libhdf5 sizes a
//! read by before checking it.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use hdf5::dataset::Layout;

/// Deflate, the strongest filter the kernels' inputs use, shrinks data at
/// most about 1032:1 (LZF far less): a filtered dataset never holds more
/// than this many times the bytes it stores.
const MAX_RATIO: u64 = 1100;

/// Bytes allowed beyond what the file stores: fill values of datasets
/// never written, and small datasets kept in their object header.
const SLACK: u64 = 1 << 16;

/// Elements of `shape`, or `None` when the count overflows `usize`.
pub fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// Physical memory of this machine in bytes (`u64::MAX` if unknown).
fn physical_memory() -> u64 {
    // SAFETY: sysconf reads a constant of the system and has no
    // preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    match (u64::try_from(pages), u64::try_from(size)) {
        (Ok(p), Ok(s)) if p > 0 && s > 0 => p.saturating_mul(s),
        _ => u64::MAX,
    }
}

/// The element count of `ds` when reading it whole is plausible: the count
/// fits in `usize` and the file stores enough bytes to hold that many
/// elements (compressed by at most [`MAX_RATIO`] when the dataset is
/// filtered); for an empty dataset, as many as its non-empty axes span. Virtual datasets store nothing themselves: they may be as
/// large as the machine's memory. The error is a message for "FILE: NAME:".
pub fn whole(ds: &hdf5::Dataset) -> Result<usize, String> {
    let shape = ds.shape();
    // An empty dataset holds nothing, but readers size their buffers by
    // its other axes (a frame of an empty stack): those count too.
    let nonzero: Vec<usize> = shape.iter().copied().filter(|&d| d > 0).collect();
    let (Some(n), Some(span)) = (elements(&shape), elements(&nonzero)) else {
        return Err(format!(
            "shape {shape:?}: more elements than this machine can count"
        ));
    };
    // libhdf5 1.10 opens a dataset whose datatype has no size, then
    // divides by that size when it reads fill values.
    let item = ds
        .dtype()
        .map(|t| t.size())
        .map_err(|e| format!("unreadable datatype: {e}"))?;
    if item == 0 {
        return Err(format!(
            "shape {shape:?}: its datatype has a size of 0 bytes"
        ));
    }
    let item = item as u64;
    let bytes = (span as u64).saturating_mul(item);
    // What the layout message says is stored, which a damaged file may
    // overstate: no dataset stores more than its file holds.
    let file_size = ds.file().map(|f| f.size()).unwrap_or(u64::MAX);
    let stored = ds.storage_size().min(file_size);
    let layout = ds.layout();
    let filtered = !ds.filters().is_empty();
    let limit = if matches!(
        layout,
        Layout::Compact | Layout::Contiguous | Layout::Chunked
    ) {
        let ratio = if filtered { MAX_RATIO } else { 1 };
        stored.saturating_mul(ratio).saturating_add(SLACK)
    } else {
        physical_memory()
    };
    // libhdf5 1.10 copies a whole contiguous or compact dataset from its
    // storage without checking that the storage holds it.
    let whole_bytes = (n as u64).saturating_mul(item);
    let kept = matches!(layout, Layout::Compact | Layout::Contiguous);
    if kept && n > 0 && stored > 0 && stored < whole_bytes {
        return Err(format!(
            "shape {shape:?} needs {whole_bytes} bytes but its storage holds {stored}: the file is damaged"
        ));
    }
    // Nor that a contiguous dataset's data lies inside the file.
    if let (Layout::Contiguous, Some(at)) = (layout, ds.offset()) {
        if n > 0 && at.saturating_add(whole_bytes) > file_size {
            return Err(format!(
                "shape {shape:?}: its {whole_bytes} bytes at byte {at} run past the end of the file ({file_size} bytes)"
            ));
        }
    }
    if bytes > limit {
        return Err(format!(
            "shape {shape:?} needs {bytes} bytes but the file stores {stored} bytes of it{}: the file is damaged or truncated",
            if filtered { " (compressed)" } else { "" }
        ));
    }
    Ok(n)
}

/// Opens `path` as HDF5 after checking the one field of its superblock
/// that libhdf5 trusts to size a read: the driver information block's
/// length. libhdf5 reads that many bytes (zeros past the end of the file)
/// before it checks anything, so a damaged length costs gigabytes.
pub fn open(path: &Path) -> hdf5::Result<hdf5::File> {
    check_superblock(path).map_err(|e| hdf5::Error::from(e.as_str()))?;
    hdf5::File::open(path)
}

/// Finds the superblock (at 0, 512, 1024, … as libhdf5 does) and refuses a
/// version 0 or 1 superblock whose driver information block does not fit
/// in the file. Anything else is left to libhdf5.
fn check_superblock(path: &Path) -> Result<(), String> {
    const SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";
    let Ok(mut f) = std::fs::File::open(path) else {
        return Ok(()); // libhdf5 says why
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut at = 0u64;
    let mut head = [0u8; 28 + 4 * 8];
    while at < len {
        let n = read_at(&mut f, at, &mut head);
        if n >= 8 && &head[..8] == SIGNATURE {
            return check_driver_info(&mut f, len, at, &head[..n]);
        }
        at = if at == 0 { 512 } else { at * 2 };
    }
    Ok(())
}

fn read_at(f: &mut std::fs::File, at: u64, buf: &mut [u8]) -> usize {
    if f.seek(SeekFrom::Start(at)).is_err() {
        return 0;
    }
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

fn check_driver_info(
    f: &mut std::fs::File,
    len: u64,
    superblock: u64,
    head: &[u8],
) -> Result<(), String> {
    let (version, size_of_offsets) = match head {
        [_, _, _, _, _, _, _, _, v, _, _, _, _, so, ..] => (*v, usize::from(*so)),
        _ => return Ok(()),
    };
    let start = match version {
        0 => 24,
        1 => 28,
        _ => return Ok(()),
    };
    if !matches!(size_of_offsets, 2 | 4 | 8) {
        return Ok(());
    }
    let addr = |i: usize| -> Option<u64> {
        let b = head.get(start + i * size_of_offsets..start + (i + 1) * size_of_offsets)?;
        let mut v = [0u8; 8];
        v[..b.len()].copy_from_slice(b);
        let v = u64::from_le_bytes(v);
        let undefined = u64::MAX >> (64 - 8 * size_of_offsets);
        (v != undefined).then_some(v)
    };
    // Base address, free space, end of file, driver information block:
    // addresses count from the base, which libhdf5 takes to be where it
    // found the superblock.
    let Some(info) = addr(3) else {
        return Ok(());
    };
    let at = superblock.saturating_add(info);
    let mut block = [0u8; 8];
    let fits = read_at(f, at, &mut block) == 8 && {
        let size = u64::from(u32::from_le_bytes([block[4], block[5], block[6], block[7]]));
        at.saturating_add(16).saturating_add(size) <= len
    };
    if fits {
        Ok(())
    } else {
        Err(format!(
            "damaged superblock: its driver information block at byte {at} runs past the end of the file ({len} bytes)"
        ))
    }
}
