//! The phantom cohort on disk and how well a group ICA recovers its networks. This is for
//! evaluation: the pipeline never reads the truth.
//!
//! Cohort layout (`medinfer phantom fmri -o DIR`):
//!
//! | file | what |
//! |---|---|
//! | `sub-NN.nii.gz` | the 4D data, int16, TR 2 s |
//! | `truth/mask.nii.gz` | the brain mask the data was drawn in |
//! | `truth/maps.nii.gz` | the template map of every source (4D, one volume per source) |
//! | `truth/sub-NN_maps.nii.gz` | the subject's own (shifted) maps |
//! | `truth/sub-NN_timecourses.tsv` | the subject's source time courses |
//! | `truth/sources.json` | sources (label, anatomy, blobs), cohort settings, per-subject shifts and amplitudes |

use super::phantom::{self, CohortSpec, PhantomSubject, SOURCES};
use super::{correlation, UNMATCHED};
use crate::PipelineError;
use medinfer_core::Volume;
use medinfer_io::nifti::{self, NiftiDtype};
use serde::Serialize;
use std::path::{Path, PathBuf};

fn grid_volume(frames: &[Vec<f32>]) -> Volume {
    let [nx, ny, nz] = phantom::DIMS;
    let data: Vec<f32> = frames.iter().flatten().copied().collect();
    let mut v = Volume::new(
        [nx, ny, nz, frames.len()],
        data,
        [phantom::VOXEL_MM, phantom::VOXEL_MM, phantom::VOXEL_MM, 0.0],
    )
    .expect("frames on the grid");
    v.affine = phantom::affine();
    v
}

/// The subject file name of subject `i` (0-based).
pub fn subject_name(i: usize) -> String {
    format!("sub-{:02}", i + 1)
}

