//! APS legacy IMM frames (reference/xpcs.md §4, the `ImmDataset` row).
//!
//! An IMM file is a sequence of frames, each a 1024-byte little-endian
//! header followed by its payload. The header is the packed (no padding)
//! struct `ii32s16si16siiiiiiiiiiiiiddiiIiiI40sf...` of the reference; the
//! fields this reader and writer use sit at these byte offsets:
//!
//! | field         | offset | type |
//! |---------------|-------:|------|
//! | compression   |      4 | i32  |
//! | number        |     56 | i32  |
//! | row_beg       |     84 | i32  |
//! | row_end       |     88 | i32  |
//! | col_beg       |     92 | i32  |
//! | col_end       |     96 | i32  |
//! | row_bin       |    100 | i32  |
//! | col_bin       |    104 | i32  |
//! | rows          |    108 | i32  |
//! | cols          |    112 | i32  |
//! | bytes         |    116 | i32  |
//! | elapsed       |    128 | f64  |
//! | preset        |    136 | f64  |
//! | dlen          |    152 | u32  |
//! | buffer_number |    160 | i32  |
//!
//! Payload: with `compression == 6` (sparse) `dlen` i32 pixel indices then
//! `dlen` u16 counts; otherwise (dense, as the reference reads it) `dlen`
//! u16 values, which must be exactly `rows * cols`. The frame shape is
//! (`rows`, `cols`) = (height, width). Frame numbers in errors count from 0,
//! byte offsets are those of the frame's header unless stated otherwise.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::io::Frames;

/// Size of every frame header.
pub const HEADER_BYTES: usize = 1024;
/// `compression` value of sparse (index, count) frames.
pub const SPARSE: i32 = 6;
/// Most pixels a frame may have (64 Mi, 128 MiB of counts).
pub const MAX_PIXELS: usize = 1 << 26;

const OFF_COMPRESSION: usize = 4;
const OFF_NUMBER: usize = 56;
const OFF_ROW_BEG: usize = 84;
const OFF_ROW_END: usize = 88;
const OFF_COL_BEG: usize = 92;
const OFF_COL_END: usize = 96;
const OFF_ROW_BIN: usize = 100;
const OFF_COL_BIN: usize = 104;
const OFF_ROWS: usize = 108;
const OFF_COLS: usize = 112;
const OFF_BYTES: usize = 116;
const OFF_ELAPSED: usize = 128;
const OFF_PRESET: usize = 136;
const OFF_DLEN: usize = 152;
const OFF_BUFFER_NUMBER: usize = 160;

const HDF5_SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";

fn get4(h: &[u8; HEADER_BYTES], off: usize) -> [u8; 4] {
    let mut b = [0u8; 4];
    b.copy_from_slice(&h[off..off + 4]);
    b
}

fn put(h: &mut [u8; HEADER_BYTES], off: usize, bytes: &[u8]) {
    h[off..off + bytes.len()].copy_from_slice(bytes);
}

/// The header fields the reader needs.
struct Header {
    compression: i32,
    rows: i32,
    cols: i32,
    dlen: u32,
    elapsed: f64,
}

impl Header {
    fn parse(h: &[u8; HEADER_BYTES]) -> Self {
        let mut e = [0u8; 8];
        e.copy_from_slice(&h[OFF_ELAPSED..OFF_ELAPSED + 8]);
        Header {
            compression: i32::from_le_bytes(get4(h, OFF_COMPRESSION)),
            rows: i32::from_le_bytes(get4(h, OFF_ROWS)),
            cols: i32::from_le_bytes(get4(h, OFF_COLS)),
            dlen: u32::from_le_bytes(get4(h, OFF_DLEN)),
            elapsed: f64::from_le_bytes(e),
        }
    }

    fn sparse(&self) -> bool {
        self.compression == SPARSE
    }

    /// Payload size in bytes: 6 per sparse event, 2 per dense value.
    fn payload_bytes(&self) -> u64 {
        u64::from(self.dlen) * if self.sparse() { 6 } else { 2 }
    }

