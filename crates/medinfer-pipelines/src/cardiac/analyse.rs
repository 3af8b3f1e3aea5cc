//! Segmentation on the engine and the clinical numbers: back-projection onto the input grid,
//! largest components, volumes by summation of discs, ED / ES, EF, mass.

use super::preprocess::{check_input, exam_patches, PatchGeometry};
use super::APEX_DIRECTION;
use super::{ms, CardiacReport, CardiacResult, CardiacSpec, Chamber, Curves, ModelId, Timings};
use crate::phantom::{ed_es, MYOCARDIAL_DENSITY};
use crate::PipelineError;
use medinfer_core::geom::{dot, length};
use medinfer_core::Volume;
use medinfer_engine::Session;
use std::time::Instant;

/// Checks that `session` takes `(B, 1, rows, columns)` and gives `(B, classes, rows,
/// columns)` as the spec says; returns the batch.
pub fn check_model(
    session: &Session,
    model: &str,
    spec: &CardiacSpec,
) -> Result<usize, PipelineError> {
    let bad = |reason: String| PipelineError::Model {
        model: model.to_string(),
        reason,
    };
    let [r, c] = spec.size;
    let ins = session.inputs();
    if ins.len() != 1 || ins[0].shape.len() != 4 || ins[0].shape[1..] != [1, r, c] {
        return Err(bad(format!(
            "the cardiac pipeline feeds one (batch, 1, {r}, {c}) input (config: {}); the model takes {:?}",
            spec.config,
            ins.iter().map(|i| &i.shape).collect::<Vec<_>>()
        )));
    }
    let outs = session.outputs();
    // An empty shape: the output's shape is only known to the engine (shape inference could
    // not follow the graph); the first batch's size is checked instead.
    let ok = outs.first().is_some_and(|o| {
        (o.shape.is_empty()
            || o.shape.len() == 4 && (o.shape[1] == spec.channels || o.shape[1] == 0))
            && spec.classes.iter().all(|&k| k < spec.channels)
    });
    if !ok {
        return Err(bad(format!(
            "the cardiac pipeline reads (batch, {}, {r}, {c}) class scores (config: {}); the model gives {:?}",
            spec.channels,
            spec.config,
            outs.iter().map(|o| &o.shape).collect::<Vec<_>>()
        )));
    }
    Ok(ins[0].shape[0].max(1))
}

