//! `medinfer convert`: a DICOM series (or any supported image) to NIfTI, NPY or a PNG view.

use crate::args::parse_window;
use anyhow::{bail, Result};
use clap::Args;
use medinfer_core::{Tensor, Volume};
use medinfer_io::{nifti, npy, raster};
use std::path::PathBuf;

#[derive(Args)]
pub struct ConvertArgs {
    /// A DICOM series folder or file, NIfTI, PNG or JPEG file.
    pub input: PathBuf,
    /// Output file; the format follows the extension. From one image file (DICOM, PNG, JPEG):
    /// .npy holds every frame as stored, float32 (frames, rows, columns) or (frames, rows,
    /// columns, 3) for colour; .png a view of the middle frame (colour kept); .nii / .nii.gz the
    /// volume it assembles to (gray) or RGB24 frames (8-bit colour). From a folder (a DICOM
    /// series) or NIfTI: the volume, source geometry kept (.npy (t, z, y, x)).
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

enum ConvertTo {
    Nifti(nifti::NiftiDtype),
    Npy,
    Png,
}

pub fn run(a: ConvertArgs) -> Result<()> {
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
    // A single image file converts to its frames as stored (every frame, colour kept); a
    // folder (a DICOM series) and NIfTI to a volume.
    let single = a.input.is_file()
        && matches!(
            medinfer_io::detect(&a.input)?,
            Some(medinfer_io::Format::Dicom | medinfer_io::Format::Png | medinfer_io::Format::Jpeg)
        );
    if single {
        let f = medinfer_io::read_frames(&a.input)?;
        let [frames, rows, cols, ch] = f.shape;
        let colour = ch == 3;
        match to {
            ConvertTo::Npy => {
                let shape = if colour {
                    vec![frames, rows, cols, 3]
                } else {
                    vec![frames, rows, cols]
                };
                npy::write(&a.output, &Tensor::from_f32(shape, f.data)?)?;
            }
            ConvertTo::Png => {
                let k = frames / 2;
                let per = rows * cols * ch;
                let frame = &f.data[k * per..(k + 1) * per];
                if colour {
                    let hi = f.value_range.1.max(1.0);
                    let rgb: Vec<u8> = frame
                        .iter()
                        .map(|&v| (v / hi * 255.0).round().clamp(0.0, 255.0) as u8)
                        .collect();
                    raster::write_png8(&a.output, cols, rows, 3, &rgb)?;
                } else {
                    let img = medinfer_core::Image2d::gray(cols, rows, frame.to_vec())?;
                    let mut img = img;
                    img.value_range = f.value_range;
                    let view = raster::to_u8_view(&img, window)?;
                    raster::write_png8(&a.output, cols, rows, 1, &view)?;
                }
                if frames > 1 {
                    eprintln!("note: PNG shows frame {k} of {frames}");
                }
            }
            ConvertTo::Nifti(_) if colour => {
                if f.value_range.1 > 255.0 {
                    bail!(
                        "{}: colour with values up to {} does not fit NIfTI RGB24 (8 bits per channel); convert to .npy",
                        a.input.display(),
                        f.value_range.1
                    );
                }
                let mut affine = [[0.0; 4]; 4];
                affine[0][0] = f.spacing[1];
                affine[1][1] = f.spacing[0];
                affine[2][2] = 1.0;
                affine[3][3] = 1.0;
                // NIfTI order: x fastest (columns), then rows, then frames.
                nifti::write_rgb24(&a.output, [cols, rows, frames], &affine, &f.data)?;
            }
            ConvertTo::Nifti(_) => {}
        }
        if !matches!(to, ConvertTo::Nifti(_)) || colour {
            eprintln!(
                "wrote {} ({frames} frame(s) of {cols} x {rows}{})",
                a.output.display(),
                if colour { " RGB" } else { "" }
            );
            return Ok(());
        }
    }
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
