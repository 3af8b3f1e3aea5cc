//! CT slice tagging over whole archives: every series found is tagged, streamed slice by slice,
//! one result per series (or per unreadable file), a resumable JSON-lines file, shards.

use super::{plan, tag_series, CtReport, Planned};
use crate::resume::{self, Shard};
use crate::PipelineError;
use medinfer_engine::Session;
use std::io::Write;
use std::path::PathBuf;

/// An archive of CT series to tag.
#[derive(Clone, Debug)]
pub struct CtBatchRequest {
    /// Folders (searched recursively) or files; non-DICOM files are ignored.
    pub inputs: Vec<PathBuf>,
    /// Slice normalisation (HU window) and model input size.
    pub prep: super::CtPrep,
    /// Region names in the model's output order.
    pub regions: Vec<String>,
    /// Decode / preprocess workers.
    pub decoders: usize,
    /// A note carried by every result (e.g. that the weights are untrained).
    pub note: String,
    /// Resumable JSON-lines file: results are appended, series already in it are skipped.
    pub jsonl: Option<PathBuf>,
    /// Only this shard's series (by Series Instance UID; unreadable files by path).
    pub shard: Option<Shard>,
}

/// One series' (or one unreadable file's) result.
#[derive(Clone, Debug)]
pub struct CtRecord {
    /// The resume / shard key: the Series Instance UID, or the file's path for an unreadable
    /// file, or the error for a series that could not be ordered.
    pub key: String,
    /// The JSON-lines object written for it.
    pub json: serde_json::Value,
    /// The report, or why there is none.
    pub outcome: Result<Box<CtReport>, String>,
    /// The unreadable file, for a file-level error.
    pub file: Option<String>,
}

impl CtRecord {
    /// Lines for people: the series, its size and speed, its region ranges; or its error.
    pub fn summary_text(&self) -> String {
        match (&self.outcome, &self.file) {
            (Ok(r), _) => {
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
                        s.region, s.slices[0], s.slices[1], s.positions_mm[0], s.positions_mm[1]
                    ));
                }
                human
            }
            (Err(e), Some(file)) => format!("{file}: error: {e}"),
            (Err(e), None) => format!("error: {e}"),
        }
    }
}

/// What a batch did.
#[derive(Clone, Copy, Debug, Default)]
pub struct CtSummary {
    /// Series tagged.
    pub ok: usize,
    /// Series (or files) that failed.
    pub failed: usize,
    /// Slices tagged.
    pub slices: usize,
    /// Wall time of the tagging, seconds.
    pub seconds: f64,
}

/// An archive ready to tag: series found and ordered from their headers, resume and shard
/// applied.
pub struct CtBatch {
    request: CtBatchRequest,
    plans: Vec<Planned>,
    rejected: Vec<(PathBuf, String)>,
    /// Series and files skipped because the JSON-lines file already holds them.
    pub already_done: usize,
    sink: Option<std::fs::File>,
}

fn key(r: &Planned) -> String {
    match r {
        Ok(p) => p.uid.clone(),
        Err(e) => e.clone(),
    }
}

impl CtBatch {
    /// Finds and orders the series (headers only), drops those of other shards and those the
    /// JSON-lines file already holds, and opens it for appending.
    pub fn open(request: CtBatchRequest) -> Result<CtBatch, PipelineError> {
        let mut files = Vec::new();
        for p in &request.inputs {
            files.extend(medinfer_io::series::list_files(p)?);
        }
        files.sort();
        files.dedup();
        let (mut plans, mut rejected) = plan(&files);
        if plans.is_empty() && rejected.is_empty() {
            return Err(PipelineError::input(
                request
                    .inputs
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                "no DICOM series found",
            ));
        }
        // A single series named directly keeps the name it was given.
        if let ([one], [Ok(p)]) = (request.inputs.as_slice(), plans.as_mut_slice()) {
            p.input = one.display().to_string();
        }
        if let Some(s) = request.shard {
            plans.retain(|p| s.contains(&key(p)));
            rejected.retain(|(f, _)| s.contains(&f.display().to_string()));
        }
        let mut already_done = 0;
        let mut sink = None;
        if let Some(path) = &request.jsonl {
            let done = resume::jsonl_done(path, "key")?;
            let before = plans.len() + rejected.len();
            plans.retain(|p| !done.contains(&key(p)));
            rejected.retain(|(f, _)| !done.contains(&f.display().to_string()));
            already_done = before - plans.len() - rejected.len();
            sink = Some(resume::open_append(path, None)?);
        }
        Ok(CtBatch {
            request,
            plans,
            rejected,
            already_done,
            sink,
        })
    }

    /// Series and files left to report.
    pub fn remaining(&self) -> usize {
        self.plans.len() + self.rejected.len()
    }

    /// Slices to tag.
    pub fn slices(&self) -> usize {
        self.plans
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .map(|p| p.dims[2])
            .sum()
    }

    /// Tags every series on `session`, streaming, in order: unreadable files first, then each
    /// series (or the reason it could not be tagged). Each result is appended to the
    /// JSON-lines file and handed to `on_record`; `on_slice` is called after every slice.
    pub fn run(
        mut self,
        session: &Session,
        mut on_slice: impl FnMut(),
        mut on_record: impl FnMut(&CtRecord),
    ) -> Result<CtSummary, PipelineError> {
        let req = &self.request;
        let note = req.note.as_str();
        let (mut ok, mut failed, mut slices) = (0usize, 0usize, 0usize);
        let mut write_error: Option<std::io::Error> = None;
        let sink = &mut self.sink;
        let mut emit = |rec: CtRecord, on_record: &mut dyn FnMut(&CtRecord)| {
            if let Some(f) = sink.as_mut() {
                if let Err(e) = writeln!(f, "{}", rec.json).and_then(|_| f.flush()) {
                    write_error.get_or_insert(e);
                }
            }
            on_record(&rec);
        };
        for (f, e) in &self.rejected {
            failed += 1;
            let file = f.display().to_string();
            let json = serde_json::json!({"key": file, "file": file, "status": "error", "error": e, "note": note});
            emit(
                CtRecord {
                    key: file.clone(),
                    json,
                    outcome: Err(e.clone()),
                    file: Some(file),
                },
                &mut on_record,
            );
        }
        let t0 = std::time::Instant::now();
        let plans = &self.plans;
        tag_series(
            plans,
            session,
            &req.prep,
            &req.regions,
            req.decoders.max(1),
            || {
                slices += 1;
                on_slice()
            },
            |k, r| {
                let k = key(&plans[k]);
                let (json, outcome) = match r {
                    Ok(r) => {
                        ok += 1;
                        let json = serde_json::json!({
                            "key": k, "series_uid": r.series_uid, "input": r.input,
                            "status": "ok", "report": r, "note": note,
                        });
                        (json, Ok(Box::new(r)))
                    }
                    Err(e) => {
                        failed += 1;
                        let json = serde_json::json!({"key": k, "status": "error", "error": e, "note": note});
                        (json, Err(e))
                    }
                };
                emit(
                    CtRecord {
                        key: k,
                        json,
                        outcome,
                        file: None,
                    },
                    &mut on_record,
                );
            },
        )?;
        let seconds = t0.elapsed().as_secs_f64();
        if let (Some(e), Some(path)) = (write_error, &req.jsonl) {
            return Err(PipelineError::Output {
                path: path.display().to_string(),
                reason: format!("writing results: {e}"),
            });
        }
        Ok(CtSummary {
            ok,
            failed,
            slices,
            seconds,
        })
    }
}