    /// (rows, cols, rows * cols) after checking the shape and, for dense
    /// frames, that `dlen` covers the frame exactly.
    fn shape(&self) -> Result<(usize, usize, usize), String> {
        let (rows, cols) = match (usize::try_from(self.rows), usize::try_from(self.cols)) {
            (Ok(r), Ok(c)) if r > 0 && c > 0 => (r, c),
            _ => {
                return Err(format!(
                    "rows {} and cols {} must both be positive",
                    self.rows, self.cols
                ))
            }
        };
        let px = rows
            .checked_mul(cols)
            .ok_or_else(|| format!("rows*cols = {rows}*{cols} is too large"))?;
        if !self.sparse() && u64::from(self.dlen) != px as u64 {
            return Err(format!(
                "dense frame (compression {}) has dlen {}, expected rows*cols = {rows}*{cols} = {px}",
                self.compression, self.dlen
            ));
        }
        Ok((rows, cols, px))
    }
}

/// One frame in the table of contents.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Byte offset of the frame's header.
    offset: u64,
    dlen: u32,
    compression: i32,
}

/// An open IMM file: its shape and table of contents.
#[derive(Debug)]
pub struct ImmFile {
    path: PathBuf,
    toc: Vec<Entry>,
    elapsed: Vec<f64>,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
}

