//! `medinfer inspect`: what image files and folders hold (DICOM series and how they assemble,
//! NIfTI, PNG, JPEG), never a patient-identifying attribute.

use anyhow::Result;
use clap::Args;
use medinfer_io::inspect;
use std::path::PathBuf;

#[derive(Args)]
pub struct InspectArgs {
    /// A file (DICOM, NIfTI, PNG, JPEG, NPY) or a folder, searched recursively.
    pub path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InspectArgs) -> Result<()> {
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
