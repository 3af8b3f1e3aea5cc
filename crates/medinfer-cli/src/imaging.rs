//! `medinfer inspect` and `medinfer convert`: the image I/O commands.

use anyhow::{bail, Context, Result};
use clap::Args;
use medinfer_core::{Tensor, Volume};
use medinfer_io::{inspect, nifti, npy, raster};
use std::path::PathBuf;

#[derive(Args)]
pub struct InspectArgs {
    /// A file (DICOM, NIfTI, PNG, JPEG, NPY) or a folder, searched recursively.
    pub path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// A DICOM series folder or file, NIfTI, PNG or JPEG file.
    pub input: PathBuf,
    /// Output file; the format follows the extension: .nii / .nii.gz (volume, source geometry
    /// kept), .npy (float32, shape (t, z, y, x) for volumes), .png (8-bit windowed view of the
    /// middle slice).
    #[arg(short, long)]
    pub output: PathBuf,
    /// NIfTI voxel type: f32, i16 (e.g. CT in HU) or u8 (masks).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Window for PNG output as CENTER,WIDTH in modality units (default: the file's own window,
    /// else the image's min..max).
    #[arg(long, value_name = "C,W")]
    pub window: Option<String>,
}

pub fn cmd_inspect(a: InspectArgs) -> Result<()> {
    let r = inspect::inspect(&a.path)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    if r.series.is_empty() && r.files.is_empty() && r.rejected.is_empty() {
        println!("{}: no files", a.path.display());
    }
    for s in &r.series {
        let h = &s.first;
        println!("DICOM series {}", s.uid);
        println!(
            "  modality {}  {}  {} file(s)  series number {}",
            if s.modality.is_empty() {
                "?"
            } else {
                &s.modality
            },
            if s.description.is_empty() {
                "(no description)"
            } else {
                &s.description
            },
            s.files,
            h.series_number.map_or("-".into(), |n| n.to_string())
        );
        for (ts, ok) in &s.transfer_syntaxes {
            println!(
                "  transfer syntax {ts}: {}",
                if *ok { "decodable" } else { "NOT decodable" }
            );
        }
        println!(
            "  image {} x {} x {} frame(s), {} sample(s), {} of {} bits {}, {}",
            h.columns,
            h.rows,
            h.frames,
            h.samples_per_pixel,
            h.bits_stored,
            h.bits_allocated,
            if h.signed { "signed" } else { "unsigned" },
            h.photometric
        );
        if let Some(ps) = h.pixel_spacing {
            println!(
                "  pixel spacing {:.4} x {:.4} mm (row x column)",
                ps[0], ps[1]
            );
        }
        println!(
            "  rescale slope {} intercept {}{}",
            h.rescale.0,
            h.rescale.1,
            if h.modality_lut {
                " (Modality LUT Sequence)"
            } else {
                ""
            }
        );
        match &s.volume {
            Ok((d, sp)) => println!(
                "  assembles to {} x {} x {} slices{} at {:.3} x {:.3} x {:.3} mm{}",
                d[0],
                d[1],
                d[2],
                if d[3] > 1 {
                    format!(" x {} phases", d[3])
                } else {
                    String::new()
                },
                sp[0],
                sp[1],
                sp[2],
                if sp[3] > 0.0 {
                    format!(", {:.1} ms per phase", sp[3])
                } else {
                    String::new()
                }
            ),
            Err(e) => println!("  does not assemble into a volume: {e}"),
        }
    }
    for f in &r.files {
        println!(
            "{} {:?}: {} x {} x {} x {}, spacing {:?}, {}",
            f.path, f.format, f.dims[0], f.dims[1], f.dims[2], f.dims[3], f.spacing, f.detail
        );
    }
    for (p, e) in &r.rejected {
        println!("rejected {p}: {e}");
    }
    Ok(())
}

pub(crate) fn parse_window(s: &str) -> Result<(f64, f64)> {
    let (c, w) = s.split_once(',').context("--window takes CENTER,WIDTH")?;
    let c: f64 = c
        .trim()
        .parse()
        .context("--window centre is not a number")?;
    let w: f64 = w.trim().parse().context("--window width is not a number")?;
    if w.is_nan() || w < 1.0 {
        bail!("--window width must be >= 1, got {w}");
    }
    Ok((c, w))
}

enum ConvertTo {
    Nifti(nifti::NiftiDtype),
    Npy,
    Png,
}

