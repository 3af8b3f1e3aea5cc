//! `medinfer phantom`: synthetic exams with exact ground truth, the training patches made from
//! them, and the pipeline's accuracy on held-out phantoms.

use crate::args::{bar, print_json, EngineArgs, PipelinePrecision};
use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use medinfer_core::Tensor;
use medinfer_pipelines::cardiac;
use medinfer_pipelines::models::ModelId;
use medinfer_pipelines::{fmri, phantom, Pipeline};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum PhantomCommand {
    /// A beating-heart SSFP cine short-axis exam with exact ground truth: the images, the truth
    /// masks (truth_labels.nii.gz: 1 LV cavity, 2 LV myocardium, 3 RV cavity), truth.json
    /// (EDV, ESV, EF, mass, per-phase volumes, the drawn parameters) and preview.png.
    Cardiac(PhantomCardiacArgs),
    /// Training patches for the cardiac segmentation model (x.npy: N x 1 x 96 x 96 z-scored
    /// patches at 1.6 mm in the anatomical view, y.npy: N x 96 x 96 labels, exam.npy: the seed
    /// of each patch), from phantom exams with consecutive seeds.
    CardiacTraining(TrainingArgs),
    /// Accuracy of the cardiac pipeline on held-out phantom exams: Dice per structure, LV / RV
    /// EF error, LV mass error (the model card's figures).
    CardiacEval(EvalArgs),
    /// A resting-state fMRI cohort with exact truth: sub-NN.nii.gz (4D int16, 4 mm, TR 2 s;
    /// ten networks and three noise sources, subject shifts and amplitudes, thermal noise) and
    /// truth/ (the source maps, each subject's shifted maps and time courses, sources.json).
    Fmri(PhantomFmriArgs),
    /// Frontal chest radiographs with known findings and their findings text, for report
    /// generation: cxr-SEED.png (16-bit), cxr-SEED.json (findings with side / severity / size,
    /// cardiothoracic ratio, labels, text) and reports.jsonl. Findings: cardiomegaly, pleural
    /// effusion, pneumothorax, nodule / mass, lobar consolidation, endotracheal tube; about a
    /// quarter of the studies normal.
    Cxr(PhantomCxrArgs),
    /// Report-level accuracy of a report model on held-out phantom radiographs: each is
    /// rendered, run through the model, and the labels its text states compared with the
    /// drawn findings (F1 per label and macro F1; FP32 vs INT8 / BF16 by the engine options).
    CxrEval(super::generate::CxrEvalArgs),
    /// How well group maps (and subject maps) recover a phantom cohort's sources: the spatial
    /// correlation of each source's best-matching map, for medinfer's outputs or any other
    /// tool's 4D maps on the phantom grid.
    FmriEval(FmriEvalArgs),
    /// Training samples for the fMRI network classifier: phantom cohorts with consecutive
    /// seeds, each run through `run fmri`; every subject and group component becomes three
    /// orthogonal 45 x 45 slices through its peak (x.npy: N x 3 x 45 x 45), labelled with the
    /// source it matches (y.npy: class index; labels.json: the class names and where each
    /// sample came from).
    FmriTraining(FmriTrainingArgs),
    /// The network classifier's accuracy on held-out phantom cohorts: each cohort is written,
    /// run through `run fmri` with the classifier, and every group and subject label compared
    /// with the source its group map matches (the model card's figures).
    FmriClassifyEval(FmriClassifyEvalArgs),
}

