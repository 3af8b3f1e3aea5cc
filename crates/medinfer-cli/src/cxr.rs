//! `medinfer run cxr`: chest X-ray classification over files and folders, in batch.

use anyhow::{bail, Context, Result};
use clap::Args;
use medinfer_pipelines::{batch, cxr};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct RunCxrArgs {
    /// Radiographs (PNG 8 / 16-bit, JPEG, DICOM) or folders of them (searched recursively,
    /// files recognised by content; processed in sorted order).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Classifier: ONNX taking (batch, 1, 224, 224) TorchXRayVision-normalised images and giving
    /// one logit per label. Default: the zoo densenet121-cxr, whose weights are UNTRAINED (every
    /// output says so).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Label names in output order: xrv (TorchXRayVision's 18), padchest (its 28), or a file
    /// with one label per line.
    #[arg(long, default_value = "xrv")]
    pub labels: String,
    /// Operating thresholds, one per label in label order (TorchXRayVision's op_threshs: each
    /// threshold is mapped to a score of 0.5; nan = none).
    #[arg(long)]
    pub thresholds: Option<PathBuf>,
    /// Backend: tract, ort, openvino or auto (the fastest available).
    #[arg(short, long, default_value = "auto")]
    pub backend: String,
    /// fp32, or int8 (the zoo model quantized and cached; with --model, give an INT8 file).
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// Images per inference request.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Decode / preprocess workers (default: one per core).
    #[arg(long)]
    pub decoders: Option<usize>,
    /// Print one JSON object per image (JSON lines) instead of a table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Append results to this CSV (created with a header). Files already in it are skipped, so
    /// an interrupted run resumes where it stopped.
    #[arg(long)]
    pub csv: Option<PathBuf>,
}

/// Every image file under `inputs`, in order (explicit files always; folder contents when
/// their content is PNG, JPEG or DICOM).
pub fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            let mut found = Vec::new();
            while let Some(d) = stack.pop() {
                for e in
                    std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?
                {
                    let path = e?.path();
                    if path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('.'))
                    {
                        continue;
                    }
                    if path.is_dir() {
                        stack.push(path);
                    } else if matches!(
                        medinfer_io::detect(&path),
                        Ok(Some(
                            medinfer_io::Format::Png
                                | medinfer_io::Format::Jpeg
                                | medinfer_io::Format::Dicom
                        ))
                    ) {
                        found.push(path);
                    }
                }
            }
            found.sort();
            out.extend(found);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            bail!("{}: no such file or folder", p.display());
        }
    }
    Ok(out)
}

/// Files already recorded in `csv` (its first column). A last line without its newline (an
/// interrupted write) is cut off so that the file is whole again.
fn finished_files(csv: &Path) -> Result<std::collections::HashSet<String>> {
    let mut done = std::collections::HashSet::new();
    let Ok(bytes) = std::fs::read(csv) else {
        return Ok(done);
    };
    let whole = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    if whole < bytes.len() {
        let f = std::fs::OpenOptions::new().write(true).open(csv)?;
        f.set_len(whole as u64)
            .with_context(|| format!("repairing {}", csv.display()))?;
    }
    for line in bytes[..whole].lines().skip(1) {
        let line = line?;
        if let Some(first) = split_csv_first(&line) {
            done.insert(first);
        }
    }
    Ok(done)
}

