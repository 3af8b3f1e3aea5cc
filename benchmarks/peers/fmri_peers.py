"""nilearn's CanICA and DictLearning on a phantom cohort, and a NumPy implementation of FSL's
dual regression checked against medinfer's subject maps.

    fmri_peers.py canica  COHORT OUT --components N   # writes OUT/group_maps.nii.gz, prints JSON
    fmri_peers.py dictlearning COHORT OUT --components N
    fmri_peers.py dualreg COHORT MEDINFER_OUT [--subjects K]   # max |t_numpy - t_medinfer|
        (z maps when medinfer ran with --stat z: SciPy's t -> z of the NumPy t maps)
    fmri_peers.py ttoz      # SciPy's t -> z reference table for medinfer's unit test

The peers get the same preprocessing medinfer runs by default: 6 mm smoothing, linear
detrend, 0.01-0.1 Hz band-pass, standardisation, an EPI mask, TR 2 s. Wall time and peak RSS
(this process alone: ru_maxrss) are printed with the maps' file.
"""
import argparse, glob, json, os, resource, sys, time

import numpy as np
import nibabel as nib


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def decompose(kind, cohort, out, n):
    from nilearn.decomposition import CanICA, DictLearning
    subjects = sorted(glob.glob(os.path.join(cohort, "sub-*.nii.gz")))
    common = dict(n_components=n, smoothing_fwhm=6.0, standardize=True, detrend=True,
                  low_pass=0.1, high_pass=0.01, t_r=2.0, mask_strategy="epi",
                  random_state=0, n_jobs=1, verbose=0)
    model = CanICA(**common) if kind == "canica" else DictLearning(**common)
    t0 = time.perf_counter()
    model.fit(subjects)
    wall = time.perf_counter() - t0
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "group_maps.nii.gz")
    model.components_img_.to_filename(path)
    print(json.dumps({"tool": kind, "subjects": len(subjects), "components": n,
                      "wall_s": round(wall, 2), "peak_rss_mb": round(peak_rss_mb(), 1),
                      "maps": path}))


def smooth_in_mask(frame, mask, sigma_vox):
    """medinfer's normalised convolution: Gaussian (radius ceil(3 sigma)), zero padding."""
    from scipy.ndimage import convolve1d
    def conv(a):
        for ax, s in enumerate(sigma_vox):
            r = int(np.ceil(3 * s))
            k = np.exp(-0.5 * (np.arange(-r, r + 1) / s) ** 2)
            a = convolve1d(a, k, axis=ax, mode="constant", cval=0.0)
        return a
    num = conv(frame * mask)
    den = conv(mask.astype(np.float64))
    return np.where(mask & (den > 1e-12), num / np.where(den > 1e-12, den, 1), 0.0)


def preprocess(img, mask, fwhm, band, k):
    """medinfer's preprocessing, written from its documentation: smoothing in the mask,
    linear detrend, ideal band-pass (FFT), variance normalisation by the residual after the
    subject's k leading principal components."""
    data = np.asarray(img.dataobj, dtype=np.float64)
    zooms = img.header.get_zooms()[:3]
    tr = 2.0
    t = data.shape[3]
    if fwhm > 0:
        sig = [fwhm / (2 * np.sqrt(2 * np.log(2))) / z for z in zooms]
        data = np.stack([smooth_in_mask(data[..., n], mask, sig) for n in range(t)], axis=3)
    x = data.reshape(-1, t, order="F")[mask.reshape(-1, order="F")].T
    tc = np.arange(t) - (t - 1) / 2
    x = x - x.mean(0) - np.outer(tc, (tc @ x) / (tc @ tc))
    f = np.fft.rfftfreq(t, d=tr)
    keep = (f >= band[0]) & (f <= band[1]) & (f > 0)
    X = np.fft.rfft(x, axis=0)
    X[~keep] = 0
    x = np.fft.irfft(X, n=t, axis=0)
    w, u = np.linalg.eigh(x @ x.T)
    uk = u[:, ::-1][:, :k]
    resid = x - uk @ (uk.T @ x)
    sd = np.sqrt((resid ** 2).sum(0) / (t - k))
    return x / np.where(sd > 1e-12, sd, np.inf)


