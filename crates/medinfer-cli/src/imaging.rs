//! `medinfer inspect` and `medinfer convert`: the image I/O commands.

use anyhow::{bail, Context, Result};
use clap::Args;
use medinfer_core::{Tensor, Volume};
use medinfer_io::{inspect, nifti, npy, raster};
use std::path::{Path, PathBuf};

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

fn parse_window(s: &str) -> Result<(f64, f64)> {
    let (c, w) = s.split_once(',').context("--window takes CENTER,WIDTH")?;
    let c: f64 = c
        .trim()
        .parse()
        .context("--window centre is not a number")?;
    let w: f64 = w.trim().parse().context("--window width is not a number")?;
    if !(w >= 1.0) {
        bail!("--window width must be >= 1, got {w}");
    }
    Ok((c, w))
}

pub fn cmd_convert(a: ConvertArgs) -> Result<()> {
    let out = a.output.to_string_lossy().to_ascii_lowercase();
    let window = a.window.as_deref().map(parse_window).transpose()?;
    let vol: Volume = medinfer_io::read_volume(&a.input)?;
    let [nx, ny, nz, nt] = vol.dims;
    if out.ends_with(".nii") || out.ends_with(".nii.gz") {
        let dt = match a.dtype.as_str() {
            "f32" | "float32" => nifti::NiftiDtype::F32,
            "i16" | "int16" => nifti::NiftiDtype::I16,
            "u8" | "uint8" => nifti::NiftiDtype::U8,
            d => bail!("--dtype {d}: expected f32, i16 or u8"),
        };
        nifti::write(&a.output, &vol, dt)?;
    } else if out.ends_with(".npy") {
        let shape = if nt > 1 {
            vec![nt, nz, ny, nx]
        } else if nz > 1 {
            vec![nz, ny, nx]
        } else {
            vec![ny, nx]
        };
        let t = Tensor::from_f32(shape, vol.data.clone())?;
        npy::write(&a.output, &t)?;
    } else if out.ends_with(".png") {
        let z = nz / 2;
        let img = vol.slice(z, 0)?;
        let view = raster::to_u8_view(&img, window)?;
        raster::write_png8(&a.output, img.width, img.height, 1, &view)?;
        if nz > 1 || nt > 1 {
            eprintln!("note: PNG shows slice {z} of {nz} (phase 0 of {nt})");
        }
    } else {
        bail!(
            "{}: unknown output format (use .nii, .nii.gz, .npy or .png)",
            a.output.display()
        );
    }
    eprintln!(
        "wrote {} ({} x {} x {}{} voxels, spacing {:.3} x {:.3} x {:.3} mm)",
        display(&a.output),
        nx,
        ny,
        nz,
        if nt > 1 {
            format!(" x {nt}")
        } else {
            String::new()
        },
        vol.spacing[0],
        vol.spacing[1],
        vol.spacing[2]
    );
    Ok(())
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