fn split_csv_first(line: &str) -> Option<String> {
    if let Some(rest) = line.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    out.push('"');
                    chars.next();
                } else {
                    return Some(out);
                }
            } else {
                out.push(c);
            }
        }
        None
    } else {
        line.split(',').next().map(String::from)
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Ends a batch: clears the progress bar, then reports the first failed write of results.
fn finish(bar: &indicatif::ProgressBar, io_error: Option<std::io::Error>) -> Result<()> {
    bar.finish_and_clear();
    match io_error {
        Some(e) => Err(e).context("writing results"),
        None => Ok(()),
    }
}

pub fn cmd_run_cxr(a: RunCxrArgs) -> Result<()> {
    let labels = cxr::read_labels(&a.labels)?;
    let thresholds = match &a.thresholds {
        Some(p) => Some(cxr::read_thresholds(p, labels.len())?),
        None => None,
    };
    let untrained = a.model.is_none();
    let model = match (&a.model, a.precision.as_str()) {
        (Some(m), _) => m.clone(),
        (None, "fp32") => crate::resolve_model("densenet121-cxr")?,
        (None, "int8") => crate::quant::cached_zoo_int8("densenet121-cxr")?,
        (None, p) => bail!("unknown precision '{p}' (fp32, int8)"),
    };
    let note = if untrained {
        "UNTRAINED zoo weights (densenet121-cxr): the scores are meaningless; pass --model"
    } else {
        ""
    };
    let opts = medinfer_engine::SessionOptions {
        mode: medinfer_engine::Mode::Throughput,
        batch: Some(a.batch.max(1)),
        ..Default::default()
    };
    let session = medinfer_engine::load(&a.backend, &model, &opts)
        .with_context(|| format!("loading {}", model.display()))?;
    let out_len = session
        .outputs()
        .first()
        .map(|o| o.shape.get(1).copied().unwrap_or(0));
    if let Some(n) = out_len.filter(|&n| n != 0 && n != labels.len()) {
        bail!(
            "{}: the model gives {n} scores, the label set has {}",
            model.display(),
            labels.len()
        );
    }
    let mut files = collect_inputs(&a.inputs)?;
    let mut csv = None;
    if let Some(path) = &a.csv {
        let done = finished_files(path)?;
        let before = files.len();
        files.retain(|f| !done.contains(&f.display().to_string()));
        if before > files.len() {
            eprintln!(
                "{}: {} file(s) already done, {} to go",
                path.display(),
                before - files.len(),
                files.len()
            );
        }
        let new = !path.exists() || std::fs::metadata(path)?.len() == 0;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        if new {
            let mut header = vec!["file".to_string(), "status".into()];
            header.extend(labels.iter().map(|l| csv_field(l)));
            header.push("error".into());
            header.push("note".into());
            writeln!(f, "{}", header.join(","))?;
        }
        csv = Some(f);
    }
    if untrained && !a.json && csv.is_none() {
        eprintln!("note: {note}");
    }
    let bar = crate::quant::bar(files.len(), "images", a.json || files.len() < 2);
    let decoders = a.decoders.unwrap_or_else(medinfer_core::usable_cores);
    let t0 = std::time::Instant::now();
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut io_error: Option<std::io::Error> = None;
    batch::run_ordered(
        &files,
        &session,
        decoders,
        |f: &PathBuf| cxr::preprocess_file(f).map_err(|e| e.to_string()),
        |i, r| {
            let file = files[i].display().to_string();
            let scored = r.map(|logits| cxr::scores(&logits, thresholds.as_deref()));
            match &scored {
                Ok(_) => ok += 1,
                Err(_) => failed += 1,
            }
            bar.inc(1);
            let res = if let Some(f) = csv.as_mut() {
                let mut row = vec![csv_field(&file)];
                match &scored {
                    Ok(s) => {
                        row.push("ok".into());
                        row.extend(s.iter().map(|v| format!("{v:.6}")));
                        row.push(String::new());
                    }
                    Err(e) => {
                        row.push("error".into());
                        row.extend(labels.iter().map(|_| String::new()));
                        row.push(csv_field(e));
                    }
                }
                row.push(csv_field(note));
                writeln!(f, "{}", row.join(",")).and_then(|_| f.flush())
            } else if a.json {
                let v = match &scored {
                    Ok(s) => serde_json::json!({
                        "file": file, "status": "ok",
                        "scores": labels.iter().zip(s).map(|(l, v)| (l.clone(), serde_json::json!(v))).collect::<serde_json::Map<String, serde_json::Value>>(),
                        "note": note,
                    }),
                    Err(e) => {
                        serde_json::json!({"file": file, "status": "error", "error": e, "note": note})
                    }
                };
                writeln!(std::io::stdout(), "{v}")
            } else {
                let line = match &scored {
                    Ok(s) => {
                        let mut idx: Vec<usize> = (0..s.len()).collect();
                        idx.sort_by(|&x, &y| s[y].total_cmp(&s[x]));
                        let top: Vec<String> = idx
                            .iter()
                            .take(3)
                            .map(|&k| format!("{} {:.3}", labels[k], s[k]))
                            .collect();
                        format!("{file}: {}", top.join(", "))
                    }
                    Err(e) => format!("{file}: error: {e}"),
                };
                bar.suspend(|| writeln!(std::io::stdout(), "{line}"))
            };
            if let Err(e) = res {
                io_error.get_or_insert(e);
            }
        },
    )?;
    finish(&bar, io_error)?;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{ok} image(s) classified, {failed} failed, in {secs:.1} s ({:.1} images/s) on {} ({}){}",
        (ok + failed) as f64 / secs.max(1e-9),
        session.info().backend,
        session.info().effective_precision,
        if untrained { "; weights UNTRAINED" } else { "" }
    );
    Ok(())
}