def dual_regression(x, maps):
    """FSL dual_regression: stage 1 fsl_glm --demean on the maps, stage 2 fsl_glm --demean
    --des_norm --out_t (dof T - n)."""
    g = maps - maps.mean(1, keepdims=True)
    xs = x - x.mean(1, keepdims=True)
    tc = xs @ g.T @ np.linalg.inv(g @ g.T)
    t, n = tc.shape
    d = (tc - tc.mean(0)) / tc.std(0, ddof=1)
    xt = x - x.mean(0)
    inv = np.linalg.inv(d.T @ d)
    beta = inv @ d.T @ xt
    resid = xt - d @ beta
    s2 = (resid ** 2).sum(0) / (t - n)
    return tc, beta / np.sqrt(np.outer(np.diag(inv), s2))


def t_to_z(t, dof):
    """FSL's ttoz with SciPy, in log space: the normal quantile of t's one-sided tail."""
    from scipy import special, stats
    return np.sign(t) * -special.ndtri_exp(stats.t.logsf(np.abs(t), dof))


def ttoz_table():
    import scipy
    from scipy import special, stats
    print(f"// SciPy {scipy.__version__}: (t, dof, stats.t.logsf(t, dof), -special.ndtri_exp(logsf))")
    for dof in (3.0, 10.0, 137.0, 290.0):
        for t in (0.01, 0.5, 1.0, 1.96, 3.0, 7.5, 20.0, 107.0, 3000.0):
            lsf = stats.t.logsf(t, dof)
            if not np.isfinite(lsf):
                continue  # SciPy's logsf underflows past ln(f64 min) (~ -745); medinfer's does not
            print(f"    ({t!r}, {dof!r}, {float(lsf)!r}, {float(-special.ndtri_exp(lsf))!r}),")


def check_dualreg(cohort, mout, nsub):
    rep = json.load(open(os.path.join(mout, "report.json")))
    mask_img = nib.load(os.path.join(mout, "mask.nii.gz"))
    mask = np.asarray(mask_img.dataobj) > 0
    flat = mask.reshape(-1, order="F")
    g = np.asarray(nib.load(os.path.join(mout, "group_maps.nii.gz")).dataobj, dtype=np.float64)
    maps = g.reshape(-1, g.shape[3], order="F")[flat].T
    prep = rep["preprocessing"]
    band = prep["band_hz"]
    worst = 0.0
    rows = []
    for s in rep["subjects"][:nsub]:
        img = nib.load(s["input"])
        x = preprocess(img, mask, prep["fwhm_mm"], band, s["dimension"])
        _, tmap = dual_regression(x, maps)
        if rep.get("map_statistic", "t") == "z":
            tmap = t_to_z(tmap, x.shape[0] - maps.shape[0])
        mine = np.asarray(nib.load(os.path.join(mout, s["id"], "maps.nii.gz")).dataobj, dtype=np.float64)
        mine = mine.reshape(-1, mine.shape[3], order="F")[flat].T
        d = np.abs(tmap - mine).max()
        rel = d / np.abs(tmap).max()
        rows.append({"subject": s["id"], "max_abs_diff_t": float(d), "max_abs_t": float(np.abs(tmap).max()), "rel": float(rel)})
        worst = max(worst, d)
    print(json.dumps({"check": "dual regression vs NumPy", "subjects": rows, "max_abs_diff": worst}))
    return worst


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["canica", "dictlearning", "dualreg", "ttoz"])
    ap.add_argument("cohort", nargs="?")
    ap.add_argument("out", nargs="?")
    ap.add_argument("--components", type=int, default=13)
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    if a.what == "ttoz":
        sys.exit(ttoz_table())
    if a.what == "dualreg":
        sys.exit(0 if check_dualreg(a.cohort, a.out, a.subjects) <= a.tol else 1)
    decompose(a.what, a.cohort, a.out, a.components)
