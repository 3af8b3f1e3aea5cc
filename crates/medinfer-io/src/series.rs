//! DICOM series to [`Volume`]: group files by Series Instance UID, order slices by Image Position
//! (Patient) projected on the slice normal (never by file name or Instance Number), derive the
//! slice spacing from the positions, and reject missing, duplicated and inconsistent slices with
//! errors that say which. Cine series (several images at each position, told apart by Temporal
//! Position Identifier or Trigger Time) become 4D: `[columns, rows, slices, phases]`.
//!
//! Geometry: the affine maps `(column, row, slice)` to RAS+ mm (DICOM LPS with x and y negated,
//! as dcm2niix and nibabel do), so a converted series lands where the scanner put it.

use crate::dicom::{DicomFile, DicomHeader};
use crate::{fmt_err, os_err, IoError};
use medinfer_core::geom::{cross, dot};
use medinfer_core::{usable_cores, Volume};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Most images (files x frames) one series may hold: far above real series (a 4D cine is a
/// few hundred, a whole-body CT a few thousand, a DTI or fMRI series tens of thousands), and
/// the bound on the per-image bookkeeping a folder of hostile headers can cause.
pub const MAX_SERIES_IMAGES: u64 = 1 << 20;

/// Relative tolerance on slice spacing before a gap counts as irregular.
pub const SPACING_TOLERANCE: f64 = 0.1;

/// One DICOM file of a series (header parsed, pixels not yet decoded).
#[derive(Clone, Debug)]
pub struct SeriesFile {
    /// The file.
    pub path: PathBuf,
    /// Its header.
    pub header: DicomHeader,
}

/// The files of one Series Instance UID.
#[derive(Clone, Debug)]
pub struct Series {
    /// Series Instance UID.
    pub uid: String,
    /// Its files, in no particular order.
    pub files: Vec<SeriesFile>,
}

/// What a scan of files or folders found.
#[derive(Debug, Default)]
pub struct Scan {
    /// DICOM series found, largest first.
    pub series: Vec<Series>,
    /// Files that are not DICOM or could not be parsed, with the reason.
    pub rejected: Vec<(PathBuf, String)>,
}

/// Lists regular files under `path` (a file, or a folder walked recursively), sorted.
pub fn list_files(path: &Path) -> Result<Vec<PathBuf>, IoError> {
    let os = os_err(path);
    let meta = std::fs::metadata(path).map_err(os)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(os_err(&dir))?;
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Parses the headers of every file (in parallel) and groups the DICOM ones by series.
pub fn scan(files: &[PathBuf]) -> Scan {
    let results = parallel_map(files, |p| DicomFile::open_header(p).map(|f| f.header));
    let mut groups: BTreeMap<String, Vec<SeriesFile>> = BTreeMap::new();
    let mut rejected = Vec::new();
    for (path, r) in files.iter().zip(results) {
        match r {
            Ok(header) => groups
                .entry(header.series_instance_uid.clone())
                .or_default()
                .push(SeriesFile {
                    path: path.clone(),
                    header,
                }),
            Err(e) => rejected.push((path.clone(), e.to_string())),
        }
    }
    let mut series: Vec<Series> = groups
        .into_iter()
        .map(|(uid, files)| Series { uid, files })
        .collect();
    series.sort_by(|a, b| b.files.len().cmp(&a.files.len()).then(a.uid.cmp(&b.uid)));
    Scan { series, rejected }
}

/// Runs `f` on every item on all usable cores, keeping order.
pub fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let workers = usable_cores().min(items.len()).max(1);
    if workers == 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut slots: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    let results = std::sync::Mutex::new(Vec::with_capacity(items.len()));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= items.len() {
                    break;
                }
                let r = f(&items[i]);
                results.lock().expect("no panics while held").push((i, r));
            });
        }
    });
    for (i, r) in results.into_inner().expect("threads joined") {
        slots[i] = Some(r);
    }
    slots
        .into_iter()
        .map(|r| r.expect("every index computed"))
        .collect()
}