/// Writes the cohort `spec` into `dir` (layout above); `progress(done, total)` per subject.
pub fn write_cohort(
    dir: &Path,
    spec: &CohortSpec,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<PathBuf>, PipelineError> {
    let truth = dir.join("truth");
    std::fs::create_dir_all(&truth).map_err(|e| PipelineError::output(&truth, e))?;
    let mask = phantom::brain_mask();
    let template: Vec<Vec<f32>> = SOURCES
        .iter()
        .map(|s| phantom::source_map(s, [0.0; 3], &mask))
        .collect();
    nifti::write(
        truth.join("maps.nii.gz"),
        &grid_volume(&template),
        NiftiDtype::F32,
    )?;
    let m: Vec<f32> = mask.iter().map(|&b| b as u8 as f32).collect();
    nifti::write(
        truth.join("mask.nii.gz"),
        &grid_volume(&[m]),
        NiftiDtype::U8,
    )?;
    let mut files = Vec::new();
    let mut subjects = Vec::new();
    for i in 0..spec.subjects {
        progress(i, spec.subjects);
        let s: PhantomSubject = phantom::subject(spec, i);
        let name = subject_name(i);
        let f = dir.join(format!("{name}.nii.gz"));
        nifti::write(&f, &s.data, NiftiDtype::I16)?;
        nifti::write(
            truth.join(format!("{name}_maps.nii.gz")),
            &grid_volume(&s.maps),
            NiftiDtype::F32,
        )?;
        let mut tsv = SOURCES
            .iter()
            .map(|s| s.label)
            .collect::<Vec<_>>()
            .join("\t");
        tsv.push('\n');
        for n in 0..spec.volumes {
            let line: Vec<String> = s
                .timecourses
                .iter()
                .map(|c| format!("{:.6}", c[n]))
                .collect();
            tsv.push_str(&line.join("\t"));
            tsv.push('\n');
        }
        let tp = truth.join(format!("{name}_timecourses.tsv"));
        std::fs::write(&tp, tsv).map_err(|e| PipelineError::output(&tp, e))?;
        subjects.push(serde_json::json!({
            "subject": name, "shifts_mm": s.shifts_mm, "amplitudes": s.amplitudes,
        }));
        files.push(f);
    }
    progress(spec.subjects, spec.subjects);
    let js = serde_json::json!({
        "note": "synthetic resting-state phantom (medinfer phantom fmri): truth for evaluation only",
        "spec": spec,
        "tr_s": phantom::TR_S,
        "voxel_mm": phantom::VOXEL_MM,
        "sources": SOURCES,
        "subjects": subjects,
    });
    let jp = truth.join("sources.json");
    std::fs::write(&jp, serde_json::to_string_pretty(&js).expect("json"))
        .map_err(|e| PipelineError::output(&jp, e))?;
    Ok(files)
}

/// How one phantom source was recovered.
#[derive(Clone, Debug, Serialize)]
pub struct SourceRecovery {
    /// The source's label.
    pub label: String,
    /// The group component that matches it best.
    pub component: usize,
    /// |spatial correlation| of that group map with the template map.
    pub group_r: f64,
    /// Mean over subjects of the subject map's correlation with the subject's own truth map.
    pub subject_r: Option<f64>,
}

/// Recovery of a cohort's sources by a set of group maps (and optionally subject maps).
#[derive(Clone, Debug, Serialize)]
pub struct Recovery {
    /// Per source.
    pub sources: Vec<SourceRecovery>,
    /// Smallest group correlation over the ten networks.
    pub min_network_group_r: f64,
    /// Mean group correlation over the ten networks.
    pub mean_network_group_r: f64,
    /// Mean subject-map correlation over networks and subjects.
    pub mean_network_subject_r: Option<f64>,
    /// The truth label of every group component: the source it matches best at |r| >= 0.5,
    /// else `noise_other`.
    pub component_labels: Vec<String>,
}

fn frames(v: &Volume) -> Vec<&[f32]> {
    let nv = v.dims[0] * v.dims[1] * v.dims[2];
    v.data.chunks_exact(nv).collect()
}

fn masked(f: &[f32], idx: &[usize]) -> Vec<f64> {
    idx.iter().map(|&i| f[i] as f64).collect()
}

/// Scores `group_maps` (a 4D NIfTI on the phantom grid) against the cohort in `cohort`;
/// `subject_maps[i]` (optional) are subject `i`'s maps with the same component order.
pub fn recovery(
    cohort: &Path,
    group_maps: &Path,
    subject_maps: &[PathBuf],
) -> Result<Recovery, PipelineError> {
    let truth = cohort.join("truth");
    let mask = nifti::read(truth.join("mask.nii.gz"))?;
    let idx: Vec<usize> = (0..mask.data.len())
        .filter(|&i| mask.data[i] != 0.0)
        .collect();
    let tmaps = nifti::read(truth.join("maps.nii.gz"))?;
    let g = nifti::read(group_maps)?;
    if g.dims[..3] != tmaps.dims[..3] {
        return Err(PipelineError::input(
            group_maps.display().to_string(),
            format!(
                "grid {:?} is not the phantom's {:?}",
                &g.dims[..3],
                &tmaps.dims[..3]
            ),
        ));
    }
    let gm: Vec<Vec<f64>> = frames(&g).iter().map(|f| masked(f, &idx)).collect();
    let tm: Vec<Vec<f64>> = frames(&tmaps).iter().map(|f| masked(f, &idx)).collect();
    // r[s][k]
    let r: Vec<Vec<f64>> = tm
        .iter()
        .map(|t| gm.iter().map(|c| correlation(t, c)).collect())
        .collect();
    let best: Vec<(usize, f64)> = r
        .iter()
        .map(|rs| {
            rs.iter().enumerate().fold(
                (0, 0.0),
                |b, (k, &x)| if x.abs() > b.1 { (k, x.abs()) } else { b },
            )
        })
        .collect();
    let mut subj_r: Vec<Vec<f64>> = vec![Vec::new(); SOURCES.len()];
    for (i, sp) in subject_maps.iter().enumerate() {
        let sm = nifti::read(sp)?;
        let st = nifti::read(truth.join(format!("{}_maps.nii.gz", subject_name(i))))?;
        let sf = frames(&sm);
        let tf = frames(&st);
        for (s, &(k, _)) in best.iter().enumerate() {
            if k < sf.len() {
                subj_r[s].push(correlation(&masked(tf[s], &idx), &masked(sf[k], &idx)).abs());
            }
        }
    }
    let sources: Vec<SourceRecovery> = SOURCES
        .iter()
        .enumerate()
        .map(|(s, src)| SourceRecovery {
            label: src.label.to_string(),
            component: best[s].0,
            group_r: best[s].1,
            subject_r: (!subj_r[s].is_empty())
                .then(|| subj_r[s].iter().sum::<f64>() / subj_r[s].len() as f64),
        })
        .collect();
    let nets: Vec<&SourceRecovery> = sources
        .iter()
        .zip(SOURCES.iter())
        .filter(|(_, s)| s.kind == phantom::SourceKind::Network)
        .map(|(r, _)| r)
        .collect();
    let component_labels = (0..gm.len())
        .map(|k| {
            let (s, a) = (0..tm.len())
                .map(|s| (s, r[s][k].abs()))
                .fold((0, 0.0), |b, x| if x.1 > b.1 { x } else { b });
            if a >= 0.5 {
                SOURCES[s].label.to_string()
            } else {
                UNMATCHED.to_string()
            }
        })
        .collect();
    let subj: Vec<f64> = nets.iter().filter_map(|r| r.subject_r).collect();
    Ok(Recovery {
        min_network_group_r: nets.iter().map(|r| r.group_r).fold(1.0, f64::min),
        mean_network_group_r: nets.iter().map(|r| r.group_r).sum::<f64>() / nets.len() as f64,
        mean_network_subject_r: (!subj.is_empty())
            .then(|| subj.iter().sum::<f64>() / subj.len() as f64),
        sources,
        component_labels,
    })
}

/// How one class was labelled.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClassScore {
    /// The true label.
    pub label: String,
    /// Components (group and subject) whose truth is this label.
    pub total: usize,
    /// Of those, labelled so by the classifier.
    pub correct: usize,
}