#[derive(Args)]
pub struct RunCtArgs {
    /// DICOM CT series: folders (searched recursively; every series found is tagged, in the
    /// order of its first file's path) or files. Non-DICOM files are ignored.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Slice classifier: ONNX taking (batch, 1, 128, 128) windowed slices in [0, 1] and giving
    /// one logit per region. Default: the zoo resnet18-ct, whose weights are UNTRAINED.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Region names in output order: a file with one per line (default: head, neck, chest,
    /// abdomen, pelvis, legs).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// HU window CENTRE,WIDTH applied to every slice.
    #[arg(long, default_value = "40,400")]
    pub window: String,
    /// Backend: tract, ort, openvino or auto.
    #[arg(short, long, default_value = "auto")]
    pub backend: String,
    /// fp32, or int8 (the zoo model quantized and cached; with --model, give an INT8 file).
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// Slices per inference request.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Cores to use: inference streams (one thread each) and decode workers (default: all
    /// usable cores).
    #[arg(long)]
    pub cores: Option<usize>,
    /// Print one JSON object per series (JSON lines: the report with every slice and the
    /// summary, or the error) instead of a table.
    #[arg(long, conflicts_with = "jsonl")]
    pub json: bool,
    /// Append one JSON object per series to this file (JSON lines). Series already in it (by
    /// Series Instance UID; unreadable files by path) are skipped, so an interrupted batch
    /// resumes where it stopped. A summary table is printed as well.
    #[arg(long)]
    pub jsonl: Option<PathBuf>,
}

/// The `key` field of every whole line of the JSON-lines file `path` (none if it does not
/// exist). A last line without its newline (an interrupted write) is cut off first.
fn finished_keys_jsonl(path: &Path, key: &str) -> Result<std::collections::HashSet<String>> {
    let mut done = std::collections::HashSet::new();
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(done);
    };
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if whole < bytes.len() {
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(whole as u64)
            .with_context(|| format!("repairing {}", path.display()))?;
    }
    for (n, line) in bytes[..whole].lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).with_context(|| {
            format!(
                "{}: line {} is not JSON; not appending to it",
                path.display(),
                n + 1
            )
        })?;
        if let Some(k) = v.get(key).and_then(|k| k.as_str()) {
            done.insert(k.to_string());
        }
    }
    Ok(done)
}