impl ImmFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Scans the headers once (seeking past the payloads) to build the
    /// table of contents. Rejects empty and truncated files, non-positive
    /// or changing frame shapes, and dense frames whose `dlen` is not
    /// `rows * cols`.
    pub fn open(path: &Path) -> Result<Self, String> {
        let name = path.display();
        let mut file = File::open(path).map_err(|e| format!("{name}: cannot open: {e}"))?;
        let len = file
            .metadata()
            .map_err(|e| format!("{name}: cannot read metadata: {e}"))?
            .len();
        if len == 0 {
            return Err(format!("{name}: no frames: the file is empty"));
        }
        let mut toc = Vec::new();
        let mut elapsed = Vec::new();
        let mut first: Option<(usize, usize, usize)> = None;
        let mut offset = 0u64;
        let mut h = [0u8; HEADER_BYTES];
        while offset < len {
            let i = toc.len();
            let at = |what: String| format!("{name}: frame {i} at byte {offset}: {what}");
            let remain = len - offset;
            if remain < HEADER_BYTES as u64 {
                return Err(at(format!(
                    "header cut short, {remain} of {HEADER_BYTES} bytes present"
                )));
            }
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| at(format!("cannot seek: {e}")))?;
            file.read_exact(&mut h)
                .map_err(|e| at(format!("cannot read the header: {e}")))?;
            let hd = Header::parse(&h);
            let (rows, cols, px) = hd.shape().map_err(at)?;
            // A sparse frame of a few events may declare any shape, and is
            // read into a dense frame of that shape.
            if px > MAX_PIXELS {
                return Err(at(format!(
                    "rows*cols = {rows}*{cols} is more than {MAX_PIXELS} pixels"
                )));
            }
            match first {
                None => first = Some((rows, cols, px)),
                Some((r0, c0, px0)) if (r0, c0) != (rows, cols) => {
                    return Err(at(format!(
                        "frame is {rows}x{cols} (rows x cols, {px} pixels) but frame 0 is {r0}x{c0} ({px0} pixels)"
                    )))
                }
                Some(_) => {}
            }
            let need = hd.payload_bytes();
            let left = remain - HEADER_BYTES as u64;
            if need > left {
                let kind = if hd.sparse() {
                    "sparse events"
                } else {
                    "values"
                };
                return Err(at(format!(
                    "header says {} {kind} ({need} bytes) but {left} bytes remain",
                    hd.dlen
                )));
            }
            toc.push(Entry {
                offset,
                dlen: hd.dlen,
                compression: hd.compression,
            });
            elapsed.push(hd.elapsed);
            offset += HEADER_BYTES as u64 + need;
        }
        // `len > 0` means at least one header was parsed or an error returned.
        let Some((height, width, _)) = first else {
            return Err(format!("{name}: no frames"));
        };
        Ok(ImmFile {
            path: path.to_path_buf(),
            frames: toc.len(),
            toc,
            elapsed,
            height,
            width,
        })
    }

    /// Frames `start..start + count` as dense `Frames::U16`, frame-major;
    /// sparse frames are scattered into zeros (a repeated index keeps the
    /// last count). Sparse pixel indices outside the frame are an error.
    pub fn read_frames(&self, start: usize, count: usize) -> Result<Frames, String> {
        let name = self.path.display();
        let end = match start.checked_add(count) {
            Some(end) if end <= self.frames => end,
            _ => {
                return Err(format!(
                    "{name}: frames {start}..{} requested, the file has {}",
                    start as u128 + count as u128,
                    self.frames
                ))
            }
        };
        let px = self.height * self.width; // checked in `open`
        let total = count.checked_mul(px).ok_or_else(|| {
            format!("{name}: frames {start}..{end} of {px} pixels are too many values")
        })?;
        let mut out: Vec<u16> = Vec::new();
        out.try_reserve_exact(total).map_err(|e| {
            format!("{name}: frames {start}..{end}: cannot allocate {total} values: {e}")
        })?;
        out.resize(total, 0);
        if count == 0 {
            return Ok(Frames::U16(out));
        }
        let file = File::open(&self.path).map_err(|e| format!("{name}: cannot open: {e}"))?;
        let mut r = BufReader::with_capacity(1 << 16, file);
        let mut buf: Vec<u8> = Vec::new();
        for (k, (e, frame)) in self.toc[start..end]
            .iter()
            .zip(out.chunks_exact_mut(px))
            .enumerate()
        {
            let i = start + k;
            let at = |what: String| format!("{name}: frame {i} at byte {}: {what}", e.offset);
            let payload = e.offset + HEADER_BYTES as u64;
            if k == 0 {
                r.seek(SeekFrom::Start(payload))
                    .map_err(|err| at(format!("cannot seek: {err}")))?;
            } else {
                // Frames are contiguous: the previous payload ends at this header.
                r.seek_relative(HEADER_BYTES as i64)
                    .map_err(|err| at(format!("cannot seek: {err}")))?;
            }
            let dlen = e.dlen as usize;
            let sparse = e.compression == SPARSE;
            buf.clear();
            buf.resize(dlen * if sparse { 6 } else { 2 }, 0);
            r.read_exact(&mut buf)
                .map_err(|err| at(format!("cannot read {} payload bytes: {err}", buf.len())))?;
            if sparse {
                let (idx, counts) = buf.split_at(4 * dlen);
                for (j, (ib, cb)) in idx.chunks_exact(4).zip(counts.chunks_exact(2)).enumerate() {
                    let p = i32::from_le_bytes([ib[0], ib[1], ib[2], ib[3]]);
                    match usize::try_from(p) {
                        Ok(p) if p < px => frame[p] = u16::from_le_bytes([cb[0], cb[1]]),
                        _ => {
                            return Err(at(format!(
                                "sparse event {j} (byte {}) has pixel index {p}, outside 0..{px} (rows*cols = {}*{})",
                                payload + 4 * j as u64,
                                self.height,
                                self.width
                            )))
                        }
                    }
                }
            } else {
                for (v, c) in frame.iter_mut().zip(buf.chunks_exact(2)) {
                    *v = u16::from_le_bytes([c[0], c[1]]);
                }
            }
        }
        Ok(Frames::U16(out))
    }

    /// Elapsed time of each frame from its header, in seconds.
    pub fn elapsed(&self) -> &[f64] {
        &self.elapsed
    }
}

