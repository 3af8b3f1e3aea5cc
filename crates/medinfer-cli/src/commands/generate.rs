//! `medinfer generate` / `medinfer run report`: findings text from images with an
//! encoder-decoder model; `medinfer bench-generate`: the whole generation timed per engine.

use crate::args::{bar, print_json};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use medinfer_bench::{latency_stats, peak_rss_mb, reset_peak_rss};
use medinfer_core::Tensor;
use medinfer_engine::{BackendKind, Precision, SessionOptions};
use medinfer_generate::decode::EarlyStopping;
use medinfer_generate::model::DecoderChoice;
use medinfer_generate::{Generator, LoadOptions, Overrides};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Which decoder files to use.
#[derive(Clone, Copy, ValueEnum)]
pub enum DecoderArg {
    /// decoder_model_merged.onnx if present, else the split pair.
    Auto,
    /// decoder_model_merged.onnx (one file, use_cache_branch input).
    Merged,
    /// decoder_model.onnx for the first token, decoder_with_past_model.onnx after it.
    Split,
}

/// Beam search's stopping rule.
#[derive(Clone, Copy, ValueEnum)]
pub enum EarlyStoppingArg {
    /// Stop when num_beams hypotheses are finished.
    True,
    /// Stop when no running beam can beat the finished ones at the current length (HF default).
    False,
    /// Judge at the longest length when the length penalty favours long outputs.
    Never,
}

/// Engine and decoding settings shared by `generate` and `bench-generate`.
#[derive(Args, Clone)]
pub struct GenerationArgs {
    /// Engine: ort, openvino or auto (OpenVINO, else ONNX Runtime). tract cannot run decoders
    /// whose shapes change every step.
    #[arg(short, long, default_value = "auto")]
    pub backend: String,
    /// Compute precision: fp32, or bf16 (OpenVINO on CPUs with AVX-512 BF16 / AMX).
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// Engine for the image encoder when it should differ from the decoder's (ort, openvino):
    /// the encoder is compute-bound, the decoder reads weights; each may run best elsewhere.
    #[arg(long)]
    pub encoder_backend: Option<String>,
    /// Precision of the encoder (fp32, bf16); default --precision.
    #[arg(long)]
    pub encoder_precision: Option<String>,
    /// Threads for the engine (default: every usable core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Merged or split decoder files.
    #[arg(long, value_enum, default_value = "auto")]
    pub decoder: DecoderArg,
    /// Tokens to generate at most (default: generation_config.json's, else 19 as in HF).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Beams: 1 = greedy (default: generation_config.json's, else 1).
    #[arg(long)]
    pub num_beams: Option<usize>,
    /// Beam scores are divided by length ^ this (default: the config's, else 1.0).
    #[arg(long)]
    pub length_penalty: Option<f32>,
    /// > 1 discourages repeating tokens (default: the config's, else 1.0 = off).
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// No n-gram of this size appears twice (default: the config's, else 0 = off).
    #[arg(long)]
    pub no_repeat_ngram_size: Option<usize>,
    /// Beam search's stopping rule (default: the config's, else false).
    #[arg(long, value_enum)]
    pub early_stopping: Option<EarlyStoppingArg>,
    /// Stop once the text contains this string (repeatable).
    #[arg(long = "stop")]
    pub stop_strings: Vec<String>,
    /// Never stop at the end token: always generate max_new_tokens (benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Keep the encoder-only work (cross-attention keys and values) in the per-token decoder
    /// instead of computing it once per report (for comparison; same tokens either way).
    #[arg(long)]
    pub no_hoist: bool,
}