fn err(uid: &str, reason: impl Into<String>) -> IoError {
    fmt_err(&format!("series {uid}"), reason)
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// An image of a series: (position along the normal, time key, file index, frame, position).
type Keyed = (f64, f64, usize, usize, [f64; 3]);

/// How a series assembles, without decoding pixels.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Layout {
    /// `[columns, rows, slices, phases]`.
    pub dims: [usize; 4],
    /// Column spacing, row spacing, slice spacing (mm), phase step (ms, 0 when unknown).
    pub spacing: [f64; 4],
    /// Voxel index to RAS+ mm.
    pub affine: [[f64; 4]; 4],
    /// `(file index, frame)` for each `(phase, slice)`, phase-major.
    #[serde(skip)]
    pub order: Vec<(usize, usize)>,
    /// Set when the slices' cine timings differ (each slice acquired in its own breath-hold):
    /// phases are then matched by index within each slice's cycle.
    pub timing: Option<CineTiming>,
}

/// Per-slice cine timing of a stack whose slices were acquired separately.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CineTiming {
    /// Time of each slice's first phase, ms, in slice order.
    pub first_ms: Vec<f64>,
    /// Each slice's cycle covered (last phase minus first), ms.
    pub span_ms: Vec<f64>,
}

impl CineTiming {
    /// One line for reports: the spread of first-phase times and of cycle lengths.
    pub fn summary(&self) -> String {
        let range = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (lo, hi)
        };
        let (a, b) = range(&self.first_ms);
        let (c, d) = range(&self.span_ms);
        format!(
            "slices acquired separately (breath-holds): first phase at {a:.1}-{b:.1} ms, cycle span {c:.1}-{d:.1} ms across {} slices; phases matched by index",
            self.first_ms.len()
        )
    }
}

/// Works out slice order, spacing and geometry from the headers alone.
pub fn layout(series: &Series) -> Result<Layout, IoError> {
    layout_within(series, 1e-3)
}