pub fn cmd_run_ct(a: RunCtArgs) -> Result<()> {
    use medinfer_pipelines::ct;
    let window = crate::imaging::parse_window(&a.window)?;
    let regions: Vec<String> = match &a.labels {
        Some(p) => cxr::read_labels(&p.display().to_string())?,
        None => ct::REGIONS.iter().map(|s| s.to_string()).collect(),
    };
    let untrained = a.model.is_none();
    let model = match (&a.model, a.precision.as_str()) {
        (Some(m), _) => m.clone(),
        (None, "fp32") => crate::resolve_model("resnet18-ct")?,
        (None, "int8") => crate::quant::cached_zoo_int8("resnet18-ct")?,
        (None, p) => bail!("unknown precision '{p}' (fp32, int8)"),
    };
    let note = if untrained {
        "UNTRAINED zoo weights (resnet18-ct): the regions are meaningless; pass --model"
    } else {
        ""
    };
    let cores = a.cores.unwrap_or_else(medinfer_core::usable_cores).max(1);
    let opts = medinfer_engine::SessionOptions {
        mode: medinfer_engine::Mode::Throughput,
        batch: Some(a.batch.max(1)),
        streams: Some(cores),
        threads: Some(1),
        ..Default::default()
    };
    let session = medinfer_engine::load(&a.backend, &model, &opts)
        .with_context(|| format!("loading {}", model.display()))?;
    if let Some(n) = session
        .outputs()
        .first()
        .and_then(|o| o.shape.get(1).copied())
        .filter(|&n| n != 0 && n != regions.len())
    {
        bail!(
            "{}: the model gives {n} scores, there are {} regions",
            model.display(),
            regions.len()
        );
    }

    // Find and order the series (headers only).
    let mut files = Vec::new();
    for p in &a.inputs {
        files.extend(medinfer_io::series::list_files(p)?);
    }
    files.sort();
    files.dedup();
    let (mut plans, rejected) = ct::plan(&files);
    if plans.is_empty() && rejected.is_empty() {
        bail!(
            "{}: no DICOM series found",
            a.inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // A single series named directly keeps the name it was given.
    if let ([one], [Ok(p)]) = (a.inputs.as_slice(), plans.as_mut_slice()) {
        p.input = one.display().to_string();
    }
    let key = |r: &ct::Planned| match r {
        Ok(p) => p.uid.clone(),
        Err(e) => e.clone(),
    };
    let mut sink = None;
    let mut rejected = rejected;
    if let Some(path) = &a.jsonl {
        let done = finished_keys_jsonl(path, "key")?;
        let before = plans.len() + rejected.len();
        plans.retain(|p| !done.contains(&key(p)));
        rejected.retain(|(f, _)| !done.contains(&f.display().to_string()));
        let skipped = before - plans.len() - rejected.len();
        if skipped > 0 {
            eprintln!(
                "{}: {skipped} series / file(s) already done, {} to go",
                path.display(),
                plans.len() + rejected.len()
            );
        }
        sink = Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        );
    }
    let mut emit = |v: serde_json::Value, human: String| -> std::io::Result<()> {
        if let Some(f) = sink.as_mut() {
            writeln!(f, "{v}")?;
            f.flush()?;
            println!("{human}");
            Ok(())
        } else if a.json {
            writeln!(std::io::stdout(), "{v}")
        } else {
            writeln!(std::io::stdout(), "{human}")
        }
    };
    if untrained && !a.json {
        println!("note: {note}");
    }
    let (mut ok, mut failed, mut tagged) = (0usize, 0usize, 0usize);
    for (f, e) in &rejected {
        failed += 1;
        let file = f.display().to_string();
        emit(
            serde_json::json!({"key": file, "file": file, "status": "error", "error": e, "note": note}),
            format!("{file}: error: {e}"),
        )?;
    }
    let total: usize = plans
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .map(|p| p.dims[2])
        .sum();
    let bar = crate::quant::bar(total, "slices", a.json || total < 2);
    let t0 = std::time::Instant::now();
    let mut io_error: Option<std::io::Error> = None;
    ct::tag_series(
        &plans,
        &session,
        window,
        &regions,
        cores,
        || {
            tagged += 1;
            bar.inc(1)
        },
        |k, r| {
            let k = key(&plans[k]);
            let (v, human) = match r {
                Ok(r) => {
                    ok += 1;
                    let mut human = format!(
                        "{}: {} slices of {}x{}, tagged in {:.0} ms ({:.0} slices/s)",
                        r.input,
                        r.dims[2],
                        r.dims[0],
                        r.dims[1],
                        r.seconds[1] * 1e3,
                        r.dims[2] as f64 / r.seconds[1].max(1e-9)
                    );
                    for s in &r.summary {
                        human.push_str(&format!(
                            "\n  {:<10} slices {:>4}-{:<4} ({:.1} to {:.1} mm)",
                            s.region,
                            s.slices[0],
                            s.slices[1],
                            s.positions_mm[0],
                            s.positions_mm[1]
                        ));
                    }
                    let v = serde_json::json!({
                        "key": k, "series_uid": r.series_uid, "input": r.input,
                        "status": "ok", "report": r, "note": note,
                    });
                    (v, human)
                }
                Err(e) => {
                    failed += 1;
                    let v =
                        serde_json::json!({"key": k, "status": "error", "error": e, "note": note});
                    (v, format!("error: {e}"))
                }
            };
            if let Err(e) = bar.suspend(|| emit(v, human)) {
                io_error.get_or_insert(e);
            }
        },
    )?;
    finish(&bar, io_error)?;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{ok} series tagged ({tagged} slices), {failed} failed, in {secs:.1} s ({:.0} slices/s) on {} ({}){}",
        tagged as f64 / secs.max(1e-9),
        session.info().backend,
        session.info().effective_precision,
        if untrained { "; weights UNTRAINED" } else { "" }
    );
    if ok == 0 && failed > 0 {
        bail!("no series could be tagged ({failed} failed)");
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct StageBench {
    pipeline: &'static str,
    input: String,
    images: usize,
    cores: usize,
    backend: String,
    precision: String,
    batch: usize,
    /// CPU time per image of each stage, measured one image at a time on one core, ms.
    per_image_ms: serde_json::Value,
    /// cores / (sum of the per-image stage times): perfect overlap, no idle core.
    ideal_images_per_s: f64,
    /// The real pipeline (decoders + streams, bounded queue), median of the runs.
    end_to_end_images_per_s: f64,
    /// end to end / ideal.
    efficiency: f64,
    /// The engine alone on already preprocessed inputs, same session and batch.
    engine_only_images_per_s: f64,
    runs: usize,
}

/// `medinfer bench-pipeline cxr|ct DIR`.
pub fn bench_batch_pipeline(a: &crate::cardiac::BenchPipelineArgs) -> Result<()> {
    use crate::cardiac::BenchPipeline;
    use std::time::Instant;
    let input = a
        .input
        .clone()
        .context("bench-pipeline cxr / ct needs an input folder")?;
    let cores = a.cores.unwrap_or_else(medinfer_core::usable_cores).max(1);
    let (zoo, name) = match a.pipeline {
        BenchPipeline::Cxr => ("densenet121-cxr", "cxr"),
        _ => ("resnet18-ct", "ct"),
    };
    let prec = a
        .precision
        .split(',')
        .next()
        .unwrap_or("fp32")
        .trim()
        .to_string();
    let model = match prec.as_str() {
        "fp32" => crate::resolve_model(zoo)?,
        "int8" => crate::quant::cached_zoo_int8(zoo)?,
        p => bail!("unknown precision '{p}' (fp32, int8)"),
    };
    let backend = if a.backend == "all" {
        "auto"
    } else {
        a.backend.as_str()
    };
    let load = |streams: usize| {
        medinfer_engine::load(
            backend,
            &model,
            &medinfer_engine::SessionOptions {
                mode: medinfer_engine::Mode::Throughput,
                batch: Some(a.batch.max(1)),
                streams: Some(streams),
                threads: Some(1),
                ..Default::default()
            },
        )
        .with_context(|| format!("loading {}", model.display()))
    };
    let one = load(1)?;
    let all = load(cores)?;
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;

    // 1. One by one, one core: decode and preprocess per image, then inference per image. Two
    //    passes over the files; the second is kept, so that first-touch costs (page cache,
    //    allocator growth), which the steady-state pipeline does not pay, are not counted.
    let one_by_one = || -> Result<(f64, f64, Vec<Vec<f32>>)> {
        Ok(match a.pipeline {
            BenchPipeline::Cxr => {
                let files = collect_inputs(std::slice::from_ref(&input))?;
                if files.is_empty() {
                    bail!("{}: no radiographs", input.display());
                }
                let (mut d, mut p, mut xs) = (0.0, 0.0, Vec::new());
                medinfer_io::read_images(&files[0])?; // warm the page cache
                for f in &files {
                    let t = Instant::now();
                    let img = medinfer_io::read_images(f)?.swap_remove(0);
                    d += ms(t);
                    let t = Instant::now();
                    xs.push(cxr::preprocess_image(img)?);
                    p += ms(t);
                }
                let n = files.len() as f64;
                (d / n, p / n, xs)
            }
            _ => {
                // One file at a time on this core: decode, then window + resize.
                let files = medinfer_io::series::list_files(&input)?;
                let (mut d, mut p, mut xs) = (0.0, 0.0, Vec::new());
                for f in &files {
                    std::hint::black_box(std::fs::read(f)?); // warm the page cache
                }
                for f in &files {
                    let t = Instant::now();
                    let Ok(dcm) = medinfer_io::dicom::DicomFile::open(f) else {
                        continue; // not DICOM: the pipeline ignores it too
                    };
                    let img = dcm.images()?.swap_remove(0);
                    d += ms(t);
                    let t = Instant::now();
                    xs.push(
                        medinfer_pipelines::ct::preprocess_image(
                            img,
                            medinfer_pipelines::ct::DEFAULT_WINDOW,
                        )
                        .map_err(anyhow::Error::msg)?,
                    );
                    p += ms(t);
                }
                if xs.is_empty() {
                    bail!("{}: no DICOM slices", input.display());
                }
                let n = xs.len() as f64;
                (d / n, p / n, xs)
            }
        })
    };
    one_by_one()?;
    let (decode_ms, prep_ms, inputs) = one_by_one()?;
    let images = inputs.len();
    let engine = |s: &medinfer_engine::Session, decoders: usize| -> Result<f64> {
        let t = Instant::now();
        batch::run_ordered(
            &inputs,
            s,
            decoders,
            |x: &Vec<f32>| Ok(x.clone()),
            |_, _| {},
        )?;
        Ok(t.elapsed().as_secs_f64())
    };
    engine(&one, 1)?; // warm-up
    let infer_ms = engine(&one, 1)? * 1e3 / images as f64;
    // Post-processing of the model outputs: sigmoid + thresholds (CXR), softmax + arg-max (CT).
    let mut outputs = Vec::with_capacity(images);
    batch::run_ordered(
        &inputs,
        &one,
        1,
        |x: &Vec<f32>| Ok(x.clone()),
        |_, r| outputs.extend(r.ok()),
    )?;
    let t = Instant::now();
    for o in &outputs {
        match a.pipeline {
            BenchPipeline::Cxr => {
                std::hint::black_box(cxr::scores(o, None));
            }
            _ => {
                let p = medinfer_pipelines::ct::softmax(o);
                std::hint::black_box(p.iter().cloned().fold(f32::MIN, f32::max));
            }
        }
    }
    let post_ms = ms(t) / outputs.len().max(1) as f64;
    let ideal = cores as f64 / ((decode_ms + prep_ms + infer_ms + post_ms) / 1e3);

    // 2. The real pipeline and the engine alone, interleaved.
    let mut e2e = Vec::new();
    let mut eng = Vec::new();
    for round in 0..=a.runs {
        let t = Instant::now();
        match a.pipeline {
            BenchPipeline::Cxr => {
                let files = collect_inputs(std::slice::from_ref(&input))?;
                let mut failed = 0;
                batch::run_ordered(
                    &files,
                    &all,
                    cores,
                    |f: &PathBuf| cxr::preprocess_file(f).map_err(|e| e.to_string()),
                    |_, r| {
                        if let Ok(l) = r {
                            std::hint::black_box(cxr::scores(&l, None));
                        } else {
                            failed += 1;
                        }
                    },
                )?;
                if failed > 0 {
                    bail!("{failed} file(s) failed");
                }
            }
            _ => {
                let regions: Vec<String> = medinfer_pipelines::ct::REGIONS
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                medinfer_pipelines::ct::run(
                    &input,
                    &all,
                    medinfer_pipelines::ct::DEFAULT_WINDOW,
                    &regions,
                    cores,
                )?;
            }
        }
        let e = t.elapsed().as_secs_f64();
        let g = engine(&all, cores)?;
        if round > 0 {
            e2e.push(images as f64 / e);
            eng.push(images as f64 / g);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        v[v.len() / 2]
    };
    let e2e = med(&mut e2e);
    let r = StageBench {
        pipeline: name,
        input: input.display().to_string(),
        images,
        cores,
        backend: all.info().backend.name().into(),
        precision: all.info().effective_precision.clone(),
        batch: a.batch,
        per_image_ms: serde_json::json!({
            "decode": decode_ms, "preprocess": prep_ms, "inference": infer_ms,
            "postprocess": post_ms,
        }),
        ideal_images_per_s: ideal,
        end_to_end_images_per_s: e2e,
        efficiency: e2e / ideal,
        engine_only_images_per_s: med(&mut eng),
        runs: a.runs,
    };
    if a.json {
        return crate::print_json(&r);
    }
    println!(
        "{} {} ({} images) on {} core(s), {} {}, batch {}, {} runs",
        r.pipeline, r.input, r.images, r.cores, r.backend, r.precision, r.batch, r.runs
    );
    println!(
        "  per image, one core: decode {decode_ms:.2} ms, preprocess {prep_ms:.2} ms, inference {infer_ms:.2} ms, postprocess {post_ms:.4} ms"
    );
    println!(
        "  ideal {:.1} images/s, end to end {:.1} images/s ({:.0} % of ideal), engine alone {:.1} images/s",
        r.ideal_images_per_s,
        r.end_to_end_images_per_s,
        100.0 * r.efficiency,
        r.engine_only_images_per_s
    );
    Ok(())
}