impl GenerationArgs {
    fn load(&self, dir: &std::path::Path, backend: BackendKind) -> Result<Generator> {
        let precision = Precision::parse(&self.precision)
            .with_context(|| format!("--precision {}: fp32 or bf16", self.precision))?;
        let opts = LoadOptions {
            backend,
            session: SessionOptions {
                precision,
                threads: self.threads,
                ..Default::default()
            },
            decoder: match self.decoder {
                DecoderArg::Auto => DecoderChoice::Auto,
                DecoderArg::Merged => DecoderChoice::Merged,
                DecoderArg::Split => DecoderChoice::Split,
            },
            hoist: !self.no_hoist,
            encoder: match (&self.encoder_backend, &self.encoder_precision) {
                (None, None) => None,
                (b, p) => {
                    let kind = match b {
                        Some(b) => self::backend(b)?,
                        None => backend,
                    };
                    let p = p.as_deref().unwrap_or(&self.precision);
                    let precision = Precision::parse(p)
                        .with_context(|| format!("--encoder-precision {p}: fp32 or bf16"))?;
                    Some((
                        kind,
                        SessionOptions {
                            precision,
                            threads: self.threads,
                            ..Default::default()
                        },
                    ))
                }
            },
        };
        Ok(Generator::load(dir, &opts)?)
    }

    fn overrides(&self) -> Overrides {
        Overrides {
            max_new_tokens: self.max_new_tokens,
            num_beams: self.num_beams,
            length_penalty: self.length_penalty,
            repetition_penalty: self.repetition_penalty,
            no_repeat_ngram_size: self.no_repeat_ngram_size,
            stop_strings: self.stop_strings.clone(),
            early_stopping: self.early_stopping.map(|e| match e {
                EarlyStoppingArg::True => EarlyStopping::True,
                EarlyStoppingArg::False => EarlyStopping::False,
                EarlyStoppingArg::Never => EarlyStopping::Never,
            }),
            ignore_eos: self.ignore_eos,
        }
    }
}

/// The engine a generation runs on: `auto` = OpenVINO, else ONNX Runtime.
fn backend(name: &str) -> Result<BackendKind> {
    let k = medinfer_engine::resolve_backend(name)?;
    Ok(match k {
        BackendKind::Tract if name.trim().eq_ignore_ascii_case("auto") => BackendKind::Ort,
        BackendKind::Tract => bail!(
            "--backend tract: tract cannot run a decoder whose shapes change every step; use ort or openvino (`medinfer runtimes install` fetches them)"
        ),
        k => k,
    })
}

#[derive(Args)]
pub struct GenerateArgs {
    /// The model folder: a Hugging Face VisionEncoderDecoder ONNX export (encoder_model.onnx,
    /// decoder_model_merged.onnx or decoder_model.onnx + decoder_with_past_model.onnx,
    /// tokenizer.json, config.json, generation_config.json, preprocessor_config.json).
    pub model: PathBuf,
    /// Images (PNG, JPEG, DICOM), or `.npy` pixel values already preprocessed ([1, 3, H, W]).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub gen: GenerationArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Item {
    image: PathBuf,
    #[serde(flatten)]
    generation: medinfer_generate::Generation,
}