/// Writes `frames` (frame-major `height x width` u16 counts) as an IMM file:
/// dense, or sparse (compression 6, only the nonzero pixels). Frame `i` gets
/// `elapsed = i * frame_time` and `preset = frame_time`.
pub fn write_imm(
    path: &Path,
    frames: &[u16],
    height: usize,
    width: usize,
    sparse: bool,
    frame_time: f64,
) -> Result<(), String> {
    let name = path.display();
    let shape = |what: &str| format!("{name}: cannot write {height}x{width} frames: {what}");
    let (Ok(rows), Ok(cols)) = (i32::try_from(height), i32::try_from(width)) else {
        return Err(shape("rows and cols must fit in a 32-bit integer"));
    };
    if rows == 0 || cols == 0 {
        return Err(shape("rows and cols must be positive"));
    }
    let px = height
        .checked_mul(width)
        .filter(|&p| u32::try_from(p).is_ok() && i32::try_from(p - 1).is_ok())
        .ok_or_else(|| shape("rows*cols does not fit the header"))?;
    if frames.is_empty() || !frames.chunks_exact(px).remainder().is_empty() {
        return Err(shape(&format!(
            "{} values are not a whole, nonzero number of frames",
            frames.len()
        )));
    }
    let file = File::create(path).map_err(|e| format!("{name}: cannot create: {e}"))?;
    let mut w = BufWriter::new(file);
    let mut payload: Vec<u8> = Vec::new();
    for (i, frame) in frames.chunks_exact(px).enumerate() {
        payload.clear();
        let dlen = if sparse {
            let nonzero: Vec<(usize, u16)> = frame
                .iter()
                .enumerate()
                .filter(|&(_, &c)| c != 0)
                .map(|(p, &c)| (p, c))
                .collect();
            for &(p, _) in &nonzero {
                // p < px and px - 1 fits in i32 (checked above).
                payload.extend_from_slice(&(p as i32).to_le_bytes());
            }
            for &(_, c) in &nonzero {
                payload.extend_from_slice(&c.to_le_bytes());
            }
            nonzero.len()
        } else {
            for &c in frame {
                payload.extend_from_slice(&c.to_le_bytes());
            }
            px
        };
        let number = i32::try_from(i).unwrap_or(i32::MAX);
        let mut h = [0u8; HEADER_BYTES];
        let compression = if sparse { SPARSE } else { 0 };
        put(&mut h, OFF_COMPRESSION, &compression.to_le_bytes());
        put(&mut h, OFF_NUMBER, &number.to_le_bytes());
        put(&mut h, OFF_ROW_BEG, &0i32.to_le_bytes());
        put(&mut h, OFF_ROW_END, &(rows - 1).to_le_bytes());
        put(&mut h, OFF_COL_BEG, &0i32.to_le_bytes());
        put(&mut h, OFF_COL_END, &(cols - 1).to_le_bytes());
        put(&mut h, OFF_ROW_BIN, &1i32.to_le_bytes());
        put(&mut h, OFF_COL_BIN, &1i32.to_le_bytes());
        put(&mut h, OFF_ROWS, &rows.to_le_bytes());
        put(&mut h, OFF_COLS, &cols.to_le_bytes());
        put(&mut h, OFF_BYTES, &2i32.to_le_bytes());
        put(&mut h, OFF_ELAPSED, &(i as f64 * frame_time).to_le_bytes());
        put(&mut h, OFF_PRESET, &frame_time.to_le_bytes());
        // dlen <= px, which fits in u32 (checked above).
        put(&mut h, OFF_DLEN, &(dlen as u32).to_le_bytes());
        put(&mut h, OFF_BUFFER_NUMBER, &number.to_le_bytes());
        w.write_all(&h)
            .and_then(|()| w.write_all(&payload))
            .map_err(|e| format!("{name}: frame {i}: cannot write: {e}"))?;
    }
    w.flush().map_err(|e| format!("{name}: cannot write: {e}"))
}

