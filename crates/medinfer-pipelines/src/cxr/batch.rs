//! Chest X-ray classification over files and folders, in batch: results in input order,
//! per-file errors, a resumable CSV, deterministic shards.

use super::{preprocess_file_with, scores, CxrPrep};
use crate::resume::{self, Shard};
use crate::PipelineError;
use medinfer_engine::Session;
use std::io::Write;
use std::path::PathBuf;

/// Every image file under `inputs`, in order: explicit files always; folder contents (searched
/// recursively, hidden entries skipped) when their content is PNG, JPEG or DICOM, sorted.
pub fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, PipelineError> {
    let os = |p: &std::path::Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| PipelineError::Io(medinfer_io::IoError::Os { path: p, source: e })
    };
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            let mut found = Vec::new();
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).map_err(os(&d))? {
                    let path = e.map_err(os(&d))?.path();
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
            return Err(PipelineError::input(
                p.display().to_string(),
                "no such file or folder",
            ));
        }
    }
    Ok(out)
}

/// A batch of radiographs to classify.
#[derive(Clone, Debug, Default)]
pub struct CxrBatchRequest {
    /// Files and folders (see [`collect_inputs`]).
    pub inputs: Vec<PathBuf>,
    /// Label names in the model's output order.
    pub labels: Vec<String>,
    /// Operating thresholds, one per label (TorchXRayVision's `op_threshs`).
    pub thresholds: Option<Vec<f32>>,
    /// Decode / preprocess workers.
    pub decoders: usize,
    /// A note carried by every result (e.g. that the weights are untrained).
    pub note: String,
    /// Resumable CSV: results are appended, files already in it are skipped.
    pub csv: Option<PathBuf>,
    /// Only this shard's files.
    pub shard: Option<Shard>,
    /// Size, normalisation and resize of each radiograph (TorchXRayVision-exact by default).
    pub prep: CxrPrep,
}

/// One file's result.
#[derive(Clone, Debug)]
pub struct CxrRecord {
    /// The file, as listed.
    pub file: String,
    /// A score per label, or why the file could not be classified.
    pub scores: Result<Vec<f32>, String>,
}

impl CxrRecord {
    /// The JSON-lines object: `{file, status, scores: {label: score}, note}` or `{file,
    /// status: "error", error, note}`.
    pub fn to_json(&self, labels: &[String], note: &str) -> serde_json::Value {
        match &self.scores {
            Ok(s) => serde_json::json!({
                "file": self.file, "status": "ok",
                "scores": labels.iter().zip(s).map(|(l, v)| (l.clone(), serde_json::json!(v))).collect::<serde_json::Map<String, serde_json::Value>>(),
                "note": note,
            }),
            Err(e) => {
                serde_json::json!({"file": self.file, "status": "error", "error": e, "note": note})
            }
        }
    }

    /// The CSV row (see [`csv_header`]).
    pub fn csv_row(&self, labels: &[String], note: &str) -> String {
        let mut row = vec![resume::csv_field(&self.file)];
        match &self.scores {
            Ok(s) => {
                row.push("ok".into());
                row.extend(s.iter().map(|v| format!("{v:.6}")));
                row.push(String::new());
            }
            Err(e) => {
                row.push("error".into());
                row.extend(labels.iter().map(|_| String::new()));
                row.push(resume::csv_field(e));
            }
        }
        row.push(resume::csv_field(note));
        row.join(",")
    }

    /// One line for people: the file and its three highest scores, or its error.
    pub fn summary_line(&self, labels: &[String]) -> String {
        match &self.scores {
            Ok(s) => {
                let mut idx: Vec<usize> = (0..s.len()).collect();
                idx.sort_by(|&x, &y| s[y].total_cmp(&s[x]));
                let top: Vec<String> = idx
                    .iter()
                    .take(3)
                    .map(|&k| format!("{} {:.3}", labels[k], s[k]))
                    .collect();
                format!("{}: {}", self.file, top.join(", "))
            }
            Err(e) => format!("{}: error: {e}", self.file),
        }
    }
}

/// The CSV header: `file,status,<labels...>,error,note`.
pub fn csv_header(labels: &[String]) -> String {
    let mut header = vec!["file".to_string(), "status".into()];
    header.extend(labels.iter().map(|l| resume::csv_field(l)));
    header.push("error".into());
    header.push("note".into());
    header.join(",")
}

/// What a batch did.
#[derive(Clone, Copy, Debug, Default)]
pub struct CxrSummary {
    /// Files classified.
    pub ok: usize,
    /// Files that failed (each reported with its error).
    pub failed: usize,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// A batch ready to run: its files listed, the resumable CSV opened and read back.
pub struct CxrBatch {
    request: CxrBatchRequest,
    /// The files still to classify, in order.
    pub files: Vec<PathBuf>,
    /// Files skipped because the CSV already holds them.
    pub already_done: usize,
    csv: Option<std::fs::File>,
}

impl CxrBatch {
    /// Lists the files (this shard's, minus those the CSV already holds) and opens the CSV.
    pub fn open(request: CxrBatchRequest) -> Result<CxrBatch, PipelineError> {
        let mut files = collect_inputs(&request.inputs)?;
        if let Some(s) = request.shard {
            files.retain(|f| s.contains(&f.display().to_string()));
        }
        let mut already_done = 0;
        let mut csv = None;
        if let Some(path) = &request.csv {
            let done = resume::csv_done(path)?;
            let before = files.len();
            files.retain(|f| !done.contains(&f.display().to_string()));
            already_done = before - files.len();
            csv = Some(resume::open_append(
                path,
                Some(&csv_header(&request.labels)),
            )?);
        }
        Ok(CxrBatch {
            request,
            files,
            already_done,
            csv,
        })
    }

    /// Classifies every file on `session` (decoders and engine streams in parallel), appending
    /// each result to the CSV and handing it to `on_record`, in input order.
    pub fn run(
        mut self,
        session: &Session,
        mut on_record: impl FnMut(&CxrRecord),
    ) -> Result<CxrSummary, PipelineError> {
        let t0 = std::time::Instant::now();
        let req = &self.request;
        let (mut ok, mut failed) = (0usize, 0usize);
        let mut write_error: Option<std::io::Error> = None;
        let files = &self.files;
        let csv = &mut self.csv;
        let prep = req.prep;
        crate::batch::run_ordered(
            files,
            session,
            req.decoders.max(1),
            |f: &PathBuf| preprocess_file_with(f, prep).map_err(|e| e.to_string()),
            |i, r| {
                let rec = CxrRecord {
                    file: files[i].display().to_string(),
                    scores: r.map(|logits| scores(&logits, req.thresholds.as_deref())),
                };
                match &rec.scores {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
                if let Some(f) = csv.as_mut() {
                    let w = writeln!(f, "{}", rec.csv_row(&req.labels, &req.note))
                        .and_then(|_| f.flush());
                    if let Err(e) = w {
                        write_error.get_or_insert(e);
                    }
                }
                on_record(&rec);
            },
        )?;
        if let (Some(e), Some(path)) = (write_error, &req.csv) {
            return Err(PipelineError::Output {
                path: path.display().to_string(),
                reason: format!("writing results: {e}"),
            });
        }
        Ok(CxrSummary {
            ok,
            failed,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }
}