#[derive(Serialize)]
struct GenerateOut<'a> {
    model: &'a std::path::Path,
    backend: String,
    precision: String,
    reports: Vec<Item>,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let kind = backend(&a.gen.backend)?;
    let g = a.gen.load(&a.model, kind)?;
    let o = a.gen.overrides();
    let pb = bar(a.images.len(), "images", a.json || a.images.len() < 2);
    let mut reports = Vec::new();
    for img in &a.images {
        let gen = if img.extension().is_some_and(|e| e == "npy") {
            let px = medinfer_io::npy::read(img)?;
            g.generate_pixels(&px, &o)
        } else {
            g.generate_file(img, &o)
        }
        .with_context(|| format!("{}", img.display()))?;
        pb.inc(1);
        reports.push(Item {
            image: img.clone(),
            generation: gen,
        });
    }
    pb.finish_and_clear();
    let info = g.sessions()[1];
    if a.json {
        return print_json(&GenerateOut {
            model: &a.model,
            backend: info.backend.to_string(),
            precision: info.effective_precision.clone(),
            reports,
        });
    }
    for r in &reports {
        let t = &r.generation.timings;
        println!("{}", r.image.display());
        for f in &r.generation.findings {
            println!("  - {f}");
        }
        println!(
            "  {} tokens ({}), {:.0} ms: first token {:.0} ms, then {:.1} ms/token [{} {}]",
            r.generation.new_tokens,
            r.generation.stopped_by,
            t.total_ms,
            t.first_token_ms,
            t.per_token_ms,
            info.backend,
            info.effective_precision
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct BenchGenerateArgs {
    /// The model folder (as for `medinfer generate`).
    pub model: PathBuf,
    /// The image (PNG, JPEG, DICOM) or `.npy` pixel values; default: a seeded random image.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Engines to compare, comma-separated (ort, openvino).
    #[arg(
        short = 'B',
        long,
        default_value = "ort,openvino",
        value_delimiter = ','
    )]
    pub backends: Vec<String>,
    /// Timed generations per engine (the published metric is the mean +- std of 100).
    #[arg(long, default_value_t = 100)]
    pub runs: usize,
    /// Untimed generations first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[command(flatten)]
    pub gen: GenerationArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct BenchRow {
    backend: String,
    precision: String,
    decoder: String,
    runs: usize,
    new_tokens: usize,
    load_ms: f64,
    total_ms: medinfer_bench::LatencyStats,
    first_token_ms: f64,
    per_token_ms: f64,
    encoder_ms: f64,
    tokens_per_s: f64,
    peak_rss_mb: f64,
    hoisted_nodes: usize,
    /// Per-token decoder nodes removed by folding static shape arithmetic.
    folded_away_nodes: usize,
    notes: Vec<String>,
}

pub fn bench(a: BenchGenerateArgs) -> Result<()> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut rows = Vec::new();
    for name in &a.backends {
        let kind = backend(name)?;
        reset_peak_rss();
        let t0 = std::time::Instant::now();
        let g = a.gen.load(&a.model, kind)?;
        let load_ms = t0.elapsed().as_secs_f64() * 1e3;
        let o = a.gen.overrides();
        let (c, (h, w)) = (g.config().num_channels.unwrap_or(3), g.processor().size);
        let px = match &a.image {
            Some(p) if p.extension().is_some_and(|e| e == "npy") => medinfer_io::npy::read(p)?,
            Some(p) => g.pixels_file(p)?,
            None => {
                let mut rng = medinfer_core::SeededRng::new(7);
                let v: Vec<f32> = (0..c * h * w).map(|_| rng.normal() as f32).collect();
                medinfer_core::Tensor::from_f32(vec![1, c, h, w], v)?
            }
        };
        for _ in 0..a.warmup {
            g.generate_pixels(&px, &o)?;
        }
        let pb = bar(a.runs, &format!("{kind} generations"), a.json);
        let mut totals = Vec::with_capacity(a.runs);
        let (mut ttft, mut per_tok, mut enc, mut tokens) = (0.0, 0.0, 0.0, 0);
        for _ in 0..a.runs {
            let r = g.generate_pixels(&px, &o)?;
            totals.push(r.timings.total_ms);
            ttft += r.timings.first_token_ms;
            per_tok += r.timings.per_token_ms;
            enc += r.timings.encoder_ms;
            tokens = r.new_tokens;
            pb.inc(1);
        }
        pb.finish_and_clear();
        let n = a.runs as f64;
        let stats = latency_stats(&totals);
        let infos = g.sessions();
        rows.push(BenchRow {
            backend: kind.to_string(),
            precision: format!(
                "{} (encoder {} {})",
                infos[1].effective_precision, infos[0].backend, infos[0].effective_precision
            ),
            decoder: match g.files().decoder {
                medinfer_generate::model::DecoderFiles::Merged(_) => "merged".into(),
                medinfer_generate::model::DecoderFiles::Split { .. } => "split".into(),
            },
            runs: a.runs,
            new_tokens: tokens,
            load_ms,
            tokens_per_s: tokens as f64 / (stats.mean / 1e3),
            total_ms: stats,
            first_token_ms: ttft / n,
            per_token_ms: per_tok / n,
            encoder_ms: enc / n,
            peak_rss_mb: peak_rss_mb(),
            hoisted_nodes: g.hoisted_nodes(),
            folded_away_nodes: g.folded_away_nodes(),
            notes: infos.iter().flat_map(|i| i.notes.clone()).collect(),
        });
    }
    if a.json {
        return print_json(&serde_json::json!({
            "model": a.model,
            "cpu": medinfer_bench::cpu_model(),
            "rows": rows,
        }));
    }
    println!(
        "{:<9} {:<9} {:<7} {:>6} {:>18} {:>10} {:>10} {:>9} {:>9}",
        "engine",
        "precision",
        "decoder",
        "tokens",
        "whole (ms)",
        "1st tok",
        "ms/token",
        "tok/s",
        "RSS MB"
    );
    for r in &rows {
        println!(
            "{:<9} {:<9} {:<7} {:>6} {:>18} {:>10.1} {:>10.2} {:>9.1} {:>9.0}",
            r.backend,
            r.precision,
            r.decoder,
            r.new_tokens,
            format!("{:.1} +- {:.1}", r.total_ms.mean, r.total_ms.std),
            r.first_token_ms,
            r.per_token_ms,
            r.tokens_per_s,
            r.peak_rss_mb
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct QuantizeWeightsArgs {
    /// The model folder (a VisionEncoderDecoder export with decoder_model.onnx and
    /// decoder_with_past_model.onnx).
    pub model: PathBuf,
    /// The new folder (must not exist or be empty): the export with its decoders' MatMul /
    /// Gemm weights in 8 or 4 bits (ONNX Runtime's MatMulNBits), everything else copied.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Bits per weight: 8, or 4 (half the bytes again; check the accuracy on your data, e.g.
    /// `medinfer phantom cxr-eval` for the phantom model).
    #[arg(long, default_value_t = 8)]
    pub bits: u8,
    /// Weights per scale along K (a power of two, at least 16).
    #[arg(long, default_value_t = 32)]
    pub block: usize,
    /// MatMulNBits compute type: 0 unset (engine default), 1 fp32, 4 int8 activations
    /// (quantized per block at run time; ONNX Runtime's fast VNNI / AVX2 kernels: measured 11
    /// against 221 ms per token with 0 on a GPT-2-base decoder, docs/benchmarks.md).
    #[arg(long, default_value_t = 4)]
    pub accuracy_level: i64,
    /// Quantize the encoder's matrix products too, weight-only (its weights int8 as well;
    /// check the accuracy on your data). See --encoder-int8 for a faster encoder.
    #[arg(long, conflicts_with = "encoder_int8")]
    pub encoder: bool,
    /// Make the encoder's matrix products INT8 in weights and activations (QDQ laid out for
    /// OpenVINO, as `medinfer quantize --target openvino` writes it; residual Adds and the
    /// patch-embedding convolution stay float), calibrated on the images in this folder (PNG,
    /// JPEG, DICOM; preprocessed by the model's own image processor; other files are passed
    /// over). The encoder is compute-bound, so this is what makes it faster: ViT-B/16 at
    /// 448 px on OpenVINO ~1.3x against BF16 (docs/benchmarks.md); run it with
    /// `--encoder-backend openvino --encoder-precision bf16` (BF16 for the float rest). Use
    /// images like the ones you will run, not your test set, and check the accuracy on your
    /// data (`medinfer phantom cxr-eval` for the phantom model: macro F1 0.930 against 0.933).
    #[arg(long, value_name = "IMAGES")]
    pub encoder_int8: Option<PathBuf>,
    /// Calibration images used with --encoder-int8 (a seeded shuffle picks them when the
    /// folder holds more).
    #[arg(long, default_value_t = 64)]
    pub encoder_samples: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn quantize_weights(a: QuantizeWeightsArgs) -> Result<()> {
    if let Some(dir) = &a.encoder_int8 {
        if !dir.is_dir() {
            bail!("--encoder-int8 {}: not a folder of images", dir.display());
        }
    }
    let r = medinfer_generate::quantize_export(
        &a.model,
        &a.output,
        a.bits,
        a.block,
        a.accuracy_level,
        a.encoder,
    )?;
    let encoder_int8 = match &a.encoder_int8 {
        Some(images) => match int8_encoder(&a, images) {
            Ok(q) => Some(q),
            Err(e) => {
                // No half-made folder whose float encoder could pass for an INT8 one.
                let _ = std::fs::remove_dir_all(&a.output);
                return Err(e.context(format!("nothing written to {}", a.output.display())));
            }
        },
        None => None,
    };
    if a.json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            export: &'a medinfer_generate::QuantizedExport,
            encoder_int8: Option<&'a super::quantize::QuantizeOutput>,
        }
        return print_json(&Out {
            export: &r,
            encoder_int8: encoder_int8.as_ref(),
        });
    }
    if let Some(q) = &encoder_int8 {
        let (int8, all) = q.layers();
        println!(
            "encoder_model.onnx: {int8} of {all} layers in INT8 (activations too), calibrated on {} images",
            q.calibration_samples()
        );
    }
    for (name, f) in &r.files {
        println!(
            "{name}: {} products to {} bits, weights {:.1} -> {:.1} MB, worst block error {:.2} % of the block's largest weight{}",
            f.replaced,
            f.bits,
            f.float_bytes as f64 / 1e6,
            f.quantized_bytes as f64 / 1e6,
            f.max_block_error * 100.0,
            if f.skipped.is_empty() {
                String::new()
            } else {
                format!(" (left float: {})", f.skipped.join("; "))
            }
        );
    }
    println!("written to {}", r.output.display());
    Ok(())
}

/// Replaces the copied encoder in `a.output` with a full INT8 one calibrated on `images`:
/// the images go through the source model's own preprocessing into a temporary folder of
/// `.npy` samples, and `medinfer quantize` (its defaults, `--target openvino`) does the rest.
fn int8_encoder(a: &QuantizeWeightsArgs, images: &Path) -> Result<super::quantize::QuantizeOutput> {
    let processor = medinfer_generate::image_processor(&a.model)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(images)
        .with_context(|| format!("reading {}", images.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    // Every file in a seeded order, until enough have been read (other files, a truth JSON
    // beside each image say, are passed over).
    let pick = medinfer_pipelines::samples::shuffled_indices(files.len(), files.len(), 0);
    let work = tempfile::tempdir().context("creating a temporary folder")?;
    let mut written = 0;
    let mut skipped = Vec::new();
    for &i in &pick {
        if written == a.encoder_samples {
            break;
        }
        let f = &files[i];
        let px = medinfer_io::read_images(f)
            .map_err(|e| e.to_string())
            .and_then(|imgs| match imgs.first() {
                Some(img) => processor.pixels(img).map_err(|e| e.to_string()),
                None => Err("holds no image".to_string()),
            });
        match px {
            Ok(px) => {
                // One sample without the batch axis, as `quantize --calib` takes it.
                let (shape, data) = px.into_parts();
                let t = Tensor::new(shape[1..].to_vec(), data)?;
                medinfer_io::npy::write(&work.path().join(format!("{written:05}.npy")), &t)?;
                written += 1;
            }
            // Reader errors name the file already.
            Err(e) if e.contains(&*f.to_string_lossy()) => skipped.push(e),
            Err(e) => skipped.push(format!("{}: {e}", f.display())),
        }
    }
    if written == 0 {
        bail!(
            "--encoder-int8 {}: no usable image{}",
            images.display(),
            skipped
                .first()
                .map(|e| format!(" (e.g. {e})"))
                .unwrap_or_default()
        );
    }
    if let Some(e) = skipped.first() {
        if !a.json {
            eprintln!(
                "note: {} file(s) in {} could not be read as images and were passed over, e.g. {e}",
                skipped.len(),
                images.display()
            );
        }
    }
    let encoder = a.output.join("encoder_model.onnx");
    let mut args = vec![
        "quantize".to_string(),
        a.model.join("encoder_model.onnx").display().to_string(),
        "-o".into(),
        encoder.display().to_string(),
        "--calib".into(),
        work.path().display().to_string(),
        "--target".into(),
        "openvino".into(),
        "--samples".into(),
        written.to_string(),
    ];
    // The residual Adds and the patch-embedding convolution stay float: ViT's residual stream
    // carries outliers that one INT8 scale per tensor cannot hold (trained phantom model,
    // macro F1: 0.930 with the products alone in INT8, 0.834-0.840 with those in INT8 too;
    // docs/benchmarks.md), and the products hold nearly all of the encoder's work.
    args.extend(["--exclude", "Add", "--exclude", "Conv"].map(String::from));
    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        q: super::quantize::QuantizeArgs,
    }
    let w = <Wrap as clap::Parser>::try_parse_from(args)?;
    let out = super::quantize::execute(w.q).context("quantizing the encoder")?;
    Ok(out)
}

#[derive(Args)]
pub struct CxrEvalArgs {
    /// The report model folder (a VisionEncoderDecoder export).
    #[arg(long)]
    pub model: PathBuf,
    /// Seed of the first held-out phantom (training uses seeds below 100000).
    #[arg(long, default_value_t = 100_000)]
    pub first_seed: u64,
    /// Phantoms to evaluate.
    #[arg(long, default_value_t = 200)]
    pub count: usize,
    #[command(flatten)]
    pub gen: GenerationArgs,
    /// Also print this many sample reports next to their truth.
    #[arg(long, default_value_t = 0)]
    pub samples: usize,
    /// A multi-label classifier to score on the same phantoms (ROC AUC per label), run as
    /// `medinfer run cxr` runs it (its config beside it gives size, normalisation and labels;
    /// labels must be the phantom's). Default: MODEL/classifier.onnx when there is one (the
    /// report model's label head); `none` to skip.
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The classifier part of `phantom cxr-eval`: a CXR pipeline model scored per label.
#[derive(Serialize)]
struct ClassifierEval {
    model: PathBuf,
    backend: String,
    /// ROC AUC per label (null where the phantoms hold one class only).
    auc: std::collections::BTreeMap<String, Option<f64>>,
    macro_auc: f64,
}

/// A `run cxr` model scored on phantoms with the CXR pipeline's own preprocessing and scores.
struct ClassifierScorer {
    path: PathBuf,
    session: medinfer_engine::Session,
    spec: medinfer_pipelines::config::ModelSpec,
    /// (score, drawn) per label, in the model's label order.
    pairs: Vec<Vec<(f32, bool)>>,
}

impl ClassifierScorer {
    /// Loads `path` with its config; its labels must be the phantom's.
    fn load(path: &std::path::Path, kind: BackendKind) -> Result<ClassifierScorer> {
        use medinfer_pipelines::config::ModelConfig;
        use medinfer_pipelines::cxr::phantom;
        let spec = ModelConfig::for_model(medinfer_pipelines::Pipeline::Cxr, path, None)?
            .resolve(path, 1)?;
        if let Some(l) = spec
            .labels
            .iter()
            .find(|l| !phantom::LABELS.contains(&l.as_str()))
        {
            bail!(
                "{}: label '{l}' is not a phantom label ({})",
                path.display(),
                phantom::LABELS.join(", ")
            );
        }
        let opts = SessionOptions {
            batch: Some(1),
            input_shapes: spec.input_shapes.clone(),
            ..Default::default()
        };
        let session = medinfer_engine::load_on(kind, path, &opts)
            .with_context(|| format!("loading {} on {kind}", path.display()))?;
        Ok(ClassifierScorer {
            path: path.to_path_buf(),
            session,
            pairs: vec![Vec::new(); spec.labels.len()],
            spec,
        })
    }

    /// Scores one phantom and keeps its scores beside its drawn labels.
    fn score(&mut self, p: &medinfer_pipelines::cxr::phantom::CxrPhantom) -> Result<()> {
        use medinfer_pipelines::cxr::{self, phantom};
        let prep = cxr::CxrPrep::of(&self.spec, cxr::Resize::Xrv);
        let [rows, cols] = self.spec.size;
        let x = cxr::preprocess_image_with(phantom::to_image(p), prep)?;
        let t = medinfer_core::Tensor::from_f32(vec![1, 1, rows, cols], x)?;
        let out = self.session.run(&[t])?;
        let logits = out
            .first()
            .context("the classifier gave no output")?
            .as_f32()?;
        if logits.len() != self.spec.labels.len() {
            bail!(
                "{}: {} scores for {} labels",
                self.path.display(),
                logits.len(),
                self.spec.labels.len()
            );
        }
        for ((l, s), v) in self
            .spec
            .labels
            .iter()
            .zip(cxr::scores(logits, None))
            .zip(&mut self.pairs)
        {
            v.push((s, p.truth.labels[l.as_str()]));
        }
        Ok(())
    }

    /// The ROC AUC of each label over the phantoms scored.
    fn finish(self) -> ClassifierEval {
        let auc: std::collections::BTreeMap<String, Option<f64>> = self
            .spec
            .labels
            .iter()
            .zip(self.pairs)
            .map(|(l, v)| (l.clone(), medinfer_engine::calibrate::roc_auc(v)))
            .collect();
        let known: Vec<f64> = auc.values().flatten().copied().collect();
        ClassifierEval {
            model: self.path,
            backend: self.session.info().backend.to_string(),
            macro_auc: known.iter().sum::<f64>() / known.len().max(1) as f64,
            auc,
        }
    }
}

#[derive(Serialize)]
struct CxrEvalOut {
    model: PathBuf,
    backend: String,
    precision: String,
    studies: usize,
    macro_f1: f64,
    f1: std::collections::BTreeMap<String, f64>,
    exact_match: f64,
    mean_ms: f64,
    samples: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    classifier: Option<ClassifierEval>,
}

/// Report-level accuracy of a report model on held-out phantom radiographs: the labels its
/// texts state against the drawn findings (macro F1 over the labels).
pub fn cxr_eval(a: CxrEvalArgs) -> Result<()> {
    use medinfer_pipelines::cxr::phantom;
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    let kind = backend(&a.gen.backend)?;
    let g = a.gen.load(&a.model, kind)?;
    let o = a.gen.overrides();
    let classifier = match &a.classifier {
        Some(p) if p.as_os_str() == "none" => None,
        Some(p) => Some(p.clone()),
        None => Some(a.model.join("classifier.onnx")).filter(|p| p.is_file()),
    };
    let mut scorer = classifier
        .map(|p| ClassifierScorer::load(&p, kind))
        .transpose()?;
    let pb = bar(a.count, "phantoms", a.json);
    let (mut truth, mut pred, mut samples) = (Vec::new(), Vec::new(), Vec::new());
    let mut total_ms = 0.0;
    for seed in a.first_seed..a.first_seed + a.count as u64 {
        let p = phantom::cxr(seed);
        let px = g.processor().pixels(&phantom::to_image(&p))?;
        let r = g.generate_pixels(&px, &o)?;
        total_ms += r.timings.total_ms;
        if let Some(c) = scorer.as_mut() {
            c.score(&p)?;
        }
        let labels = phantom::labels_from_text(&r.text);
        if samples.len() < a.samples {
            samples.push(serde_json::json!({
                "seed": seed, "truth": p.truth.text, "generated": r.text,
                "labels_match": labels == p.truth.labels,
            }));
        }
        truth.push(p.truth.labels);
        pred.push(labels);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let classifier = scorer.map(ClassifierScorer::finish);
    let (f1, macro_f1) = phantom::f1_scores(&truth, &pred);
    let exact = truth.iter().zip(&pred).filter(|(t, p)| t == p).count() as f64 / a.count as f64;
    let infos = g.sessions();
    let out = CxrEvalOut {
        model: a.model.clone(),
        backend: infos[1].backend.to_string(),
        precision: format!(
            "{} (encoder {} {})",
            infos[1].effective_precision, infos[0].backend, infos[0].effective_precision
        ),
        studies: a.count,
        macro_f1,
        f1,
        exact_match: exact,
        mean_ms: total_ms / a.count as f64,
        samples,
        classifier,
    };
    if a.json {
        return print_json(&out);
    }
    println!(
        "{} held-out phantoms (seeds {}..{}), {} {}: macro F1 {:.3}, all labels right {:.1} %, {:.0} ms per report",
        out.studies,
        a.first_seed,
        a.first_seed + a.count as u64 - 1,
        out.backend,
        out.precision,
        out.macro_f1,
        out.exact_match * 100.0,
        out.mean_ms
    );
    for (l, v) in &out.f1 {
        println!("  {l:<18} F1 {v:.3}");
    }
    if let Some(c) = &out.classifier {
        println!(
            "classifier {} on {}: macro AUC {:.3}",
            c.model.display(),
            c.backend,
            c.macro_auc
        );
        for (l, v) in &c.auc {
            match v {
                Some(v) => println!("  {l:<18} AUC {v:.3}"),
                None => println!("  {l:<18} AUC n/a (one class only)"),
            }
        }
    }
    for s in &out.samples {
        println!(
            "seed {}\n  truth:     {}\n  generated: {}",
            s["seed"], s["truth"], s["generated"]
        );
    }
    Ok(())
}