#[derive(Args)]
pub struct FmriClassifyEvalArgs {
    /// Seed of the first cohort (training used seeds from 100000 up; keep below that).
    #[arg(long, default_value_t = 1)]
    pub first_seed: u64,
    /// Number of cohorts.
    #[arg(long, default_value_t = 10)]
    pub cohorts: u64,
    /// Subjects per cohort.
    #[arg(long, default_value_t = 8)]
    pub subjects: usize,
    /// Group components (default 13, the phantom's sources; 0: estimated as `run fmri` does).
    #[arg(long, default_value_t = 13)]
    pub components: usize,
    /// Classifier (default: the shipped one, by --precision).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Print JSON (every cohort and the total).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct FmriTrainingArgs {
    /// Output folder for x.npy, y.npy and labels.json (created; cohorts are written and
    /// removed under it while they run).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Number of cohorts (each 6-10 subjects).
    #[arg(long, default_value_t = 40)]
    pub cohorts: u64,
    /// Seed of the first cohort (the others follow consecutively). Evaluation uses seeds
    /// below 1000; keep training above.
    #[arg(long, default_value_t = 100_000)]
    pub first_seed: u64,
}

#[derive(Args)]
pub struct PhantomCxrArgs {
    /// Output folder (created).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Radiographs to write.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Seed of the first (the others follow consecutively).
    #[arg(long, default_value_t = 1)]
    pub first_seed: u64,
    /// Print the truths as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct PhantomFmriArgs {
    /// Output folder (created).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Number of subjects.
    #[arg(long, default_value_t = 20)]
    pub subjects: usize,
    /// Volumes per subject (TR 2 s).
    #[arg(long, default_value_t = 150)]
    pub volumes: usize,
    /// Temporal SNR of the thermal noise (brain baseline / noise sigma).
    #[arg(long, default_value_t = 60.0)]
    pub tsnr: f64,
    /// Seed: every subject's shifts, amplitudes, time courses and noise follow from it.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Args)]
pub struct FmriEvalArgs {
    /// The cohort folder (written by `medinfer phantom fmri`).
    #[arg(long)]
    pub cohort: PathBuf,
    /// Group maps: a 4D NIfTI on the phantom grid, or a `medinfer run fmri` output folder
    /// (its group_maps.nii.gz and every subject's maps.nii.gz are scored).
    #[arg(long)]
    pub maps: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Seed of the first exam (training used seeds from 100000 up; keep below that).
    #[arg(long, default_value_t = 1)]
    pub first_seed: u64,
    /// Number of exams.
    #[arg(long, default_value_t = 20)]
    pub exams: u64,
    /// Segmentation model (default: the shipped one, by --precision).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Acquisition conditions of the exams, one set or several (comma-separated), or `all`:
    /// canonical, rotated, mirrored, apex-first, ed-shifted, tilted, random (each exam its own
    /// draw of everything).
    #[arg(long, default_value = "canonical", value_delimiter = ',')]
    pub conditions: Vec<String>,
    /// Print JSON (every exam and the summary).
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PhantomFormat {
    /// One 4D NIfTI (cine.nii.gz, int16).
    Nifti,
    /// A DICOM cine series (dicom/IM_<slice>_<phase>.dcm, explicit VR little endian).
    Dicom,
}

#[derive(Args)]
pub struct PhantomCardiacArgs {
    /// Output folder (created).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Seed: everything (size, position, EF, noise, geometry) follows from it.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How the images are written.
    #[arg(long, value_enum, default_value = "nifti")]
    pub format: PhantomFormat,
    /// Print the truth as JSON.
    #[arg(long)]
    pub json: bool,
    /// Store the pixel grid turned by this many degrees from the anatomical view (the affine
    /// stays right, so a reader that follows it sees the canonical exam).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub rotate: f64,
    /// Store the columns mirrored.
    #[arg(long)]
    pub mirror: bool,
    /// Store the slices apex first.
    #[arg(long)]
    pub apex_first: bool,
    /// Phase index of end diastole (the cycle recorded from the R wave minus an offset).
    #[arg(long, default_value_t = 0)]
    pub ed_phase: usize,
    /// Tilt of the heart's long axis: in-plane shift of the heart per mm of depth (x, y).
    #[arg(long, num_args = 2, value_names = ["X", "Y"], allow_hyphen_values = true)]
    pub tilt: Option<Vec<f64>>,
    /// Draw rotation, mirroring, slice order, ED phase and tilt at random from the seed
    /// (overrides the flags above).
    #[arg(long)]
    pub random_conditions: bool,
    /// DICOM: each slice its own series, in dicom/sax_N/ folders.
    #[arg(long)]
    pub series_per_slice: bool,
    /// DICOM: each slice its own breath-hold (first trigger time and RR differ slice to
    /// slice; Trigger Time only).
    #[arg(long)]
    pub breath_holds: bool,
}

#[derive(Args)]
pub struct TrainingArgs {
    /// Output folder for x.npy and y.npy.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Number of phantom exams.
    #[arg(long, default_value_t = 200)]
    pub exams: u64,
    /// Seed of the first exam (the others follow consecutively).
    #[arg(long, default_value_t = 100_000)]
    pub first_seed: u64,
    /// Random phases per exam in addition to ED and ES.
    #[arg(long, default_value_t = 3)]
    pub extra_phases: usize,
    /// Largest random shift of the patch centre from the located heart, mm.
    #[arg(long, default_value_t = 12.0)]
    pub jitter_mm: f64,
    /// Acquisition conditions of the exams (as cardiac-eval's --conditions; `random`: each
    /// exam its own draw of rotation, mirroring, slice order, ED phase and tilt).
    #[arg(long, default_value = "random")]
    pub conditions: String,
}

pub fn run(cmd: PhantomCommand) -> Result<()> {
    match cmd {
        PhantomCommand::CxrEval(a) => super::generate::cxr_eval(a),
        PhantomCommand::Cxr(a) => {
            if a.count == 0 {
                anyhow::bail!("--count must be at least 1");
            }
            let pb = bar(a.count, "radiographs", a.json || a.count < 4);
            let truths = medinfer_pipelines::cxr::phantom::write_cxr(
                &a.output,
                a.first_seed,
                a.count,
                || pb.inc(1),
            )?;
            pb.finish_and_clear();
            if a.json {
                return print_json(&truths);
            }
            for t in &truths {
                println!(
                    "cxr-{}.png  CTR {:.2}  {}",
                    t.seed, t.cardiothoracic_ratio, t.text
                );
            }
            println!("written to {}", a.output.display());
            Ok(())
        }
        PhantomCommand::Fmri(a) => {
            if a.subjects == 0 || a.volumes < 10 || a.tsnr.is_nan() || a.tsnr <= 0.0 {
                anyhow::bail!("need --subjects >= 1, --volumes >= 10 and --tsnr > 0");
            }
            let spec = fmri::phantom::CohortSpec {
                subjects: a.subjects,
                volumes: a.volumes,
                tsnr: a.tsnr,
                seed: a.seed,
            };
            let pb = bar(a.subjects, "subjects", false);
            let files =
                fmri::eval::write_cohort(&a.output, &spec, &mut |d, _| pb.set_position(d as u64))?;
            pb.finish_and_clear();
            println!(
                "{} subjects x {} volumes written to {} (truth in {}/truth)",
                files.len(),
                a.volumes,
                a.output.display(),
                a.output.display()
            );
            Ok(())
        }
        PhantomCommand::FmriEval(a) => {
            let (group, subjects) = if a.maps.is_dir() {
                let rep: serde_json::Value = serde_json::from_slice(
                    &std::fs::read(a.maps.join("report.json"))
                        .with_context(|| format!("{}/report.json", a.maps.display()))?,
                )?;
                let subj = rep["subjects"]
                    .as_array()
                    .map(|v| {
                        v.iter()
                            .filter_map(|s| s["id"].as_str())
                            .map(|id| a.maps.join(id).join("maps.nii.gz"))
                            .collect()
                    })
                    .unwrap_or_default();
                (a.maps.join("group_maps.nii.gz"), subj)
            } else {
                (a.maps.clone(), Vec::new())
            };
            let r = fmri::eval::recovery(&a.cohort, &group, &subjects)?;
            if a.json {
                return print_json(&r);
            }
            println!(
                "{:<22} {:>4} {:>8} {:>10}",
                "source", "ic", "group r", "subject r"
            );
            for s in &r.sources {
                println!(
                    "{:<22} {:>4} {:>8.3} {:>10}",
                    s.label,
                    s.component,
                    s.group_r,
                    s.subject_r
                        .map(|x| format!("{x:.3}"))
                        .unwrap_or_else(|| "-".into())
                );
            }
            println!(
                "networks: group r min {:.3}, mean {:.3}; subject r mean {}",
                r.min_network_group_r,
                r.mean_network_group_r,
                r.mean_network_subject_r
                    .map(|x| format!("{x:.3}"))
                    .unwrap_or_else(|| "-".into())
            );
            Ok(())
        }
        PhantomCommand::CardiacEval(a) => cardiac_eval(a),
        PhantomCommand::Cardiac(a) => {
            let format = match a.format {
                PhantomFormat::Nifti => phantom::Format::Nifti,
                PhantomFormat::Dicom => phantom::Format::Dicom,
            };
            let conditions = if a.random_conditions {
                phantom::Conditions::random(a.seed)
            } else {
                let tilt = a.tilt.as_deref().unwrap_or(&[0.0, 0.0]);
                phantom::Conditions {
                    rotation_deg: a.rotate,
                    mirror: a.mirror,
                    apex_first: a.apex_first,
                    ed_phase: a.ed_phase,
                    tilt: [tilt[0], tilt[1]],
                }
            };
            if (a.series_per_slice || a.breath_holds) && !matches!(a.format, PhantomFormat::Dicom) {
                anyhow::bail!("--series-per-slice and --breath-holds need --format dicom");
            }
            let export = phantom::Export {
                conditions,
                series_per_slice: a.series_per_slice,
                breath_holds: a.breath_holds,
            };
            let ph = phantom::write_cardiac_with(&a.output, a.seed, format, &export)?;
            if a.json {
                print_json(&serde_json::json!({"truth": ph.truth, "params": ph.params}))?;
            } else {
                let t = &ph.truth;
                let p = &ph.params;
                println!(
                    "phantom seed {}: {} slices x {} phases, {}x{} at {:.2} mm, slices {:.1} mm + {:.1} mm gap",
                    p.seed, p.slices, p.phases, p.matrix, p.matrix, p.pixel_spacing_mm,
                    p.slice_thickness_mm, p.slice_gap_mm
                );
                println!(
                    "truth: LV EDV {:.1} ml, ESV {:.1} ml, EF {:.1} %; RV EDV {:.1} ml, ESV {:.1} ml, EF {:.1} %; LV mass {:.1} g (ED phase {}, ES phase {})",
                    t.lv_edv_ml, t.lv_esv_ml, t.lv_ef_pct, t.rv_edv_ml, t.rv_esv_ml, t.rv_ef_pct,
                    t.lv_mass_g, t.ed_phase, t.es_phase
                );
                println!("written to {}", a.output.display());
            }
            Ok(())
        }
        PhantomCommand::FmriClassifyEval(a) => fmri_classify_eval(a),
        PhantomCommand::FmriTraining(a) => {
            std::fs::create_dir_all(&a.output)
                .with_context(|| format!("creating {}", a.output.display()))?;
            let bar = bar(a.cohorts as usize, "cohorts", false);
            let mut set = fmri::training::TrainingSet::default();
            for seed in a.first_seed..a.first_seed + a.cohorts {
                fmri::training::add_cohort(&mut set, seed, &a.output)?;
                bar.inc(1);
            }
            bar.finish_and_clear();
            let n = set.y.len();
            let s = fmri::slices::SIZE;
            medinfer_io::npy::write(
                &a.output.join("x.npy"),
                &Tensor::from_f32(vec![n, 3, s, s], set.x)?,
            )?;
            medinfer_io::npy::write(
                &a.output.join("y.npy"),
                &Tensor::new(vec![n], medinfer_core::TensorData::U8(set.y))?,
            )?;
            let meta = serde_json::json!({
                "classes": fmri::CLASSES,
                "fov_mm": fmri::slices::FOV_MM,
                "samples": set.samples,
            });
            let lp = a.output.join("labels.json");
            std::fs::write(&lp, serde_json::to_string(&meta)?)
                .with_context(|| format!("writing {}", lp.display()))?;
            println!(
                "{n} samples from {} cohorts in {}",
                a.cohorts,
                a.output.display()
            );
            Ok(())
        }
        PhantomCommand::CardiacTraining(a) => {
            std::fs::create_dir_all(&a.output)
                .with_context(|| format!("creating {}", a.output.display()))?;
            let seeds: Vec<u64> = (a.first_seed..a.first_seed + a.exams).collect();
            let bar = bar(seeds.len(), "exams", false);
            let set = cardiac::ConditionSet::from_name(&a.conditions).with_context(|| {
                format!(
                    "--conditions {}: one of {}",
                    a.conditions,
                    cardiac::ConditionSet::ALL.map(|s| s.name()).join(", ")
                )
            })?;
            let mut xs = Vec::new();
            let mut ys = Vec::new();
            let mut exams = Vec::new();
            for chunk in seeds.chunks(8) {
                let (x, y, e) = cardiac::training_set(chunk, a.extra_phases, a.jitter_mm, set);
                xs.extend(x);
                ys.extend(y);
                exams.extend(e.into_iter().map(|s| s as i64));
                bar.inc(chunk.len() as u64);
            }
            bar.finish_and_clear();
            let [rows, cols] = cardiac::CardiacSpec::shipped().size;
            let n = ys.len() / (rows * cols);
            medinfer_io::npy::write(
                &a.output.join("x.npy"),
                &Tensor::from_f32(vec![n, 1, rows, cols], xs)?,
            )?;
            medinfer_io::npy::write(
                &a.output.join("y.npy"),
                &Tensor::new(vec![n, rows, cols], medinfer_core::TensorData::U8(ys))?,
            )?;
            // The exam (seed) of each patch: training splits by exam, never by patch.
            medinfer_io::npy::write(
                &a.output.join("exam.npy"),
                &Tensor::new(vec![n], medinfer_core::TensorData::I64(exams))?,
            )?;
            println!(
                "{n} patches from {} exams in {}",
                a.exams,
                a.output.display()
            );
            Ok(())
        }
    }
}

fn fmri_classify_eval(a: FmriClassifyEvalArgs) -> Result<()> {
    use fmri::eval::{self as fe, LabelScore};
    let path = super::run_fmri::classifier_model(&a.engine, a.model.as_deref())?;
    let session = a.engine.session(&path, 8, None, None)?;
    let classifier = fmri::Classifier {
        session: &session,
        model: ModelId::of(&path)?,
    };
    let work = tempfile::tempdir().context("creating a scratch folder")?;
    let bar = bar(a.cohorts as usize, "cohorts", a.json);
    let mut total = LabelScore::default();
    let mut cohorts = Vec::new();
    for seed in a.first_seed..a.first_seed + a.cohorts {
        let spec = fmri::phantom::CohortSpec {
            subjects: a.subjects,
            seed,
            ..Default::default()
        };
        let components = (a.components > 0).then_some(a.components);
        let run = fe::run_cohort(work.path(), &spec, components, Some(&classifier))?;
        let (report, score) = (&run.report, fe::label_score(&run.recovery, &run.report));
        total.add(&score);
        cohorts.push(serde_json::json!({
            "seed": seed, "components": report.components, "accuracy": score.accuracy(),
            "score": score, "classify_s": report.times_s.classify,
        }));
        // The scratch folder goes at the end anyway: a failed removal is not worth stopping for.
        run.remove().ok();
        bar.inc(1);
    }
    bar.finish_and_clear();
    let info = session.info();
    if a.json {
        return print_json(&serde_json::json!({
            "model": classifier.model, "backend": info.backend.name(),
            "precision": info.effective_precision, "accuracy": total.accuracy(),
            "total": total, "cohorts": cohorts,
        }));
    }
    println!(
        "{} on {} ({}): {} cohorts of {} subjects, seeds {}-{}",
        path.display(),
        info.backend.name(),
        info.effective_precision,
        a.cohorts,
        a.subjects,
        a.first_seed,
        a.first_seed + a.cohorts - 1
    );
    println!(
        "{:<22} {:>6} {:>8} {:>9}",
        "true label", "total", "correct", "accuracy"
    );
    for c in &total.per_class {
        println!(
            "{:<22} {:>6} {:>8} {:>8.1}%",
            c.label,
            c.total,
            c.correct,
            100.0 * c.correct as f64 / c.total.max(1) as f64
        );
    }
    println!(
        "all: {}/{} correct ({:.2}%); {} components matched no source and were not scored",
        total.correct,
        total.total,
        100.0 * total.accuracy(),
        total.unmatched
    );
    for (t, p, n) in &total.confusions {
        println!("  {t} labelled {p}: {n}");
    }
    Ok(())
}

fn cardiac_eval(a: EvalArgs) -> Result<()> {
    let sets: Vec<cardiac::ConditionSet> = if a.conditions.iter().any(|c| c == "all") {
        cardiac::ConditionSet::ALL.to_vec()
    } else {
        a.conditions
            .iter()
            .map(|c| {
                cardiac::ConditionSet::from_name(c).with_context(|| {
                    format!(
                        "--conditions {c}: one of {} or all",
                        cardiac::ConditionSet::ALL.map(|s| s.name()).join(", ")
                    )
                })
            })
            .collect::<Result<_>>()?
    };
    let model = a
        .engine
        .model(
            Pipeline::Cardiac,
            a.model.as_deref(),
            PipelinePrecision::Auto,
        )?
        .path;
    let model_spec = a.engine.model_spec(Pipeline::Cardiac, &model, None, 8)?;
    let spec = cardiac::CardiacSpec::from_model(&model_spec, &model.display().to_string())?;
    let session = a.engine.session_for(&model, &model_spec, 8, None, None)?;
    let id = ModelId::of(&model)?;
    let seeds: Vec<u64> = (a.first_seed..a.first_seed + a.exams).collect();
    let bar = bar(seeds.len() * sets.len(), "exams", a.json);
    let mut results = Vec::new();
    for &set in &sets {
        let sum = cardiac::evaluate(&seeds, &session, &id, &spec, set, |e| {
            bar.inc(1);
            if !a.json {
                bar.println(format!(
                    "{:>10} seed {:>4}: Dice LV {:.3} myo {:.3} RV {:.3}; LV EF {:.1} vs {:.1}; mass {:.1} vs {:.1} g",
                    set.name(), e.seed, e.dice[0], e.dice[1], e.dice[2], e.lv_ef[0], e.lv_ef[1],
                    e.lv_mass[0], e.lv_mass[1]
                ));
            }
        })?;
        results.push((set, sum));
    }
    bar.finish_and_clear();
    if a.json {
        let sets: Vec<_> = results
            .iter()
            .map(|(set, sum)| serde_json::json!({"conditions": set.name(), "summary": sum}))
            .collect();
        return print_json(&serde_json::json!({
            "model": id, "backend": session.info().backend.name(),
            "precision": session.info().effective_precision, "sets": sets,
        }));
    }
    println!(
        "{} exams per set on {} ({}), model {} ({}...)",
        seeds.len(),
        session.info().backend,
        session.info().effective_precision,
        id.path,
        &id.sha256[..12]
    );
    println!(
        "| conditions | Dice LV | Dice myo | Dice RV | LV EF MAE | LV EF max | RV EF MAE | mass MAPE % | mass max % |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (set, sum) in &results {
        println!(
            "| {} | {:.4} | {:.4} | {:.4} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            set.name(),
            sum.mean_dice[0],
            sum.mean_dice[1],
            sum.mean_dice[2],
            sum.lv_ef_mae,
            sum.lv_ef_max_error,
            sum.rv_ef_mae,
            sum.lv_mass_mape,
            sum.lv_mass_max_error_pct
        );
    }
    Ok(())
}