/// Segments and quantifies one cine stack.
pub fn analyse(
    vol: &Volume,
    input_name: &str,
    session: &Session,
    model: ModelId,
    spec: &CardiacSpec,
) -> Result<CardiacResult, PipelineError> {
    let t_all = Instant::now();
    check_input(vol, input_name)?;
    check_model(session, &model.path, spec)?;
    let [nx, ny, nz, nt] = vol.dims;
    let plane = nx * ny;
    let mut flags = Vec::new();

    // Preprocess.
    let t0 = Instant::now();
    let (heart, geo, view, patches) = exam_patches(vol, input_name, spec)?;
    if let Some(f) = &view.fallback {
        flags.push(f.clone());
    }
    let plen = spec.patch_len();
    let scores_len = spec.channels * plen;
    let images = nz * nt;
    let threads = std::thread::available_parallelism().map_or(1, |v| v.get());
    let preprocess_ms = ms(t0);

    // Segment: the shared batch pipeline, one worker per engine stream.
    let t0 = Instant::now();
    let idx: Vec<usize> = (0..images).collect();
    let mut logits: Vec<Vec<f32>> = vec![Vec::new(); images];
    let mut failure = None;
    crate::batch::run_ordered(
        &idx,
        session,
        1,
        |&i| Ok(&patches[i * plen..(i + 1) * plen]),
        |i, r| match r {
            Ok(v) if v.len() == scores_len => logits[i] = v,
            Ok(v) => {
                failure.get_or_insert(format!(
                    "output has {} values per image, expected {scores_len}",
                    v.len(),
                ));
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        },
    )?;
    if let Some(reason) = failure {
        return Err(PipelineError::Model {
            model: model.path.clone(),
            reason,
        });
    }
    let segment_ms = ms(t0);

    // Postprocess: class scores back onto the input grid inside the patch's footprint.
    let t0 = Instant::now();
    let [fx0, fx1, fy0, fy1] = geo.footprint(nx, ny);
    // Output channel -> medinfer's label (1 LV, 2 MYO, 3 RV, 0 anything else).
    let mut to_label = vec![0u8; spec.channels];
    for (k, &ch) in spec.classes.iter().enumerate() {
        to_label[ch] = k as u8 + 1;
    }
    let to_label = &to_label;
    let mut labels = vec![0u8; vol.data.len()];
    let logits = &logits;
    let items: Vec<(usize, &mut [u8])> = labels.chunks_mut(plane).enumerate().collect();
    super::for_each_split(items, threads, |(img, out)| {
        back_project(&logits[img], &geo, to_label, out, nx, [fx0, fx1, fy0, fy1]);
    });
    // Largest 3D connected component per structure and phase, phases spread over the cores.
    // Labels exist only inside the patch footprint, so the components are found in that box
    // (a fifth of a typical cine frame) and the voxels counted there.
    let voxel_ml = vol.spacing[0] * vol.spacing[1] * vol.spacing[2] / 1000.0;
    let mut counts = vec![[0usize; 4]; nt];
    let fp = [fx0, fx1, fy0, fy1];
    let items: Vec<(&mut [u8], &mut [usize; 4])> = labels
        .chunks_mut(nz * plane)
        .zip(counts.iter_mut())
        .collect();
    super::for_each_split(items, threads, |(frame, count)| {
        *count = clean_frame(frame, [nx, ny, nz], fp);
    });
    let mut curves = Curves {
        lv_ml: vec![0.0; nt],
        rv_ml: vec![0.0; nt],
        myo_ml: vec![0.0; nt],
    };
    for (t, c) in counts.iter().enumerate() {
        curves.lv_ml[t] = c[1] as f64 * voxel_ml;
        curves.myo_ml[t] = c[2] as f64 * voxel_ml;
        curves.rv_ml[t] = c[3] as f64 * voxel_ml;
    }
    let (ed, es) = ed_es(&curves.lv_ml);
    let lv = Chamber::new(curves.lv_ml[ed], curves.lv_ml[es]);
    let rv = Chamber::new(curves.rv_ml[ed], curves.rv_ml[es]);
    if lv.edv_ml < 5.0 {
        flags.push(format!(
            "LV end-diastolic volume {:.1} ml: the segmentation found almost no left ventricle",
            lv.edv_ml
        ));
    }
    if !(5.0..=90.0).contains(&lv.ef_pct) {
        flags.push(format!(
            "LV EF {:.1} % is outside 5-90 %: check the segmentation",
            lv.ef_pct
        ));
    }
    // Coverage, both ends in anatomical terms. Which end is apical is read from the affine
    // (the slice step against the heart's long axis, which points to the patient's left,
    // anterior and inferior), else from the data (the LV's cross-sections weigh towards the
    // base). Apex: a ventricle still large on the apical end slice at ED may extend beyond the
    // stack.
    // LV pixels of each slice at ED (both ends' rules read them).
    let ed_lv: Vec<usize> = (0..nz)
        .map(|z| {
            let s = (ed * nz + z) * plane;
            labels[s..s + plane].iter().filter(|&&v| v == 1).count()
        })
        .collect();
    let apex = apical_end(vol, &ed_lv);
    for (name, class) in [("LV", 1u8), ("RV", 3u8)] {
        let z = apex.slice;
        let start = (ed * nz + z) * plane;
        let n = labels[start..start + plane]
            .iter()
            .filter(|&&v| v == class)
            .count();
        if n as f64 * vol.spacing[0] * vol.spacing[1] > 1500.0 {
            flags.push(format!(
                "{name} is still large on the most apical slice at ED (slice {z}, {}): the stack may not cover the whole ventricle",
                apex.how
            ));
        }
    }
    // Base: a stack planned from the atrioventricular plane shows atria, or a ring of
    // myocardium open to the outflow tract, on its basal end slice at ED. An LV section there
    // still half the size of the largest one, closed all round by myocardium, is ventricle:
    // the stack may start below the base and miss the largest sections.
    if nz >= 2 {
        let base = if apex.slice == 0 { nz - 1 } else { 0 };
        let px_mm2 = vol.spacing[0] * vol.spacing[1];
        let frame = &labels[ed * nz * plane..(ed + 1) * nz * plane];
        let largest = ed_lv.iter().copied().max().unwrap_or(0);
        let at_base = ed_lv[base];
        if at_base as f64 * px_mm2 > 300.0
            && at_base as f64 >= 0.5 * largest as f64
            && ring_closure(&frame[base * plane..(base + 1) * plane], nx) >= 0.875
        {
            flags.push(format!(
                "LV is still large and closed by myocardium on the most basal slice at ED (slice {base}, {:.0} % of the largest LV section; {}): the stack may not reach the base",
                100.0 * at_base as f64 / largest.max(1) as f64,
                apex.how
            ));
        }
    }
    if let Some(t) = vol.tags.get("cine_timing") {
        flags.push(format!("cine timing: {t}"));
    }
    if let Some(t) = vol.tags.get("stack") {
        flags.push(format!("stack: {t}"));
    }
    let lv_mass_g = curves.myo_ml[ed] * MYOCARDIAL_DENSITY;
    let postprocess_ms = ms(t0);
    let info = session.info();
    Ok(CardiacResult {
        report: CardiacReport {
            input: input_name.to_string(),
            dims: vol.dims,
            spacing: vol.spacing,
            model,
            model_config: spec.clone(),
            backend: info.backend.name().to_string(),
            precision: info.effective_precision.clone(),
            heart,
            view,
            ed_phase: ed,
            es_phase: es,
            lv,
            rv,
            lv_mass_g,
            curves,
            images,
            images_per_s: images as f64 / (segment_ms / 1000.0).max(1e-9),
            flags,
            timings: Timings {
                preprocess_ms,
                segment_ms,
                postprocess_ms,
                total_ms: ms(t_all),
                ..Default::default()
            },
        },
        labels,
    })
}

/// The apical end of the stack and how it was told.
struct ApicalEnd {
    slice: usize,
    how: &'static str,
}

/// `ed_lv`: the LV's pixel count on each slice at ED.
fn apical_end(vol: &Volume, ed_lv: &[usize]) -> ApicalEnd {
    let nz = ed_lv.len();
    if vol.tags.get("geometry") != Some("unknown") {
        let step = [vol.affine[0][2], vol.affine[1][2], vol.affine[2][2]];
        let c = dot(step, APEX_DIRECTION) / (length(step) * length(APEX_DIRECTION)).max(1e-12);
        if c > 0.3 {
            return ApicalEnd {
                slice: nz - 1,
                how: "slices run base to apex by the affine",
            };
        }
        if c < -0.3 {
            return ApicalEnd {
                slice: 0,
                how: "slices run apex to base by the affine",
            };
        }
    }
    // The LV's sections are largest near the base and taper to the apex, so their
    // area-weighted mean position lies on the basal half of the stack.
    let (mut sum, mut weighted) = (0.0, 0.0);
    for (z, &n) in ed_lv.iter().enumerate() {
        sum += n as f64;
        weighted += n as f64 * z as f64;
    }
    let apex_last = sum == 0.0 || weighted / sum <= (nz as f64 - 1.0) / 2.0;
    ApicalEnd {
        slice: if apex_last { nz - 1 } else { 0 },
        how: "the apex is where the LV's sections shrink; the affine does not tell",
    }
}

/// Fraction of 24 angular sectors around the LV cavity's centroid in which the slice `plane`
/// (labels, rows of `nx`) has myocardium: 1 for a closed ring, less where it opens (the
/// outflow tract at the base) or is missing (atria).
fn ring_closure(plane: &[u8], nx: usize) -> f64 {
    const SECTORS: usize = 24;
    let (mut n, mut cx, mut cy) = (0.0, 0.0, 0.0);
    for (i, &v) in plane.iter().enumerate() {
        if v == 1 {
            n += 1.0;
            cx += (i % nx) as f64;
            cy += (i / nx) as f64;
        }
    }
    if n == 0.0 {
        return 0.0;
    }
    let (cx, cy) = (cx / n, cy / n);
    let mut hit = [false; SECTORS];
    for (i, &v) in plane.iter().enumerate() {
        if v == 2 {
            let a = ((i / nx) as f64 - cy).atan2((i % nx) as f64 - cx);
            let k = ((a + std::f64::consts::PI) / std::f64::consts::TAU * SECTORS as f64) as usize;
            hit[k.min(SECTORS - 1)] = true;
        }
    }
    hit.iter().filter(|&&h| h).count() as f64 / SECTORS as f64
}

/// Arg-max of the bilinearly interpolated class scores at every input pixel of the footprint,
/// written as medinfer's label of the winning channel (`to_label`).
fn back_project(
    l: &[f32],
    g: &PatchGeometry,
    to_label: &[u8],
    out: &mut [u8],
    nx: usize,
    fp: [usize; 4],
) {
    let [pw, ph] = g.size;
    let plane = pw * ph;
    let [x0, x1, y0, y1] = fp;
    // Input pixel -> patch coordinates: the inverse of the patch's 2x2 map about its centre,
    // the products that depend on the row alone computed once per row.
    let m = &g.m;
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    let (hx, hy) = (pw as f64 / 2.0, ph as f64 / 2.0);
    for y in y0..y1 {
        let dy = y as f64 - g.centre[1];
        let (m01dy, m00dy) = (m[0][1] * dy, m[0][0] * dy);
        for x in x0..x1 {
            // Patch coordinates of this input pixel (patch pixel centres at integers).
            let dx = x as f64 - g.centre[0];
            let px = (m[1][1] * dx - m01dy) / det + hx - 0.5;
            let py = (m00dy - m[1][0] * dx) / det + hy - 0.5;
            if px < 0.0 || px > (pw - 1) as f64 || py < 0.0 || py > (ph - 1) as f64 {
                continue;
            }
            // Non-negative here, so truncation is the floor (no libm call per pixel).
            let j0 = (py as usize).min(ph - 2);
            let fy = (py - j0 as f64) as f32;
            let i0 = (px as usize).min(pw - 2);
            let fx = (px - i0 as f64) as f32;
            let mut best = (f32::MIN, 0usize);
            for (c, _) in to_label.iter().enumerate() {
                let b = c * plane + j0 * pw + i0;
                let top = l[b] * (1.0 - fx) + l[b + 1] * fx;
                let bot = l[b + pw] * (1.0 - fx) + l[b + pw + 1] * fx;
                let v = top * (1.0 - fy) + bot * fy;
                if v > best.0 {
                    best = (v, c);
                }
            }
            out[y * nx + x] = to_label[best.1];
        }
    }
}

/// Keeps the largest 6-connected component of each structure (1-3) of one phase's
/// `[nx, ny, nz]` frame, working in the footprint box `[x0, x1, y0, y1]` (outside it the frame
/// must be 0); returns the voxel count of each label.
fn clean_frame(frame: &mut [u8], dims: [usize; 3], fp: [usize; 4]) -> [usize; 4] {
    let [nx, ny, nz] = dims;
    let [x0, x1, y0, y1] = fp;
    let (bx, by) = (x1.saturating_sub(x0), y1.saturating_sub(y0));
    let mut counts = [0usize; 4];
    if bx == 0 || by == 0 {
        counts[0] = frame.len();
        return counts;
    }
    let mut boxed = vec![0u8; bx * by * nz];
    for z in 0..nz {
        for y in 0..by {
            let src = (z * ny + y0 + y) * nx + x0;
            boxed[(z * by + y) * bx..(z * by + y + 1) * bx].copy_from_slice(&frame[src..src + bx]);
        }
    }
    for class in 1..=3u8 {
        keep_largest_component(&mut boxed, [bx, by, nz], class);
    }
    for z in 0..nz {
        for y in 0..by {
            let dst = (z * ny + y0 + y) * nx + x0;
            frame[dst..dst + bx].copy_from_slice(&boxed[(z * by + y) * bx..(z * by + y + 1) * bx]);
        }
    }
    for &v in &boxed {
        counts[v as usize & 3] += 1;
    }
    counts[0] += frame.len() - boxed.len();
    counts
}

/// Keeps only the largest 6-connected component of `class` in a `[nx, ny, nz]` frame.
pub fn keep_largest_component(frame: &mut [u8], dims: [usize; 3], class: u8) {
    crate::segment::grid::keep_largest(frame, dims, class);
}
