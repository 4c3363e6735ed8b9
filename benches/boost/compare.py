#!/usr/bin/env python3
"""Compare two XPCS results files (APS layout, shared/reference/xpcs.md §5).

  .cache/venv/bin/python benches/boost/compare.py RESULTS_A RESULTS_B [--rtol 1e-5] [--atol 1e-6]

Prints one JSON line: per dataset the shapes, max |a-b|, max relative difference
|a-b| / max(|a|,|b|) (0 where both are 0) and the number of elements failing
|a-b| <= atol + rtol*max(|a|,|b|) (numpy's isclose, made symmetric).
NaNs must sit at the same places in both files.

Datasets: /xpcs/multitau/{normalized_g2,delay_list}, /xpcs/temporal_mean/scattering_1d,
/xpcs/spatial_mean/intensity_vs_time, and /xpcs/twotime/normalized_g2; --dataset adds more.
A dataset absent from both files is skipped ("absent"); absent from one, or of another
shape, is a failure. At least one of the normalized_g2 datasets must be present.

Exit: 0 all within tolerance, 1 some dataset differs, 2 bad input (file unreadable, no g2).

The default tolerances suit a file against itself or a rerun of the same tool; boost's
bf16 buffers put it ~1e-3 from a float32/float64 implementation (xpcs.md §1.2, §8), so
compare beamflow against boost with e.g. --rtol 1e-3 --atol 1e-3.
"""
import argparse
import json
import math
import sys

import h5py
import numpy as np

DATASETS = [
    "/xpcs/multitau/normalized_g2",
    "/xpcs/multitau/delay_list",
    "/xpcs/temporal_mean/scattering_1d",
    "/xpcs/spatial_mean/intensity_vs_time",
    "/xpcs/twotime/normalized_g2",
]
G2 = ("/xpcs/multitau/normalized_g2", "/xpcs/twotime/normalized_g2")


def read(f, path):
    obj = f.get(path)
    if obj is None:
        return None
    if not isinstance(obj, h5py.Dataset):
        raise ValueError(f"{path} is not a dataset")
    return np.asarray(obj[()], dtype=np.float64)


def finite_or_none(x):
    return None if x is None or not math.isfinite(x) else float(x)


def compare(a, b, rtol, atol):
    if a.shape != b.shape:
        return {"shape_a": list(a.shape), "shape_b": list(b.shape), "ok": False,
                "error": "shape mismatch"}
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    nan_mismatch = int(np.count_nonzero(nan_a != nan_b))
    both = ~(nan_a | nan_b)
    a, b = a[both], b[both]
    diff = np.abs(a - b)
    scale = np.maximum(np.abs(a), np.abs(b))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(scale > 0, diff / np.where(scale > 0, scale, 1), 0.0)
    n_exceed = int(np.count_nonzero(diff > atol + rtol * scale)) + nan_mismatch
    out = {
        "shape": list(nan_a.shape),
        "max_abs_diff": finite_or_none(diff.max()) if diff.size else 0.0,
        "max_rel_diff": finite_or_none(rel.max()) if rel.size else 0.0,
        "n_exceed": n_exceed,
        "ok": n_exceed == 0,
    }
    if nan_mismatch:
        out["nan_mismatch"] = nan_mismatch
    if diff.size and not np.isfinite(diff).all():
        out["ok"] = False
        out["error"] = "inf differences"
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results_a")
    ap.add_argument("results_b")
    ap.add_argument("--rtol", type=float, default=1e-5)
    ap.add_argument("--atol", type=float, default=1e-6)
    ap.add_argument("--dataset", action="append", default=[], metavar="PATH",
                    help="compare this dataset too (repeatable)")
    args = ap.parse_args()

    report = {"a": args.results_a, "b": args.results_b, "rtol": args.rtol, "atol": args.atol,
              "ok": True, "datasets": {}}
    try:
        with h5py.File(args.results_a, "r") as fa, h5py.File(args.results_b, "r") as fb:
            for path in DATASETS + [p for p in args.dataset if p not in DATASETS]:
                try:
                    a, b = read(fa, path), read(fb, path)
                except (ValueError, TypeError) as e:
                    r = {"ok": False, "error": str(e)}
                else:
                    if a is None and b is None:
                        r = {"absent": True}
                        if path in args.dataset:
                            r.update(ok=False, error="absent from both files")
                    elif a is None or b is None:
                        r = {"ok": False, "error": "missing in " + ("A" if a is None else "B")}
                    else:
                        r = compare(a, b, args.rtol, args.atol)
                report["datasets"][path] = r
                if r.get("ok") is False:
                    report["ok"] = False
    except OSError as e:
        report.update(ok=False, error=f"cannot read: {e}")
        print(json.dumps(report))
        return 2

    if all(report["datasets"][p].get("absent") for p in G2):
        report.update(ok=False, error="neither file has a normalized_g2 dataset")
        print(json.dumps(report))
        return 2
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