/// [`layout`] with image orientations allowed to differ by `orientation_tolerance` (per
/// direction cosine) from the first file's, which gives the geometry.
fn layout_within(series: &Series, orientation_tolerance: f64) -> Result<Layout, IoError> {
    let uid = series.uid.as_str();
    let files = &series.files;
    let first = files.first().ok_or_else(|| err(uid, "no files"))?;
    let h0 = &first.header;
    for f in files {
        let h = &f.header;
        if (h.rows, h.columns, h.samples_per_pixel) != (h0.rows, h0.columns, h0.samples_per_pixel) {
            return Err(err(
                uid,
                format!(
                    "inconsistent image size: {} is {}x{}x{}, {} is {}x{}x{}",
                    name(&first.path),
                    h0.columns,
                    h0.rows,
                    h0.samples_per_pixel,
                    name(&f.path),
                    h.columns,
                    h.rows,
                    h.samples_per_pixel
                ),
            ));
        }
        if h.samples_per_pixel != 1 {
            return Err(err(uid, "colour series cannot form a volume"));
        }
    }
    let total: u64 = files.iter().map(|f| f.header.frames.max(1) as u64).sum();
    if total > MAX_SERIES_IMAGES {
        return Err(err(
            uid,
            format!(
                "{total} images in {} file(s), more than the {MAX_SERIES_IMAGES} a series may hold",
                files.len()
            ),
        ));
    }
    let voxels = (h0.rows as u64)
        .checked_mul(h0.columns as u64)
        .and_then(|v| v.checked_mul(total));
    if voxels.is_none_or(|v| v > crate::dicom::MAX_SAMPLES) {
        return Err(err(
            uid,
            format!(
                "{total} images of {}x{} are more than the {} samples a volume may hold",
                h0.columns,
                h0.rows,
                crate::dicom::MAX_SAMPLES
            ),
        ));
    }
    // Each image: (file, frame, position, time key).
    let mut images: Vec<(usize, usize, Option<[f64; 3]>, f64)> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let h = &f.header;
        if h.frames > 1 {
            for fr in 0..h.frames as usize {
                let t = h.frame_times.get(fr).copied().unwrap_or(0.0);
                images.push((i, fr, h.frame_positions.get(fr).copied(), t));
            }
        } else {
            let t = h
                .temporal_position
                .map(|v| v as f64)
                .or(h.trigger_time)
                .unwrap_or(0.0);
            images.push((i, 0, h.position, t));
        }
    }
    let ps = h0.pixel_spacing.unwrap_or([1.0, 1.0]);
    let Some(iop) = h0.orientation else {
        // No geometry at all (e.g. classic multi-frame ultrasound): frames in file order.
        if files.len() != 1 {
            return Err(err(
                uid,
                "files without Image Orientation (Patient) cannot be ordered into a volume",
            ));
        }
        let n = images.len();
        let dz = h0.slice_thickness.filter(|t| *t > 0.0).unwrap_or(1.0);
        let mut affine = [[0.0; 4]; 4];
        affine[0][0] = ps[1];
        affine[1][1] = ps[0];
        affine[2][2] = dz;
        affine[3][3] = 1.0;
        return Ok(Layout {
            dims: [h0.columns as usize, h0.rows as usize, n, 1],
            spacing: [ps[1], ps[0], dz, 0.0],
            affine,
            order: images.iter().map(|&(f, fr, _, _)| (f, fr)).collect(),
            timing: None,
        });
    };
    for f in files {
        if let Some(o) = f.header.orientation {
            if o.iter()
                .zip(iop)
                .any(|(a, b)| (a - b).abs() > orientation_tolerance)
            {
                return Err(err(
                    uid,
                    format!(
                        "inconsistent orientation: {} has {:?}, {} has {:?}",
                        name(&first.path),
                        iop,
                        name(&f.path),
                        o
                    ),
                ));
            }
        }
        if let Some(p) = f.header.pixel_spacing {
            if (p[0] - ps[0]).abs() > 1e-3 || (p[1] - ps[1]).abs() > 1e-3 {
                return Err(err(
                    uid,
                    format!(
                        "inconsistent pixel spacing: {} has {ps:?}, {} has {p:?}",
                        name(&first.path),
                        name(&f.path)
                    ),
                ));
            }
        }
    }
    let row = [iop[0], iop[1], iop[2]];
    let col = [iop[3], iop[4], iop[5]];
    let normal = cross(row, col);
    let mut keyed = Vec::with_capacity(images.len());
    for &(f, fr, pos, t) in &images {
        let pos = pos.ok_or_else(|| {
            err(
                uid,
                format!("{} has no Image Position (Patient)", name(&files[f].path)),
            )
        })?;
        keyed.push((dot(pos, normal), t, f, fr, pos));
    }
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    // Group images at the same position (cine phases).
    let tol = 1e-3_f64.max(ps[0].min(ps[1]) * 1e-3);
    let mut groups: Vec<Vec<Keyed>> = Vec::new();
    for k in keyed {
        match groups.last_mut() {
            Some(g) if (k.0 - g[0].0).abs() < tol => g.push(k),
            _ => groups.push(vec![k]),
        }
    }
    let phases = groups[0].len();
    for g in &groups {
        if g.len() != phases {
            return Err(err(uid, format!(
                "slice at {:.2} mm has {} image(s), others have {phases}: a missing or duplicated image",
                g[0].0, g.len()
            )));
        }
        for w in g.windows(2) {
            if w[0].1 == w[1].1 {
                return Err(err(
                    uid,
                    format!(
                        "duplicated slice at {:.2} mm: {} and {} have the same position and time",
                        w[0].0,
                        name(&files[w[0].2].path),
                        name(&files[w[1].2].path)
                    ),
                ));
            }
        }
    }
    // Slices acquired in separate breath-holds have their own trigger times and RR: phases are
    // matched by index within each slice's cycle, checked by relative time (each phase within
    // half a step of the first slice's), and the spread is reported rather than refused.
    let mut timing = None;
    if phases > 1 {
        let times: Vec<f64> = groups[0].iter().map(|k| k.1).collect();
        let rel = |t: &[f64]| -> Vec<f64> {
            let span = t[phases - 1] - t[0];
            t.iter().map(|x| (x - t[0]) / span.max(1e-9)).collect()
        };
        let reference = rel(&times);
        let mut differ = false;
        for g in &groups {
            let t: Vec<f64> = g.iter().map(|k| k.1).collect();
            differ |= t
                .iter()
                .zip(&times)
                .any(|(a, b)| (a - b).abs() > 1e-3 && (a - b).abs() > 0.05 * b.abs());
            let r = rel(&t);
            let half_step = 0.5 / (phases - 1) as f64;
            if let Some(p) = (0..phases).find(|&p| (r[p] - reference[p]).abs() > half_step) {
                return Err(err(uid, format!(
                    "cine phases do not line up: phase {p} of the slice at {:.2} mm is at {:.0}% of its cycle, {:.0}% in the first slice (times {t:?} vs {times:?})",
                    g[0].0, 100.0 * r[p], 100.0 * reference[p]
                )));
            }
        }
        if differ {
            timing = Some(CineTiming {
                first_ms: groups.iter().map(|g| g[0].1).collect(),
                span_ms: groups.iter().map(|g| g[phases - 1].1 - g[0].1).collect(),
            });
        }
    }
    let n = groups.len();
    let dz = if n > 1 {
        let gaps: Vec<f64> = groups.windows(2).map(|w| w[1][0].0 - w[0][0].0).collect();
        let mut sorted = gaps.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        for (i, g) in gaps.iter().enumerate() {
            if (g - median).abs() > SPACING_TOLERANCE * median {
                let a = name(&files[groups[i][0].2].path);
                let b = name(&files[groups[i + 1][0].2].path);
                let what = if (g / median - 2.0).abs() < 0.5 || g / median > 1.5 {
                    format!("missing slice(s): gap of {g:.2} mm between {a} and {b}, the series' spacing is {median:.2} mm")
                } else {
                    format!("irregular slice spacing: {g:.2} mm between {a} and {b}, the series' spacing is {median:.2} mm")
                };
                return Err(err(uid, what));
            }
        }
        gaps.iter().sum::<f64>() / gaps.len() as f64
    } else {
        h0.slice_thickness.filter(|t| *t > 0.0).unwrap_or(1.0)
    };
    let dt = if phases > 1 {
        // The mean of the slices' own steps (they differ when the RR did).
        let spans: f64 = groups.iter().map(|t| t[phases - 1].1 - t[0].1).sum();
        spans / groups.len() as f64 / (phases - 1) as f64
    } else {
        0.0
    };
    let origin = groups[0][0].4;
    let mut affine = [[0.0; 4]; 4];
    for a in 0..3 {
        let flip = if a < 2 { -1.0 } else { 1.0 };
        affine[a][0] = flip * row[a] * ps[1];
        affine[a][1] = flip * col[a] * ps[0];
        affine[a][2] = flip * normal[a] * dz;
        affine[a][3] = flip * origin[a];
    }
    affine[3][3] = 1.0;
    let mut order = Vec::with_capacity(n * phases);
    for p in 0..phases {
        for g in &groups {
            order.push((g[p].2, g[p].3));
        }
    }
    Ok(Layout {
        dims: [h0.columns as usize, h0.rows as usize, n, phases],
        spacing: [
            ps[1],
            ps[0],
            dz,
            if phases > 1 && h0.temporal_position.is_none() {
                dt
            } else {
                0.0
            },
        ],
        affine,
        order,
        timing,
    })
}

