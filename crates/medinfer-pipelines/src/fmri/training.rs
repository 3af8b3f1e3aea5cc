//! Labelled classifier samples from phantom cohorts, made by the pipeline itself: each cohort
//! is written, run through `run` (group ICA + dual regression, exactly as a user's data
//! would be), and every subject component and every group component becomes one sample
//! ([`slices::component_slices`]) labelled with the phantom source its group map matches best
//! ([`eval::recovery`]; components that match nothing at |r| >= 0.5 are left out).
//!
//! Cohorts vary so that the classifier sees what the pipeline makes of different data:
//! 6-10 subjects, 120 / 150 / 200 volumes, tSNR 40 / 60 / 100, and 12-16 components (13 is
//! the phantom's own count; fewer merges sources, more splits them).

use super::phantom::CohortSpec;
use super::{eval, slices, CLASSES};
use crate::PipelineError;
use medinfer_core::SeededRng;
use serde::Serialize;
use std::path::Path;

/// Samples and their labels.
#[derive(Default)]
pub struct TrainingSet {
    /// `n x SAMPLE_LEN` values.
    pub x: Vec<f32>,
    /// Class index into [`CLASSES`] per sample.
    pub y: Vec<u8>,
    /// Where each sample came from.
    pub samples: Vec<SampleInfo>,
}

/// Where one sample came from.
#[derive(Clone, Debug, Serialize)]
pub struct SampleInfo {
    /// Cohort seed.
    pub seed: u64,
    /// Subject id, or `group` for a group map.
    pub subject: String,
    /// Component index.
    pub component: usize,
    /// Components in that run.
    pub components: usize,
    /// The label.
    pub label: &'static str,
}

/// The cohort drawn for `seed` and the number of components to run it with.
pub fn cohort_for(seed: u64) -> (CohortSpec, usize) {
    let mut rng = SeededRng::new(seed ^ 0xf3a1_7a11);
    let pick = |rng: &mut SeededRng, n: u64| (rng.next_u64() % n) as usize;
    let subjects = 6 + pick(&mut rng, 5);
    let volumes = [120, 150, 200][pick(&mut rng, 3)];
    let tsnr = [40.0, 60.0, 100.0][pick(&mut rng, 3)];
    let components = [13, 13, 12, 14, 15, 16][pick(&mut rng, 6)];
    (
        CohortSpec {
            subjects,
            volumes,
            tsnr,
            seed,
        },
        components,
    )
}

/// Adds the samples of the cohort with `seed` (written and run in `work`, removed after).
pub fn add_cohort(set: &mut TrainingSet, seed: u64, work: &Path) -> Result<(), PipelineError> {
    let (spec, n) = cohort_for(seed);
    let run = eval::run_cohort(work, &spec, Some(n), None)?;
    let report = &run.report;
    for o in slices::from_outputs(&run.out, report)? {
        let label = &run.recovery.component_labels[o.component];
        if let Some(c) = CLASSES.iter().position(|l| l == label) {
            set.x.extend(o.x);
            set.y.push(c as u8);
            set.samples.push(SampleInfo {
                seed,
                subject: o
                    .subject
                    .map_or("group".into(), |i| report.subjects[i].id.clone()),
                component: o.component,
                components: n,
                label: CLASSES[c],
            });
        }
    }
    run.remove()
}
