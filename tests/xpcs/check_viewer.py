#!/usr/bin/env python3
"""Check that an XPCS results file opens in pyXPCSViewer's headless data model
(PyPI xpcs-viewer, pinned in scripts/setup.sh) and holds the expected values.

usage: check_viewer.py RESULTS.hdf EXPECTED.json

EXPECTED.json keys (all optional except "atype"):
  atype          "Multitau" | "Twotime" | "Both"; XpcsFile.atype must hold
                 exactly these analysis types ("Both" = Multitau and Twotime)
  tau_s          [T] delays in seconds; compared with XpcsFile.t_el
                 (= delay_list * frame_time * stride_frame * avg_frame)
  g2, g2_err     [T][n_dq]; g2_err is compared after the viewer's own
                 correction (XpcsFile.correct_g2_err: entries <= 1e-6 are
                 replaced by the mean of the column's larger entries), applied
                 to the expected values too
  saxs_1d        [n_sq_nonempty]; compared with the raw scattering_1d the viewer
                 read, and the viewer's q-phi reconstruction (saxs_1d["Iq"]) is
                 compared with the same reconstruction done here from the file's
                 static_index_mapping / static_num_pts
  saxs_2d_shape  [H, W];  saxs_2d_sum  float (float64 sum of XpcsFile.saxs_2d)
  int_t          [N] per-frame mean intensity (row 1 of Int_t, which must be (2, N))
  c2_g2          [N][n_dq] two-time g2, lag 0..N-1
  c2_first       {"index": k, "values_row0": [N], "correct_diag": false}:
                 row 0 of the full symmetric map c2_<k:05d> as rebuilt by
                 XpcsFile.get_twotime_c2 -> twotime_utils.get_single_c2_from_hdf
                 (no down-sampling; correct_diag optional, default false = the
                 GUI's default)
  rtol, atol     numpy.allclose tolerances (defaults 1e-5, 1e-6)

Always checked too: the file loads the way the GUI loads it (XpcsFile with a
QMapManager, which needs the /xpcs/qmap attribute "hash"), and the XpcsFile
methods the GUI panels call first run without raising ("viewer_methods").
Prints one line per check, then "N passed, M failed".
Exit status: 0 all passed, 1 a check failed, 2 usage, import or load error.
"""

import json
import os
import sys
import traceback

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

KNOWN_KEYS = {
    "atype", "tau_s", "g2", "g2_err", "saxs_1d", "saxs_2d_shape", "saxs_2d_sum",
    "int_t", "c2_g2", "c2_first", "rtol", "atol",
}
ATYPES = {"Multitau": {"Multitau"}, "Twotime": {"Twotime"}, "Both": {"Multitau", "Twotime"}}


def usage_error(msg):
    print(f"check_viewer: error: {msg}", file=sys.stderr)
    print("usage: check_viewer.py RESULTS.hdf EXPECTED.json", file=sys.stderr)
    sys.exit(2)