/// The classifier's labels against the truth: every group and subject component whose group
/// map matches a phantom source ([`Recovery::component_labels`]).
#[derive(Clone, Debug, Default, Serialize)]
pub struct LabelScore {
    /// Components scored.
    pub total: usize,
    /// Labelled correctly.
    pub correct: usize,
    /// Components left out because their group map matches no source (|r| < 0.5).
    pub unmatched: usize,
    /// Per true label.
    pub per_class: Vec<ClassScore>,
    /// (truth, label, count) of every confusion.
    pub confusions: Vec<(String, String, usize)>,
}

impl LabelScore {
    /// Share labelled correctly.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }

    /// Adds another cohort's score.
    pub fn add(&mut self, o: &LabelScore) {
        self.total += o.total;
        self.correct += o.correct;
        self.unmatched += o.unmatched;
        for c in &o.per_class {
            self.class(&c.label).total += c.total;
            self.class(&c.label).correct += c.correct;
        }
        for (t, p, n) in &o.confusions {
            self.confuse(t, p, *n);
        }
    }

    fn class(&mut self, label: &str) -> &mut ClassScore {
        if let Some(i) = self.per_class.iter().position(|c| c.label == label) {
            return &mut self.per_class[i];
        }
        self.per_class.push(ClassScore {
            label: label.to_string(),
            ..Default::default()
        });
        self.per_class.last_mut().expect("just pushed")
    }

    fn confuse(&mut self, truth: &str, label: &str, n: usize) {
        match self
            .confusions
            .iter_mut()
            .find(|c| c.0 == truth && c.1 == label)
        {
            Some(c) => c.2 += n,
            None => self
                .confusions
                .push((truth.to_string(), label.to_string(), n)),
        }
    }
}

/// Scores the labels of a run (`report`, made with a classifier) against the truth
/// (`recovery` of the same run's group maps).
pub fn label_score(recovery: &Recovery, report: &super::FmriReport) -> LabelScore {
    let mut s = LabelScore::default();
    let labels = report.group.iter().map(|g| (g.index, g.label)).chain(
        report
            .subjects
            .iter()
            .flat_map(|sub| sub.components.iter().map(|c| (c.index, c.label))),
    );
    for (k, label) in labels {
        let truth = recovery.component_labels[k].as_str();
        if truth == UNMATCHED {
            s.unmatched += 1;
            continue;
        }
        let label = label.unwrap_or("none");
        s.total += 1;
        s.class(truth).total += 1;
        if label == truth {
            s.correct += 1;
            s.class(truth).correct += 1;
        } else {
            s.confuse(truth, label, 1);
        }
    }
    s
}

/// A phantom cohort written and run through the pipeline, with its group maps scored.
pub struct CohortRun {
    /// The run's report.
    pub report: super::FmriReport,
    /// How its group maps recover the cohort's sources (and each component's truth label).
    pub recovery: Recovery,
    /// The run's output folder.
    pub out: PathBuf,
    cohort: PathBuf,
}

impl CohortRun {
    /// Removes the cohort and the run's outputs.
    pub fn remove(self) -> Result<(), PipelineError> {
        for d in [&self.cohort, &self.out] {
            std::fs::remove_dir_all(d).map_err(|e| PipelineError::output(d, e))?;
        }
        Ok(())
    }
}

/// Writes the cohort `spec` under `work` (`cohort-SEED`), runs it (outputs in `run-SEED`) with
/// `components` (`None`: estimated) and `classifier`, and scores its group maps.
pub fn run_cohort(
    work: &Path,
    spec: &CohortSpec,
    components: Option<usize>,
    classifier: Option<&super::Classifier>,
) -> Result<CohortRun, PipelineError> {
    let cohort = work.join(format!("cohort-{}", spec.seed));
    let out = work.join(format!("run-{}", spec.seed));
    let files = write_cohort(&cohort, spec, &mut |_, _| {})?;
    let mut req = super::FmriRequest::new(files, out.clone());
    req.components = components;
    let report = super::run(&req, classifier, &mut |_, _, _| {})?;
    let recovery = recovery(&cohort, &out.join("group_maps.nii.gz"), &[])?;
    Ok(CohortRun {
        report,
        recovery,
        out,
        cohort,
    })
}
