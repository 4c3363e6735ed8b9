//! Checks made before a dataset of a user's HDF5 file is read into memory.
//!
//! A dataset's header may declare any shape; HDF5 finds out that the file
//! holds nothing of the sort only while reading, after the reader has
//! allocated room for the whole shape. A shape whose element count does not
//! fit in `usize`, or that needs more bytes than the file stores for the
//! dataset could ever expand to, is refused here with a message instead.

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
    let item = ds.dtype().map(|t| t.size()).unwrap_or(1).max(1) as u64;
    let bytes = (span as u64).saturating_mul(item);
    let stored = ds.storage_size();
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
    if bytes > limit {
        return Err(format!(
            "shape {shape:?} needs {bytes} bytes but the file stores {stored} bytes of it{}: the file is damaged or truncated",
            if filtered { " (compressed)" } else { "" }
        ));
    }
    Ok(n)
}