class Checker:
    def __init__(self, np, rtol, atol):
        self.np = np
        self.rtol = rtol
        self.atol = atol
        self.passed = 0
        self.failed = 0

    def ok(self, name, detail):
        self.passed += 1
        print(f"ok {name} ({detail})")

    def fail(self, name, detail):
        self.failed += 1
        print(f"FAIL {name}: {detail}")

    def close(self, name, got, want):
        """numpy.allclose(got, want) with a shape check and a located diff."""
        np = self.np
        if got is None:
            return self.fail(name, "not loaded by the viewer (None)")
        got = np.asarray(got, dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        if got.shape != want.shape:
            return self.fail(name, f"shape {got.shape} != expected {want.shape}")
        if np.allclose(got, want, rtol=self.rtol, atol=self.atol, equal_nan=True):
            if want.ndim == 0:
                return self.ok(name, f"{float(got):.9g}")
            return self.ok(name, f"{want.size} values" if want.ndim == 1
                           else f"{want.size} values, shape {want.shape}")
        bad = ~np.isclose(got, want, rtol=self.rtol, atol=self.atol, equal_nan=True)
        diff = np.where(bad, np.abs(got - want), -np.inf)
        diff = np.where(np.isnan(diff), np.inf, diff)  # NaN on one side only
        idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
        where = idx[0] if len(idx) == 1 else tuple(int(i) for i in idx)
        self.fail(name, f"max abs diff {diff[idx]:.6g} at index {where} "
                        f"(got {got[idx]:.9g}, want {want[idx]:.9g}; "
                        f"{int(bad.sum())} of {want.size} values outside "
                        f"rtol={self.rtol:g} atol={self.atol:g})")


def reconstruct_saxs_1d(np, raw, static_index_mapping, n_q, n_phi):
    """What the viewer's QMap.reshape_phi_analysis should make of `raw`:
    row 0 = mean over phi of the non-empty bins; with n_phi > 1, rows 1..n_phi
    are the per-phi curves (NaN in empty bins)."""
    full = np.full(n_q * n_phi, np.nan)
    full[np.asarray(static_index_mapping, dtype=np.int64)] = raw
    full = full.reshape(n_q, n_phi)
    with np.errstate(invalid="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN q rows
            avg = np.nanmean(full, axis=1)
    if n_phi > 1:
        return np.concatenate([avg[None, :], full.T], axis=0)
    return avg[None, :]


def main(argv):
    if len(argv) != 3 or argv[1] in ("-h", "--help"):
        if len(argv) == 2 and argv[1] in ("-h", "--help"):
            print(__doc__)
            return 0
        usage_error("expected exactly two arguments")
    results, expected_path = argv[1], argv[2]
    if not os.path.isfile(results):
        usage_error(f"results file not found: {results}")
    try:
        with open(expected_path) as fh:
            exp = json.load(fh)
    except (OSError, ValueError) as e:
        usage_error(f"cannot read {expected_path}: {e}")
    if not isinstance(exp, dict):
        usage_error(f"{expected_path}: top level must be a JSON object")
    unknown = sorted(set(exp) - KNOWN_KEYS)
    if unknown:
        usage_error(f"{expected_path}: unknown key(s) {unknown}")
    if exp.get("atype") not in ATYPES:
        usage_error(f"{expected_path}: \"atype\" must be one of {sorted(ATYPES)}, "
                    f"got {exp.get('atype')!r}")

    try:
        import numpy as np
        from pyxpcsviewer.core.file_io.qmap_utils import QMapManager
        from pyxpcsviewer.core.xpcs_file import XpcsFile
    except Exception as e:  # noqa: BLE001
        print(f"check_viewer: error: cannot import numpy/pyxpcsviewer ({e}); "
              "run scripts/setup.sh and use .cache/venv/bin/python", file=sys.stderr)
        return 2

    results = os.path.abspath(results)
    try:
        xf = XpcsFile(results)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        print(f"check_viewer: error: XpcsFile could not load {results}: "
              f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2

    c = Checker(np, float(exp.get("rtol", 1e-5)), float(exp.get("atol", 1e-6)))

    # the GUI's loader path: QMapManager keys its cache on /xpcs/qmap attrs["hash"]
    try:
        XpcsFile(results, qmap_manager=QMapManager())
        c.ok("gui_loader", "XpcsFile with QMapManager, /xpcs/qmap hash attribute")
    except Exception as e:  # noqa: BLE001
        c.fail("gui_loader", f"XpcsFile(..., qmap_manager=QMapManager()) raised "
                             f"{type(e).__name__}: {e}")

    # what the GUI panels call right after loading; catches layout problems
    # (index mappings, num_pts, processed_bins, scalar shapes) that load fine
    calls = [("get_saxs1d_data", lambda: xf.get_saxs1d_data()),
             ("saxs_2d_log", lambda: xf.saxs_2d_log),
             ("Int_t_fft", lambda: xf.Int_t_fft),
             ("get_qbin_label", lambda: xf.get_qbin_label(1)),
             ("get_detector_extent", lambda: xf.get_detector_extent())]
    if "Multitau" in xf.atype:
        calls.append(("get_g2_data", lambda: xf.get_g2_data()))
    if "Twotime" in xf.atype:
        calls += [("get_twotime_qbin_labels", lambda: xf.get_twotime_qbin_labels()),
                  ("get_twotime_maps", lambda: xf.get_twotime_maps(selection=0)),
                  ("get_twotime_c2", lambda: xf.get_twotime_c2(selection=0))]
    errors = []
    for name, fn in calls:
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            errors.append(f"{name}: {type(e).__name__}: {e}")
    if errors:
        c.fail("viewer_methods", "; ".join(errors))
    else:
        c.ok("viewer_methods", ", ".join(name for name, _ in calls))

    want_atype = ATYPES[exp["atype"]]
    got_atype = set(xf.atype)
    if got_atype == want_atype:
        c.ok("atype", f"{'+'.join(sorted(got_atype))}")
    else:
        c.fail("atype", f"viewer reports {sorted(got_atype)}, expected {sorted(want_atype)}")

    if "tau_s" in exp:
        c.close("tau_s", xf.t_el, exp["tau_s"])
    if "g2" in exp:
        c.close("g2", xf.g2, exp["g2"])
    if "g2_err" in exp:
        want = np.asarray(exp["g2_err"], dtype=np.float64)
        if want.ndim == 2:
            want = XpcsFile.correct_g2_err(want)
        c.close("g2_err", xf.g2_err, want)

    if "saxs_1d" in exp:
        raw = np.asarray(xf.saxs_1d["data_raw"], dtype=np.float64)
        if raw.ndim == 2 and raw.shape[0] == 1:
            raw = raw[0]
        c.close("saxs_1d", raw, exp["saxs_1d"])
        q = xf.qmap
        try:
            want_iq = reconstruct_saxs_1d(np, np.asarray(exp["saxs_1d"], dtype=np.float64),
                                          q.static_index_mapping, len(q.sqlist), len(q.splist))
        except (IndexError, ValueError) as e:
            c.fail("saxs_1d_iq", f"expected saxs_1d does not fit static_index_mapping "
                                 f"{np.shape(q.static_index_mapping)} / "
                                 f"num q {len(q.sqlist)} x phi {len(q.splist)}: {e}")
        else:
            c.close("saxs_1d_iq", xf.saxs_1d["Iq"], want_iq)

    if "saxs_2d_shape" in exp:
        got = list(np.shape(xf.saxs_2d))
        if got == list(exp["saxs_2d_shape"]):
            c.ok("saxs_2d_shape", f"{got}")
        else:
            c.fail("saxs_2d_shape", f"{got} != expected {exp['saxs_2d_shape']}")
    if "saxs_2d_sum" in exp:
        got = float(np.sum(np.asarray(xf.saxs_2d, dtype=np.float64)))
        c.close("saxs_2d_sum", got, float(exp["saxs_2d_sum"]))

    if "int_t" in exp:
        it = np.asarray(xf.Int_t)
        n = len(exp["int_t"])
        if it.shape != (2, n):
            c.fail("int_t", f"Int_t shape {it.shape} != expected (2, {n})")
        else:
            c.close("int_t", it[1], exp["int_t"])

    if "c2_g2" in exp:
        c.close("c2_g2", xf.c2_g2, exp["c2_g2"])

    if "c2_first" in exp:
        spec = exp["c2_first"]
        name = f"c2_{int(spec.get('index', 1)):05d}"
        label = f"c2_first[{name}]"
        try:
            import h5py
            with h5py.File(results, "r") as f:
                names = list(f["/xpcs/twotime/correlation_map"])
            sel = names.index(name)
        except Exception as e:  # noqa: BLE001
            c.fail(label, f"map not found in /xpcs/twotime/correlation_map: {type(e).__name__}: {e}")
        else:
            try:
                # the viewer's own path: XpcsFile.get_twotime_c2 ->
                # twotime_utils.get_single_c2_from_hdf (lru_cache'd, so t0 must be
                # hashable, i.e. frame_time/stride/avg scalars); no down-sampling
                r = xf.get_twotime_c2(selection=sel, max_size=-1,
                                      correct_diag=bool(spec.get("correct_diag", False)))
                mat = np.asarray(r["c2_mat"])
            except Exception as e:  # noqa: BLE001
                c.fail(label, f"get_twotime_c2/get_single_c2_from_hdf(selection={sel}) raised "
                              f"{type(e).__name__}: {e}")
            else:
                want = spec.get("values_row0", [])
                if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
                    c.fail(label, f"C2 map shape {mat.shape} is not square")
                elif mat.shape[0] != len(want):
                    c.fail(label, f"C2 map is {mat.shape}, expected {len(want)} x {len(want)}")
                else:
                    c.close(label, mat[0], want)

    print(f"check_viewer: {c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
