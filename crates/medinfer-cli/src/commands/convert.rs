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