/// The `(frame, place in the volume)` pairs one file fills, behind a lock that only its worker
/// takes.
type FrameSlots<'a> = std::sync::Mutex<Vec<(usize, &'a mut [f32])>>;

/// Decodes and assembles a series into a volume (slices decoded on all usable cores).
pub fn assemble(series: &Series) -> Result<Volume, IoError> {
    assemble_within(series, 1e-3)
}

fn assemble_within(series: &Series, orientation_tolerance: f64) -> Result<Volume, IoError> {
    let lay = layout_within(series, orientation_tolerance)?;
    let [nx, ny, nz, nt] = lay.dims;
    let frame = nx * ny;
    // Each file is decoded once, on all cores, straight into its slices' places in the
    // preallocated volume: no per-file copy of the whole series is kept alive (that doubled the
    // memory touched and cost a copy of every voxel).
    let mut data = vec![0f32; frame * nz * nt];
    let mut per_file: Vec<Vec<(usize, &mut [f32])>> =
        (0..series.files.len()).map(|_| Vec::new()).collect();
    for (&(f, fr), slot) in lay.order.iter().zip(data.chunks_mut(frame.max(1))) {
        per_file
            .get_mut(f)
            .ok_or_else(|| err(&series.uid, format!("no file {f}")))?
            .push((fr, slot));
    }
    let jobs: Vec<(usize, FrameSlots)> = per_file
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .map(|(f, v)| (f, std::sync::Mutex::new(v)))
        .collect();
    let results = parallel_map(&jobs, |(f, slots)| -> Result<(), IoError> {
        let file = &series.files[*f];
        let images = DicomFile::open(&file.path).and_then(|d| d.images())?;
        let mut slots = slots.lock().unwrap_or_else(|e| e.into_inner());
        for (fr, slot) in slots.iter_mut() {
            let img = images.get(*fr).ok_or_else(|| {
                err(
                    &series.uid,
                    format!("{} has no frame {fr}", name(&file.path)),
                )
            })?;
            if img.data.len() != slot.len() {
                return Err(err(
                    &series.uid,
                    format!(
                        "{} frame {fr} has {}x{}x{} values, the series {nx}x{ny}",
                        name(&file.path),
                        img.width,
                        img.height,
                        img.channels
                    ),
                ));
            }
            slot.copy_from_slice(&img.data);
        }
        Ok(())
    });
    for r in results {
        r?;
    }
    let mut vol =
        Volume::new(lay.dims, data, lay.spacing).map_err(|e| err(&series.uid, e.to_string()))?;
    vol.affine = lay.affine;
    vol.window = series.files[0].header.window;
    vol.tags = series.files[0].header.tags();
    if series.files[0].header.orientation.is_none() {
        vol.tags.set("geometry", "unknown");
    }
    if let Some(t) = &lay.timing {
        vol.tags.set("cine_timing", t.summary());
    }
    Ok(vol)
}