pub fn cmd_convert(a: ConvertArgs) -> Result<()> {
    // Everything about the output is checked before the input is read.
    let out = a.output.to_string_lossy().to_ascii_lowercase();
    let to = if out.ends_with(".nii") || out.ends_with(".nii.gz") {
        ConvertTo::Nifti(match a.dtype.as_str() {
            "f32" | "float32" => nifti::NiftiDtype::F32,
            "i16" | "int16" => nifti::NiftiDtype::I16,
            "u8" | "uint8" => nifti::NiftiDtype::U8,
            d => bail!("--dtype {d}: expected f32, i16 or u8"),
        })
    } else if out.ends_with(".npy") {
        ConvertTo::Npy
    } else if out.ends_with(".png") {
        ConvertTo::Png
    } else {
        bail!(
            "{}: unknown output format (use .nii, .nii.gz, .npy or .png)",
            a.output.display()
        );
    };
    let window = a.window.as_deref().map(parse_window).transpose()?;
    let mut vol: Volume = medinfer_io::read_volume(&a.input)?;
    let [nx, ny, nz, nt] = vol.dims;
    let spacing = vol.spacing;
    match to {
        ConvertTo::Nifti(dt) => nifti::write(&a.output, &vol, dt)?,
        ConvertTo::Npy => {
            let shape = if nt > 1 {
                vec![nt, nz, ny, nx]
            } else if nz > 1 {
                vec![nz, ny, nx]
            } else {
                vec![ny, nx]
            };
            let t = Tensor::from_f32(shape, std::mem::take(&mut vol.data))?;
            npy::write(&a.output, &t)?;
        }
        ConvertTo::Png => {
            let z = nz / 2;
            let img = vol.slice(z, 0)?;
            let view = raster::to_u8_view(&img, window)?;
            raster::write_png8(&a.output, img.width, img.height, 1, &view)?;
            if nz > 1 || nt > 1 {
                eprintln!("note: PNG shows slice {z} of {nz} (phase 0 of {nt})");
            }
        }
    }
    eprintln!(
        "wrote {} ({} x {} x {}{} voxels, spacing {:.3} x {:.3} x {:.3} mm)",
        a.output.display(),
        nx,
        ny,
        nz,
        if nt > 1 {
            format!(" x {nt}")
        } else {
            String::new()
        },
        spacing[0],
        spacing[1],
        spacing[2]
    );
    Ok(())
}

#[derive(Args)]
pub struct BenchIoArgs {
    /// What to measure: `cxr` (PATH = a PNG / DICOM radiograph: decode, to gray, MONOCHROME2,
    /// centre crop, area resize to 224 x 224, TorchXRayVision normalization, NCHW tensor) or
    /// `ct` (PATH = a series folder: scan headers, order, decode and assemble every slice on all
    /// usable cores, window to [0, 1]).
    pub task: String,
    /// The file or folder.
    pub path: PathBuf,
    /// Timed repetitions (after one untimed warm-up).
    #[arg(long, value_parser = crate::at_least_one(), default_value_t = 20)]
    pub runs: usize,
    /// Window for `ct` as CENTER,WIDTH in HU.
    #[arg(long, default_value = "40,400")]
    pub window: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct IoBench {
    task: String,
    path: String,
    cores: usize,
    runs: usize,
    /// Mean milliseconds per stage.
    stages_ms: Vec<(String, f64)>,
    total_ms: StatsMs,
}

#[derive(serde::Serialize)]
struct StatsMs {
    mean: f64,
    std: f64,
    min: f64,
    p50: f64,
}

fn stats(v: &[f64]) -> StatsMs {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    StatsMs {
        mean,
        std,
        min: s[0],
        p50: s[s.len() / 2],
    }
}

pub fn cmd_bench_io(a: BenchIoArgs) -> Result<()> {
    use medinfer_core::preprocess::{self, Filter};
    use std::time::Instant;
    let (wc, ww) = parse_window(&a.window)?;
    let mut stage_sum: Vec<(String, f64)> = Vec::new();
    let mut totals = Vec::new();
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    for rep in 0..=a.runs {
        let mut stages: Vec<(&str, f64)> = Vec::new();
        let t0 = Instant::now();
        match a.task.as_str() {
            "cxr" => {
                let t = Instant::now();
                let img = medinfer_io::read_images(&a.path)?.remove(0);
                stages.push(("decode", ms(t)));
                let t = Instant::now();
                let maxv = img.value_range.1;
                let img = img.to_monochrome2().to_gray();
                let img = preprocess::center_crop_square(&img);
                let mut img = preprocess::resize(&img, 224, 224, Filter::Area)?;
                preprocess::xrv_normalize(&mut img.data, maxv)?;
                let tensor = img.to_tensor();
                stages.push(("preprocess", ms(t)));
                std::hint::black_box(tensor);
            }
            "ct" => {
                let t = Instant::now();
                let mut vol = medinfer_io::series::read_series(&a.path)?;
                stages.push(("read + assemble", ms(t)));
                let t = Instant::now();
                preprocess::window(&mut vol.data, wc, ww, 0.0, 1.0)?;
                stages.push(("window", ms(t)));
                std::hint::black_box(vol);
            }
            other => bail!("bench-io task {other}: expected cxr or ct"),
        }
        let total = ms(t0);
        if rep == 0 {
            stage_sum = stages.iter().map(|(n, _)| (n.to_string(), 0.0)).collect();
            continue; // warm-up (page cache, allocator)
        }
        totals.push(total);
        for (acc, (_, v)) in stage_sum.iter_mut().zip(&stages) {
            acc.1 += v / a.runs as f64;
        }
    }
    let r = IoBench {
        task: a.task.clone(),
        path: a.path.display().to_string(),
        cores: medinfer_core::usable_cores(),
        runs: a.runs,
        stages_ms: stage_sum,
        total_ms: stats(&totals),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} {} on {} core(s), {} runs",
            r.task, r.path, r.cores, r.runs
        );
        for (n, v) in &r.stages_ms {
            println!("  {n:<16} {v:>9.2} ms");
        }
        println!(
            "  {:<16} {:>9.2} ms (std {:.2}, min {:.2})",
            "total", r.total_ms.mean, r.total_ms.std, r.total_ms.min
        );
    }
    Ok(())
}
