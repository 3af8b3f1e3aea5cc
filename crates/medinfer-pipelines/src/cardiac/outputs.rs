//! What an exam writes: masks in the input geometry, the ED / ES overlay and the volume curves.

use super::{CardiacResult, Curves};
use crate::PipelineError;
use medinfer_core::Volume;

/// Writes the masks, the ED / ES overlay and the volume curves into `dir`.
pub fn write_outputs(
    dir: &std::path::Path,
    vol: &Volume,
    res: &CardiacResult,
) -> Result<(), PipelineError> {
    let os = |p: &std::path::Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| medinfer_io::IoError::Os { path: p, source: e }
    };
    std::fs::create_dir_all(dir).map_err(os(dir))?;
    let r = &res.report;
    // The masks (deflating 4D labels, the larger part) and the overlay side by side.
    let (masks, overlay) = std::thread::scope(|scope| {
        let masks = scope.spawn(|| {
            medinfer_io::nifti::write_labels_4d(
                dir.join("masks.nii.gz"),
                vol.dims,
                &vol.affine,
                vol.spacing[3],
                &res.labels,
            )
        });
        let z = mid_ventricular_slice(&res.labels, vol.dims, [r.ed_phase, r.es_phase]);
        let overlay = write_overlay_pair(
            &dir.join("ed_es.png"),
            vol,
            &res.labels,
            z,
            [r.ed_phase, r.es_phase],
        );
        (masks.join(), overlay)
    });
    masks.unwrap_or_else(|p| std::panic::resume_unwind(p))?;
    overlay?;
    let svg = volume_curves_svg(&r.curves, vol.spacing[3], r.ed_phase, r.es_phase);
    let p = dir.join("volumes.svg");
    std::fs::write(&p, svg).map_err(os(&p))?;
    Ok(())
}

/// The mid-ventricular slice shown in overlays: the one whose smaller LV cavity area over the
/// two `phases` (ED, ES) is largest, so the ventricle is in the slice at both.
pub fn mid_ventricular_slice(labels: &[u8], dims: [usize; 4], phases: [usize; 2]) -> usize {
    let [nx, ny, nz, _] = dims;
    let plane = nx * ny;
    let area = |t: usize, z: usize| {
        let s = (t * nz + z) * plane;
        labels[s..s + plane].iter().filter(|&&v| v == 1).count()
    };
    (0..nz)
        .max_by_key(|&z| area(phases[0], z).min(area(phases[1], z)))
        .unwrap_or(nz / 2)
}

/// Slice `z` at two phases side by side, each as image | image with the label overlay.
pub fn write_overlay_pair(
    path: &std::path::Path,
    vol: &Volume,
    labels: &[u8],
    z: usize,
    phases: [usize; 2],
) -> Result<(), PipelineError> {
    let [nx, ny, nz, _] = vol.dims;
    let w = nx * 4;
    let mut rgb = vec![0u8; w * ny * 3];
    // One window for the whole stack: 0 .. 99.5th percentile (of every 7th voxel; a selection,
    // not a sort: this ran 100 ms on a cine stack).
    let mut sample: Vec<f32> = vol.data.iter().step_by(7).copied().collect();
    let k = sample.len() * 995 / 1000;
    let hi = if k < sample.len() {
        *sample.select_nth_unstable_by(k, |a, b| a.total_cmp(b)).1
    } else {
        1.0
    }
    .max(1.0) as f64;
    for (k, &t) in phases.iter().enumerate() {
        let img = vol
            .slice(z, t)
            .map_err(|e| PipelineError::input(path.display().to_string(), e.to_string()))?;
        let gray = medinfer_io::raster::to_u8_view(&img, Some((hi / 2.0, hi)))?;
        let off = (t * nz + z) * nx * ny;
        let over = medinfer_io::raster::overlay(&gray, &labels[off..off + nx * ny], 0.45);
        for y in 0..ny {
            for x in 0..nx {
                let g = gray[y * nx + x];
                let a = ((y * w) + k * 2 * nx + x) * 3;
                rgb[a..a + 3].copy_from_slice(&[g, g, g]);
                let b = ((y * w) + k * 2 * nx + nx + x) * 3;
                rgb[b..b + 3].copy_from_slice(&over[(y * nx + x) * 3..(y * nx + x) * 3 + 3]);
            }
        }
    }
    medinfer_io::raster::write_png8(path, w, ny, 3, &rgb)?;
    Ok(())
}

/// An SVG line chart of the LV, RV and myocardial volumes over the cycle, ED and ES marked.
pub fn volume_curves_svg(c: &Curves, dt_ms: f64, ed: usize, es: usize) -> String {
    let (w, h, m) = (640.0, 360.0, 50.0);
    let n = c.lv_ml.len().max(2);
    let vmax = c
        .lv_ml
        .iter()
        .chain(&c.rv_ml)
        .chain(&c.myo_ml)
        .cloned()
        .fold(1.0, f64::max)
        * 1.1;
    let x = |i: usize| m + (w - 2.0 * m) * i as f64 / (n - 1) as f64;
    let y = |v: f64| h - m - (h - 2.0 * m) * v / vmax;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <line x1=\"{m}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <text x=\"{cx}\" y=\"{t}\" text-anchor=\"middle\">phase (time step {dt_ms:.1} ms)</text>\n\
         <text x=\"12\" y=\"{cy}\" transform=\"rotate(-90 12 {cy})\" text-anchor=\"middle\">volume (ml)</text>\n",
        b = h - m,
        r = w - m,
        cx = w / 2.0,
        t = h - 12.0,
        cy = h / 2.0
    );
    for k in 0..=4 {
        let v = vmax * k as f64 / 4.0;
        s += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>\n",
            m - 4.0,
            y(v) + 4.0
        );
    }
    for (i, label) in [(ed, "ED"), (es, "ES")] {
        s += &format!(
            "<line x1=\"{0:.1}\" y1=\"{m}\" x2=\"{0:.1}\" y2=\"{1}\" stroke=\"#999\" stroke-dasharray=\"4\"/>\
             <text x=\"{0:.1}\" y=\"{2}\" text-anchor=\"middle\">{label}</text>\n",
            x(i),
            h - m,
            m - 6.0
        );
    }
    for (vals, colour, name) in [
        (&c.lv_ml, "#e63c3c", "LV cavity"),
        (&c.myo_ml, "#3cc85a", "LV myocardium"),
        (&c.rv_ml, "#4682f0", "RV cavity"),
    ] {
        let pts: Vec<String> = vals
            .iter()
            .enumerate()
            .map(|(i, &v)| format!("{:.1},{:.1}", x(i), y(v)))
            .collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n",
            pts.join(" ")
        );
        let last = vals.last().copied().unwrap_or(0.0);
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\">{name}</text>\n",
            w - m + 4.0 - 45.0,
            y(last) - 6.0
        );
    }
    s += "</svg>\n";
    s
}
