#!/usr/bin/env python3
"""Tiny synthetic XPCS input that boost_corr 0.1.7 accepts (smoke tests, not accuracy).

Writes into OUTDIR (layouts: shared/reference/xpcs.md §4/§5):
  NAME.h5                raw stack, uint16 (N, H, W) at /entry/data/data
  NAME_metadata.hdf      minimal metadata boost needs (/entry/schema_version) plus
                         the /entry fields pyXPCSViewer reads (frame_time, energy, ...)
  NAME_qmap.hdf          /qmap: dynamic/static roi maps (static ring bins nested in
                         dynamic bins, 0 outside the mask), mask, blemish, viewer fields

Speckle: per pixel, an AR(1) complex-Gaussian field with g1 = exp(-gamma(r) t),
counts ~ Poisson(mean_count * |E|^2). Deterministic for a given --seed.
NAME must end in a digit (boost strips trailing "_metadata" characters, §5).

  .cache/venv/bin/python benches/boost/make_tiny.py OUTDIR [--size 64] [--frames 200]
"""
import argparse
import json
import os

import h5py
import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--n-dq", type=int, default=4)
    ap.add_argument("--sq-per-dq", type=int, default=3)
    ap.add_argument("--mean-count", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--name", default=None)
    a = ap.parse_args()

    H = W = a.size
    N = a.frames
    name = a.name or f"B001_tiny{a.size}_f{N:05d}_r00001"
    if not name[-1].isdigit():
        ap.error("--name must end in a digit (boost's rstrip('_metadata') pitfall)")
    os.makedirs(a.outdir, exist_ok=True)
    rng = np.random.default_rng(a.seed)

    # geometry: beam at the centre, annular mask
    cy, cx = (H - 1) / 2.0, (W - 1) / 2.0
    yy, xx = np.mgrid[0:H, 0:W]
    r = np.hypot(yy - cy, xx - cx)
    r_min, r_max = a.size / 16.0, 0.49 * a.size
    mask = ((r >= r_min) & (r < r_max)).astype(np.int32)
    n_sq = a.n_dq * a.sq_per_dq
    edges = np.linspace(r_min, r_max, n_sq + 1)
    sq = np.digitize(r, edges)  # 1..n_sq inside the annulus
    sq = np.where(mask == 1, np.clip(sq, 1, n_sq), 0).astype(np.uint16)
    dq = np.where(sq > 0, (sq.astype(np.int64) - 1) // a.sq_per_dq + 1, 0).astype(np.uint16)

    # dynamics: decay rate per frame from 0.01 (inner) to 0.3 (outer), ~ r^2
    rn = np.clip((r - r_min) / (r_max - r_min), 0, 1)
    gamma = 0.01 + 0.29 * rn**2
    rho = np.exp(-gamma).astype(np.float32)
    sig = np.sqrt(1 - rho**2).astype(np.float32)
    I0 = (a.mean_count * 2.0 / (1.0 + (r / r_max * 2) ** 2)).astype(np.float32)

    def cgauss():
        return ((rng.standard_normal((H, W)) + 1j * rng.standard_normal((H, W))) / np.sqrt(2)).astype(np.complex64)

    E = cgauss()
    raw = np.empty((N, H, W), dtype=np.uint16)
    for t in range(N):
        if t:
            E = rho * E + sig * cgauss()
        raw[t] = rng.poisson(I0 * (E.real**2 + E.imag**2)).astype(np.uint16)

    raw_path = os.path.join(a.outdir, name + ".h5")
    with h5py.File(raw_path, "w") as f:
        f.create_dataset("/entry/data/data", data=raw, chunks=(1, H, W))

    frame_time = 1e-3
    meta_path = os.path.join(a.outdir, name + "_metadata.hdf")
    with h5py.File(meta_path, "w") as f:
        f["/entry/schema_version"] = "1.0"
        f["/entry/start_time"] = "2026-01-01T00:00:00"
        f.create_group("/entry/instrument/bluesky/metadata")
        d = f.create_group("/entry/instrument/detector_1")
        d["frame_time"] = frame_time
        d["count_time"] = frame_time
        d["x_pixel_size"] = 75e-6
        d["y_pixel_size"] = 75e-6
        d["distance"] = 5.0
        d["beam_center_x"] = cx
        d["beam_center_y"] = cy
        f["/entry/instrument/incident_beam/incident_energy"] = 10.0

    # q of each ring centre (small-angle): q = 4 pi / lambda * sin(theta/2)
    energy, pix, dist = 10.0, 75e-6, 5.0
    wavelength = 12.398 / energy  # Angstrom
    def q_of(rpx):
        return 4 * np.pi / wavelength * np.sin(0.5 * np.arctan(rpx * pix / dist))
    sq_centres = q_of(0.5 * (edges[:-1] + edges[1:]))
    dq_edges = edges[:: a.sq_per_dq]
    dq_centres = q_of(0.5 * (dq_edges[:-1] + dq_edges[1:]))

    qmap_path = os.path.join(a.outdir, name + "_qmap.hdf")
    with h5py.File(qmap_path, "w") as f:
        g = f.create_group("qmap")
        g["dynamic_roi_map"] = dq
        g["static_roi_map"] = sq
        g["mask"] = mask
        g["blemish"] = mask
        g["dynamic_num_pts"] = np.array([a.n_dq, 1], dtype=np.int64)
        g["static_num_pts"] = np.array([n_sq, 1], dtype=np.int64)
        for kind, centres in (("dynamic", dq_centres), ("static", sq_centres)):
            v0 = g.create_dataset(f"{kind}_v_list_dim0", data=centres.astype(np.float64))
            v0.attrs.update(unit="Å⁻¹", name="q", size=len(centres))
            v1 = g.create_dataset(f"{kind}_v_list_dim1", data=np.zeros(1))
            v1.attrs.update(unit="deg", name="phi", size=1)
            g[f"{kind}_index_mapping"] = np.arange(len(centres), dtype=np.int64)
        g["beam_center_x"] = cx
        g["beam_center_y"] = cy
        g["pixel_size"] = pix
        g["detector_distance"] = dist
        g["energy"] = energy
        g["map_names"] = np.array([b"q", b"phi"])
        g["map_units"] = np.array([b"1/A", b"deg"])
        g["source_file"] = "benches/boost/make_tiny.py"

    print(json.dumps({"raw": os.path.abspath(raw_path), "qmap": os.path.abspath(qmap_path),
                      "metadata": os.path.abspath(meta_path), "shape": [N, H, W],
                      "valid_px": int(mask.sum()), "n_dq": a.n_dq, "n_sq": n_sq,
                      "mean_count": float(raw[:, mask == 1].mean())}))


if __name__ == "__main__":
    main()