/// True when the file starts like an IMM file: not HDF5, and a first
/// header with a positive shape whose payload fits in the file (dense
/// frames with `dlen == rows * cols`). Used to choose the reader by content.
pub fn is_imm(path: &Path) -> bool {
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    let Ok(meta) = file.metadata() else {
        return false;
    };
    let mut h = [0u8; HEADER_BYTES];
    if file.read_exact(&mut h).is_err() || h.starts_with(HDF5_SIGNATURE) {
        return false;
    }
    let hd = Header::parse(&h);
    hd.shape().is_ok() && HEADER_BYTES as u64 + hd.payload_bytes() <= meta.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: usize = 17;
    const W: usize = 23;
    const PX: usize = H * W;

    /// Deterministic counts, about 60 % zeros, with values above 255 and
    /// near 65535 so byte order matters.
    fn counts(n: usize, seed: u64) -> Vec<u16> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let v = match s % 10 {
                    0..=5 => 0,
                    6 | 7 => 1 + (s >> 8) % 5,
                    8 => (s >> 16) % 1000,
                    _ => 60_000 + (s >> 20) % 5_536,
                };
                v as u16
            })
            .collect()
    }

    fn u16s(f: Frames) -> Vec<u16> {
        match f {
            Frames::U16(v) => v,
            _ => panic!("IMM frames must come back as U16"),
        }
    }

    /// A header built with literal offsets, independent of the module's
    /// constants, so a wrong constant fails the tests.
    fn hand_header(compression: i32, rows: i32, cols: i32, dlen: u32, elapsed: f64) -> Vec<u8> {
        let mut h = vec![0u8; 1024];
        h[4..8].copy_from_slice(&compression.to_le_bytes());
        h[108..112].copy_from_slice(&rows.to_le_bytes());
        h[112..116].copy_from_slice(&cols.to_le_bytes());
        h[116..120].copy_from_slice(&2i32.to_le_bytes());
        h[128..136].copy_from_slice(&elapsed.to_le_bytes());
        h[152..156].copy_from_slice(&dlen.to_le_bytes());
        h
    }

    fn hand_dense(rows: i32, cols: i32, values: &[u16], elapsed: f64) -> Vec<u8> {
        let mut f = hand_header(0, rows, cols, values.len() as u32, elapsed);
        for v in values {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f
    }

    fn hand_sparse(rows: i32, cols: i32, events: &[(i32, u16)], elapsed: f64) -> Vec<u8> {
        let mut f = hand_header(6, rows, cols, events.len() as u32, elapsed);
        for (p, _) in events {
            f.extend_from_slice(&p.to_le_bytes());
        }
        for (_, c) in events {
            f.extend_from_slice(&c.to_le_bytes());
        }
        f
    }

    fn round_trip(sparse: bool) {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join(if sparse { "s.imm" } else { "d.imm" });
        let data = counts(3 * PX, if sparse { 7 } else { 3 });
        let zeros = data.iter().filter(|&&c| c == 0).count();
        assert!(zeros > PX && zeros < 2 * PX, "{zeros} zeros");
        assert!(data.iter().any(|&c| c > 60_000));
        write_imm(&p, &data, H, W, sparse, 0.25).unwrap();

        // The file size proves which payload was written.
        let want_len = if sparse {
            3 * 1024 + 6 * (3 * PX - zeros)
        } else {
            3 * (1024 + 2 * PX)
        };
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), want_len);
        // The first header at the offsets of the reference struct.
        let i32_at = |o: usize| i32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        assert_eq!(i32_at(4), if sparse { 6 } else { 0 });
        assert_eq!((i32_at(108), i32_at(112), i32_at(116)), (17, 23, 2));
        let nnz0 = data[..PX].iter().filter(|&&c| c != 0).count();
        let dlen0 = u32::from_le_bytes(bytes[152..156].try_into().unwrap());
        assert_eq!(dlen0 as usize, if sparse { nnz0 } else { PX });
        let second = 1024 + if sparse { 6 * nnz0 } else { 2 * PX };
        let el1 = f64::from_le_bytes(bytes[second + 128..second + 136].try_into().unwrap());
        assert_eq!(el1, 0.25);

        assert!(is_imm(&p));
        let f = ImmFile::open(&p).unwrap();
        assert_eq!((f.frames, f.height, f.width), (3, 17, 23));
        assert_eq!(f.elapsed(), &[0.0, 0.25, 0.5]);
        assert_eq!(u16s(f.read_frames(0, 3).unwrap()), data);
        // Middle ranges.
        assert_eq!(u16s(f.read_frames(1, 1).unwrap()), &data[PX..2 * PX]);
        assert_eq!(u16s(f.read_frames(1, 2).unwrap()), &data[PX..]);
        assert_eq!(u16s(f.read_frames(2, 1).unwrap()), &data[2 * PX..]);
        assert!(u16s(f.read_frames(3, 0).unwrap()).is_empty());
    }

    #[test]
    fn dense_round_trip() {
        round_trip(false);
    }

    #[test]
    fn sparse_round_trip() {
        round_trip(true);
    }

    #[test]
    fn reads_a_hand_built_mixed_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("mixed.imm");
        let dense: Vec<u16> = (0..6).map(|v| v * 1000 + 1).collect();
        let mut bytes = hand_dense(2, 3, &dense, 1.5);
        bytes.extend(hand_sparse(2, 3, &[(5, 65_535), (0, 7), (2, 300)], 2.5));
        bytes.extend(hand_sparse(2, 3, &[], 3.5));
        std::fs::write(&p, &bytes).unwrap();
        assert!(is_imm(&p));
        let f = ImmFile::open(&p).unwrap();
        assert_eq!((f.frames, f.height, f.width), (3, 2, 3));
        assert_eq!(f.elapsed(), &[1.5, 2.5, 3.5]);
        let got = u16s(f.read_frames(0, 3).unwrap());
        assert_eq!(
            got,
            [1, 1001, 2001, 3001, 4001, 5001, 7, 0, 300, 0, 0, 65_535, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn truncated_files_name_frame_and_byte() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("cut.imm");
        let data = counts(3 * PX, 11);
        write_imm(&p, &data, H, W, false, 0.1).unwrap();
        let full = std::fs::read(&p).unwrap();
        let frame = 1024 + 2 * PX;
        // Payload of the last frame cut by 10 bytes.
        std::fs::write(&p, &full[..full.len() - 10]).unwrap();
        let e = ImmFile::open(&p).unwrap_err();
        let want = format!(
            "{}: frame 2 at byte {}: header says 391 values (782 bytes) but 772 bytes remain",
            p.display(),
            2 * frame
        );
        assert_eq!(e, want);
        // A header cut short after the last whole frame.
        std::fs::write(&p, &full[..frame + 100]).unwrap();
        let e = ImmFile::open(&p).unwrap_err();
        assert_eq!(
            e,
            format!(
                "{}: frame 1 at byte {frame}: header cut short, 100 of 1024 bytes present",
                p.display()
            )
        );
        // Sparse payload cut.
        let s = t.path().join("cut_sparse.imm");
        std::fs::write(&s, &hand_sparse(2, 3, &[(1, 4), (2, 5)], 0.0)[..1024 + 11]).unwrap();
        let e = ImmFile::open(&s).unwrap_err();
        assert_eq!(
            e,
            format!(
                "{}: frame 0 at byte 0: header says 2 sparse events (12 bytes) but 11 bytes remain",
                s.display()
            )
        );
    }

    #[test]
    fn zero_frames_and_missing_files_are_rejected() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("empty.imm");
        std::fs::write(&p, b"").unwrap();
        let e = ImmFile::open(&p).unwrap_err();
        assert_eq!(e, format!("{}: no frames: the file is empty", p.display()));
        assert!(!is_imm(&p));
        let m = t.path().join("missing.imm");
        let e = ImmFile::open(&m).unwrap_err();
        assert!(
            e.starts_with(&format!("{}: cannot open:", m.display())),
            "{e}"
        );
        assert!(!is_imm(&m));
        let e = write_imm(&p, &[], H, W, false, 1.0).unwrap_err();
        assert!(e.starts_with(&format!("{}: cannot write 17x23 frames:", p.display())));
        assert!(e.contains("0 values"), "{e}");
        let e = write_imm(&p, &[1; PX + 1], H, W, true, 1.0).unwrap_err();
        assert!(e.contains("392 values are not a whole"), "{e}");
    }

    #[test]
    fn shape_changing_between_frames_is_rejected() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("shape.imm");
        let mut bytes = hand_dense(2, 3, &[1; 6], 0.0);
        bytes.extend(hand_sparse(2, 4, &[(0, 1)], 0.1));
        std::fs::write(&p, &bytes).unwrap();
        let e = ImmFile::open(&p).unwrap_err();
        assert_eq!(
            e,
            format!(
                "{}: frame 1 at byte 1036: frame is 2x4 (rows x cols, 8 pixels) but frame 0 is 2x3 (6 pixels)",
                p.display()
            )
        );
        // Non-positive shapes.
        std::fs::write(&p, hand_sparse(0, 3, &[], 0.0)).unwrap();
        let e = ImmFile::open(&p).unwrap_err();
        assert!(
            e.ends_with("frame 0 at byte 0: rows 0 and cols 3 must both be positive"),
            "{e}"
        );
        assert!(!is_imm(&p));
    }

    #[test]
    fn dense_dlen_must_match_the_frame() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("dlen.imm");
        let mut bytes = hand_dense(2, 3, &[1; 6], 0.0);
        bytes.extend(hand_dense(2, 3, &[1; 5], 0.1));
        std::fs::write(&p, &bytes).unwrap();
        let e = ImmFile::open(&p).unwrap_err();
        assert_eq!(
            e,
            format!(
                "{}: frame 1 at byte 1036: dense frame (compression 0) has dlen 5, expected rows*cols = 2*3 = 6",
                p.display()
            )
        );
    }

    #[test]
    fn sparse_index_outside_the_frame_is_rejected() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("index.imm");
        let mut bytes = hand_sparse(2, 3, &[(5, 1)], 0.0);
        bytes.extend(hand_sparse(2, 3, &[(0, 1), (6, 2)], 0.1));
        bytes.extend(hand_sparse(2, 3, &[(-1, 3)], 0.2));
        std::fs::write(&p, &bytes).unwrap();
        let f = ImmFile::open(&p).unwrap();
        assert_eq!(u16s(f.read_frames(0, 1).unwrap()), [0, 0, 0, 0, 0, 1]);
        let e = f.read_frames(0, 2).err().unwrap();
        // Frame 1 starts at 1024 + 6; its second index at 1030 + 1024 + 4.
        assert_eq!(
            e,
            format!(
                "{}: frame 1 at byte 1030: sparse event 1 (byte 2058) has pixel index 6, outside 0..6 (rows*cols = 2*3)",
                p.display()
            )
        );
        let e = f.read_frames(2, 1).err().unwrap();
        assert!(
            e.starts_with(&format!("{}: frame 2 at byte 2066:", p.display())),
            "{e}"
        );
        assert!(e.contains("pixel index -1, outside 0..6"), "{e}");
    }

    #[test]
    fn requests_past_the_end_are_rejected() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("end.imm");
        write_imm(&p, &counts(3 * PX, 5), H, W, true, 0.1).unwrap();
        let f = ImmFile::open(&p).unwrap();
        let e = f.read_frames(2, 2).err().unwrap();
        assert_eq!(
            e,
            format!("{}: frames 2..4 requested, the file has 3", p.display())
        );
        let e = f.read_frames(usize::MAX, 2).err().unwrap();
        assert!(e.ends_with("requested, the file has 3"), "{e}");
        assert!(f.read_frames(4, 0).is_err());
    }

    #[test]
    fn hdf5_and_garbage_are_not_imm() {
        let t = tempfile::tempdir().unwrap();
        let h5 = t.path().join("raw.imm");
        super::super::io::write_raw(&h5, &counts(2 * PX, 9), 2, H, W).unwrap();
        assert!(!is_imm(&h5));
        assert!(ImmFile::open(&h5).is_err());
        // Pseudo-random bytes: rejected with an error, never a panic.
        let g = t.path().join("garbage.imm");
        let mut s = 0x1234_5678_9abc_def1u64;
        let junk: Vec<u8> = (0..5000)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect();
        std::fs::write(&g, &junk).unwrap();
        assert!(!is_imm(&g));
        let e = ImmFile::open(&g).unwrap_err();
        assert!(
            e.starts_with(&format!("{}: frame 0 at byte 0:", g.display())),
            "{e}"
        );
        std::fs::write(&g, b"hello").unwrap();
        assert!(!is_imm(&g));
        let e = ImmFile::open(&g).unwrap_err();
        assert!(
            e.ends_with("header cut short, 5 of 1024 bytes present"),
            "{e}"
        );
    }
}