/// Largest angle between two single-slice series' image planes (normals and row directions)
/// for them to be slices of one stack, degrees. Planned short-axis stacks share one
/// orientation; long-axis views and localisers differ by tens of degrees.
pub const STACK_ANGLE_TOLERANCE_DEG: f64 = 5.0;

/// A short name for a series in messages: the folder of its first file and its UID.
fn series_name(s: &Series) -> String {
    let folder = s
        .files
        .first()
        .and_then(|f| f.path.parent())
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{folder} ({})", s.uid)
}

fn angle_deg(a: [f64; 3], b: [f64; 3]) -> f64 {
    let c = dot(a, b) / (dot(a, a) * dot(b, b)).sqrt().max(1e-12);
    c.abs().min(1.0).acos().to_degrees()
}

/// Assembles one stack out of several single-slice cine series (each slice its own series, as
/// public short-axis archives and many PACS exports store them). The stack is the largest set
/// of single-slice cines sharing an image plane orientation (within
/// [`STACK_ANGLE_TOLERANCE_DEG`]) and image size; other series (long-axis views, localisers,
/// multi-slice series) are left out and named in the volume's `stack` tag. Within the stack
/// every slice must have the same number of phases (the error names the one that does not),
/// and where two series image the same position the later one (highest Series Number, a
/// repeat) is kept and the other named. `None` when no two series form a stack.
pub fn assemble_stack(series: &[Series]) -> Option<Result<Volume, IoError>> {
    struct Cine<'a> {
        s: &'a Series,
        normal: [f64; 3],
        row: [f64; 3],
        size: (u32, u32),
        phases: usize,
        at: f64,
    }
    let mut cines = Vec::new();
    let mut left_out: Vec<String> = Vec::new();
    for s in series {
        let h = &s.files[0].header;
        let lay = match (h.orientation, layout(s)) {
            (Some(o), Ok(l)) if l.dims[2] == 1 && l.dims[3] >= 2 => (o, l),
            (_, Ok(l)) => {
                left_out.push(format!(
                    "{} ({} slice(s) x {} phase(s): not a single-slice cine)",
                    series_name(s),
                    l.dims[2],
                    l.dims[3]
                ));
                continue;
            }
            (_, Err(e)) => {
                left_out.push(format!("{} ({e})", series_name(s)));
                continue;
            }
        };
        let (o, l) = lay;
        let row = [o[0], o[1], o[2]];
        let normal = cross(row, [o[3], o[4], o[5]]);
        let origin = [l.affine[0][3], l.affine[1][3], l.affine[2][3]];
        cines.push(Cine {
            s,
            normal,
            row,
            size: (h.columns, h.rows),
            phases: l.dims[3],
            // RAS+ origin back to LPS+ to project like the headers' positions.
            at: dot([-origin[0], -origin[1], origin[2]], normal),
        });
    }
    // The largest group sharing a plane and an image size.
    let fits = |a: &Cine, b: &Cine| {
        a.size == b.size
            && angle_deg(a.normal, b.normal) <= STACK_ANGLE_TOLERANCE_DEG
            && angle_deg(a.row, b.row) <= STACK_ANGLE_TOLERANCE_DEG
    };
    let best =
        (0..cines.len()).max_by_key(|&i| cines.iter().filter(|c| fits(&cines[i], c)).count())?;
    let members: Vec<usize> = (0..cines.len())
        .filter(|&j| fits(&cines[best], &cines[j]))
        .collect();
    if members.len() < 2 {
        return None;
    }
    for (j, c) in cines.iter().enumerate() {
        if !members.contains(&j) {
            left_out.push(format!(
                "{} (image plane {:.0} degrees from the stack's, or another image size)",
                series_name(c.s),
                angle_deg(c.normal, cines[best].normal)
            ));
        }
    }
    let name = format!(
        "stack of {} single-slice series ({}, ...)",
        members.len(),
        series_name(cines[members[0]].s)
    );
    let phases = cines[members[0]].phases;
    if let Some(&j) = members.iter().find(|&&j| cines[j].phases != phases) {
        let other = cines[members[0]].s;
        return Some(Err(fmt_err(
            &name,
            format!(
                "{} has {} phases, {} has {phases}: the slices of a stack must have the same number of phases",
                series_name(cines[j].s),
                cines[j].phases,
                series_name(other)
            ),
        )));
    }
    // Repeats at one position: keep the later series.
    let mut kept: Vec<usize> = Vec::new();
    let tol = 0.01;
    let mut sorted = members.clone();
    sorted.sort_by(|&a, &b| cines[a].at.total_cmp(&cines[b].at));
    for j in sorted {
        match kept.last() {
            Some(&k) if (cines[k].at - cines[j].at).abs() < tol => {
                let number = |i: usize| cines[i].s.files[0].header.series_number.unwrap_or(0);
                let (keep, drop) = if number(j) >= number(k) {
                    (j, k)
                } else {
                    (k, j)
                };
                left_out.push(format!(
                    "{} (repeated at {:.2} mm; the later series {} was kept)",
                    series_name(cines[drop].s),
                    cines[drop].at,
                    series_name(cines[keep].s)
                ));
                *kept.last_mut().expect("not empty") = keep;
            }
            _ => kept.push(j),
        }
    }
    let merged = Series {
        uid: name.clone(),
        files: kept
            .iter()
            .flat_map(|&j| cines[j].s.files.iter().cloned())
            .collect(),
    };
    // The members' orientations differ by at most the angle tolerance: their direction
    // cosines by at most 2 sin(tolerance / 2).
    let cos_tol = 2.0 * (STACK_ANGLE_TOLERANCE_DEG.to_radians() / 2.0).sin() + 1e-6;
    Some(assemble_within(&merged, cos_tol).map(|mut vol| {
        let mut note = format!("assembled from {} single-slice series", kept.len());
        if !left_out.is_empty() {
            note.push_str(&format!("; left out: {}", left_out.join("; ")));
        }
        vol.tags.set("stack", note);
        vol
    }))
}

/// Reads the one series found under `path` (a file or folder). Several single-slice cine
/// series that form one stack are assembled into it ([`assemble_stack`]); otherwise, with
/// several series, the error lists them: pick one with [`scan`] and [`assemble`].
pub fn read_series(path: impl AsRef<Path>) -> Result<Volume, IoError> {
    let path = path.as_ref();
    let files = list_files(path)?;
    let s = scan(&files);
    match s.series.len() {
        0 => Err(fmt_err(
            &path.display().to_string(),
            match s.rejected.first() {
                Some((p, e)) => format!(
                    "no DICOM series found ({} file(s) rejected, e.g. {}: {e})",
                    s.rejected.len(),
                    name(p)
                ),
                None => "no files found".into(),
            },
        )),
        1 => assemble(&s.series[0]),
        n => assemble_stack(&s.series).unwrap_or_else(|| {
            Err(fmt_err(
                &path.display().to_string(),
                format!(
                    "{n} series found ({}); point at one series' folder",
                    s.series
                        .iter()
                        .map(|x| format!("{} with {} file(s)", x.uid, x.files.len()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }),
    }
}
