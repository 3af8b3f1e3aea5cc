//! The generator: encoder once, then the decoder step by step with its key/value cache kept
//! in the engine.
use crate::decode::{self, DecodeSettings, Detokenize, EarlyStopping, StepModel};
use crate::image::ImageProcessor;
use crate::model::{roles, DecoderChoice, DecoderFiles, ModelConfig, ModelFiles, Role};
use crate::GenerateError;
use medinfer_core::{DType, Tensor, TensorData};
use medinfer_engine::{load_dynamic, BackendKind, DynSession, SessionOptions, Value};
use serde::Serialize;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How to load a report model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Engine (ONNX Runtime or OpenVINO: the decoder's shapes change every step).
    pub backend: BackendKind,
    /// Engine options (threads, precision).
    pub session: SessionOptions,
    /// Merged or split decoder when the export has both.
    pub decoder: DecoderChoice,
    /// Hoist the work that depends on the encoder's states alone (cross-attention keys and
    /// values) out of the per-token decoder: computed once per report instead of per token
    /// (split layout; see [`medinfer_onnx::hoist`]).
    pub hoist: bool,
    /// Run the encoder on another engine or precision than the decoder (e.g. OpenVINO BF16
    /// for the compute-bound encoder, ONNX Runtime's int8 weight-only kernels for the
    /// bandwidth-bound decoder); None = the decoder's.
    pub encoder: Option<(BackendKind, SessionOptions)>,
}

/// The per-token decoder's encoder-only part, run once per generation.
struct Hoist {
    precompute: DynSession,
    /// Precompute inputs: encoder states or encoder mask.
    inputs: Vec<Role>,
    /// Nodes moved out of the per-token decoder.
    nodes: usize,
    /// What the shape folding before the split did.
    fold: medinfer_onnx::symdims::FoldReport,
    /// Holds the rewritten models for the sessions' lifetime.
    _work: tempfile::TempDir,
}

/// One decoder session and the roles of its inputs.
struct Dec {
    session: DynSession,
    roles: Vec<Role>,
    logits: usize,
}

impl Dec {
    fn new(session: DynSession) -> Result<Dec, GenerateError> {
        Dec::with_hoisted(session, &[])
    }

    fn with_hoisted(session: DynSession, hoisted: &[String]) -> Result<Dec, GenerateError> {
        let roles = roles(session.inputs(), session.path(), hoisted)?;
        let logits = session
            .output_index("logits")
            .ok_or_else(|| GenerateError::Layout {
                path: session.path().to_path_buf(),
                message: "has no output called 'logits'".into(),
            })?;
        Ok(Dec {
            session,
            roles,
            logits,
        })
    }

    fn past_count(&self) -> usize {
        self.roles
            .iter()
            .filter(|r| matches!(r, Role::Past { .. }))
            .count()
    }
}

/// A loaded report model.
pub struct Generator {
    files: ModelFiles,
    config: ModelConfig,
    processor: ImageProcessor,
    tokenizer: tokenizers::Tokenizer,
    encoder: DynSession,
    /// First-step decoder (split layout) or the merged decoder.
    first: Dec,
    /// Decoder with the cache (split layout); None for a merged decoder.
    with_past: Option<Dec>,
    /// Its hoisted encoder-only part.
    hoist: Option<Hoist>,
    vocab: usize,
    hidden: usize,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("dir", &self.files.dir)
            .finish()
    }
}

/// Timings of one generation, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    /// Image to pixel values.
    pub preprocess_ms: f64,
    /// The encoder.
    pub encoder_ms: f64,
    /// From the start of the encoder to the first generated token (encoder + first step).
    pub first_token_ms: f64,
    /// Mean time of each later decoder step.
    pub per_token_ms: f64,
    /// The whole generation, from pixel values to text.
    pub total_ms: f64,
}

/// What one generation gives.
#[derive(Clone, Debug, Serialize)]
pub struct Generation {
    /// The text, special tokens removed.
    pub text: String,
    /// The text split into findings (sentences).
    pub findings: Vec<String>,
    /// All token ids, the start token first.
    pub tokens: Vec<u32>,
    /// Tokens generated (start token not counted).
    pub new_tokens: usize,
    /// Why generation stopped: `eos`, `max_new_tokens` or `stop_string`.
    pub stopped_by: String,
    /// Beam search's score of the chosen hypothesis.
    pub score: Option<f32>,
    /// Decoder calls.
    pub steps: usize,
    /// Times.
    pub timings: Timings,
}

/// Decoding settings a caller may override; `None` = the model's generation_config.json,
/// else Hugging Face's default.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// Tokens to generate at most.
    pub max_new_tokens: Option<usize>,
    /// Beams (1 = greedy).
    pub num_beams: Option<usize>,
    /// Length penalty of beam search.
    pub length_penalty: Option<f32>,
    /// Repetition penalty.
    pub repetition_penalty: Option<f32>,
    /// No n-gram of this size twice.
    pub no_repeat_ngram_size: Option<usize>,
    /// Stop once the text contains one of these.
    pub stop_strings: Vec<String>,
    /// Beam search's stopping rule.
    pub early_stopping: Option<EarlyStopping>,
    /// Never stop at the end token (benchmarks that generate a fixed length).
    pub ignore_eos: bool,
}

struct Text<'a>(&'a tokenizers::Tokenizer);

impl Detokenize for Text<'_> {
    fn text(&self, ids: &[u32]) -> String {
        self.0.decode(ids, true).unwrap_or_default()
    }
}

/// Sentences of a findings text: split after '.', '!', '?', ';' or a line break, trimmed.
pub fn split_findings(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        if ch == '\n' || ch == ';' {
            push_item(&mut out, &mut cur);
            continue;
        }
        cur.push(ch);
        if matches!(ch, '.' | '!' | '?') {
            push_item(&mut out, &mut cur);
        }
    }
    push_item(&mut out, &mut cur);
    out
}

fn push_item(out: &mut Vec<String>, cur: &mut String) {
    let t = cur.trim().trim_start_matches(['-', '*', '•']).trim();
    if t.chars().any(|c| c.is_alphanumeric()) {
        out.push(t.to_string());
    }
    cur.clear();
}

fn dim(spec: &medinfer_engine::DynSpec, i: usize) -> Option<usize> {
    spec.dims.get(i).copied().flatten()
}

impl Generator {
    /// Loads the export in `dir`: checks its files, its configs, that the encoder's output
    /// fits the decoder, and that medinfer knows every decoder input.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Generator, GenerateError> {
        let files = ModelFiles::find(dir, opts.decoder)?;
        let config = ModelConfig::read(&files)?;
        let tokenizer = tokenizers::Tokenizer::from_file(&files.tokenizer).map_err(|e| {
            GenerateError::Model {
                path: files.tokenizer.clone(),
                message: format!("is not a tokenizer the `tokenizers` library can read: {e}"),
            }
        })?;
        let encoder = match &opts.encoder {
            Some((kind, session)) => load_dynamic(*kind, &files.encoder, session)?,
            None => load_dynamic(opts.backend, &files.encoder, &opts.session)?,
        };
        let first = Dec::new(load_dynamic(
            opts.backend,
            match &files.decoder {
                DecoderFiles::Merged(p) => p,
                DecoderFiles::Split { first, .. } => first,
            },
            &opts.session,
        )?)?;
        // The encoder takes pixel values and gives [batch, seq, hidden].
        let px = encoder
            .inputs()
            .first()
            .ok_or_else(|| GenerateError::Layout {
                path: files.encoder.clone(),
                message: "has no input".into(),
            })?;
        if encoder.inputs().len() != 1 || px.dims.len() != 4 {
            return Err(GenerateError::Layout {
                path: files.encoder.clone(),
                message: format!(
                    "must take one image input [batch, channels, height, width]; it takes {}",
                    encoder
                        .inputs()
                        .iter()
                        .map(|s| format!(
                            "{} {}",
                            s.name,
                            medinfer_engine::dynamic::dims_text(&s.dims)
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        if encoder.outputs().is_empty() {
            return Err(GenerateError::Layout {
                path: files.encoder.clone(),
                message: "has no output".into(),
            });
        }
        let dec_states = first
            .session
            .inputs()
            .iter()
            .zip(&first.roles)
            .find(|(_, r)| **r == Role::EncoderStates)
            .map(|(s, _)| s.clone())
            .ok_or_else(|| GenerateError::Layout {
                path: first.session.path().to_path_buf(),
                message: "has no encoder_hidden_states input: not the decoder of an encoder-decoder model".into(),
            })?;
        // The encoder's real output size: one run on a blank image (exports leave it dynamic;
        // the run also warms the engine up before the first timed report).
        let (h, w) = match (dim(px, 2), dim(px, 3), config.image_size) {
            (Some(h), Some(w), _) => (h, w),
            (_, _, Some(hw)) => hw,
            _ => (224, 224),
        };
        let c = dim(px, 1).or(config.num_channels).unwrap_or(3);
        let blank = Tensor::zeros(DType::F32, vec![1, c, h, w])
            .map_err(|e| GenerateError::Run(e.to_string()))?;
        let probe = encoder
            .run(vec![(px.name.clone(), Value::from(blank))])
            .map_err(|e| GenerateError::Layout {
                path: files.encoder.clone(),
                message: format!("does not run on a blank [1, {c}, {h}, {w}] image: {e}"),
            })?;
        let enc_hidden = probe.first().and_then(|v| v.shape().get(2).copied());
        let dec_hidden = dim(&dec_states, 2);
        if let (Some(a), Some(b)) = (enc_hidden, dec_hidden) {
            if a != b {
                return Err(GenerateError::Mismatch(format!(
                    "{} gives hidden states of size {a}, but {} takes encoder_hidden_states of size {b}: the encoder and the decoder are not from one model",
                    files.encoder.display(),
                    first.session.path().display()
                )));
            }
        }
        let hidden = enc_hidden.or(dec_hidden).unwrap_or(0);
        let (with_past, hoist) = match &files.decoder {
            DecoderFiles::Merged(_) => (None, None),
            DecoderFiles::Split { with_past, .. } => {
                let states = probe
                    .into_iter()
                    .next()
                    .ok_or_else(|| GenerateError::Run("the encoder gave no output".into()))?
                    .into_tensor()?;
                let hoisted = if opts.hoist {
                    hoist(with_past, opts, &states)?
                } else {
                    None
                };
                match hoisted {
                    Some((step, h, frontier)) => {
                        (Some(Dec::with_hoisted(step, &frontier)?), Some(h))
                    }
                    None => (
                        Some(Dec::new(load_dynamic(
                            opts.backend,
                            with_past,
                            &opts.session,
                        )?)?),
                        None,
                    ),
                }
            }
        };
        let logits_spec = &first.session.outputs()[first.logits];
        let vocab = dim(logits_spec, 2).or(config.vocab_size).ok_or_else(|| GenerateError::Layout {
            path: first.session.path().to_path_buf(),
            message: "states no vocabulary size (logits [batch, seq, ?] and no vocab_size in config.json)".into(),
        })?;
        if let Some(v) = config.vocab_size {
            if v != vocab {
                return Err(GenerateError::Mismatch(format!(
                    "{} says vocab_size {v}, but {} gives logits over {vocab} tokens",
                    files.config.display(),
                    first.session.path().display()
                )));
            }
        }
        if tokenizer.get_vocab_size(true) > vocab {
            return Err(GenerateError::Mismatch(format!(
                "{} has {} tokens but the decoder predicts {vocab}: tokenizer and model do not belong together",
                files.tokenizer.display(),
                tokenizer.get_vocab_size(true)
            )));
        }
        if let Some(wp) = &with_past {
            if wp.past_count() == 0 {
                return Err(GenerateError::Layout {
                    path: wp.session.path().to_path_buf(),
                    message: "takes no past keys / values: not a decoder with past".into(),
                });
            }
        } else if first.past_count() == 0 || !first.roles.contains(&Role::UseCache) {
            return Err(GenerateError::Layout {
                path: first.session.path().to_path_buf(),
                message: "is used as a merged decoder but lacks past_key_values.* or use_cache_branch inputs".into(),
            });
        }
        // Every cached value must be renewed by every decoder call (a seq2seq cache whose
        // cross-attention part is computed once and then only read is refused here, by name).
        let next_dec = with_past.as_ref().unwrap_or(&first);
        for d in std::iter::once(&first).chain(with_past.as_ref()) {
            for (spec, role) in next_dec.session.inputs().iter().zip(&next_dec.roles) {
                if let Role::Past { present, .. } = role {
                    if d.session.output_index(present).is_none() {
                        return Err(GenerateError::Layout {
                            path: d.session.path().to_path_buf(),
                            message: format!(
                                "gives no '{present}' to feed the next step's '{}': medinfer supports caches that every step renews (decoder-only layout, past_key_values.N.key / .value, and seq2seq layouts whose decoders return every present); a cross-attention cache computed once is not supported yet",
                                spec.name
                            ),
                        });
                    }
                }
            }
        }
        let input_hw = (h, w);
        let processor = ImageProcessor::read(files.preprocessor_config.as_deref(), input_hw)?;
        {
            let (h, w) = input_hw;
            if processor.size != (h, w) {
                return Err(GenerateError::Mismatch(format!(
                    "{} resizes to {}x{}, but {} takes {h}x{w} images",
                    files
                        .preprocessor_config
                        .as_deref()
                        .unwrap_or(Path::new("preprocessor defaults"))
                        .display(),
                    processor.size.0,
                    processor.size.1,
                    files.encoder.display()
                )));
            }
        }
        // With the encoder-only work hoisted, the step decoder serves the first token too
        // (from an empty cache, as a merged decoder's first step): the first-step decoder,
        // which would recompute that work once more, is dropped with its memory.
        let (first, with_past) = match (hoist.is_some(), with_past) {
            (true, Some(step)) => (step, None),
            (_, with_past) => (first, with_past),
        };
        Ok(Generator {
            files,
            config,
            processor,
            tokenizer,
            encoder,
            first,
            with_past,
            hoist,
            vocab,
            hidden,
        })
    }

    /// Nodes of the per-token decoder moved to the once-per-report precompute model (0 when
    /// nothing was hoisted).
    pub fn hoisted_nodes(&self) -> usize {
        self.hoist.as_ref().map_or(0, |h| h.nodes)
    }

    /// Nodes the shape folding removed from the per-token decoder before the hoist (0 when
    /// nothing was hoisted).
    pub fn folded_away_nodes(&self) -> usize {
        self.hoist.as_ref().map_or(0, |h| h.fold.removed)
    }

    /// The model's folder and files.
    pub fn files(&self) -> &ModelFiles {
        &self.files
    }

    /// What the configs say.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The image preprocessing.
    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// The engine sessions' descriptions (encoder, decoder(s)).
    pub fn sessions(&self) -> Vec<&medinfer_engine::SessionInfo> {
        let mut v = vec![self.encoder.info(), self.first.session.info()];
        if let Some(w) = &self.with_past {
            v.push(w.session.info());
        }
        v
    }

    /// The decoding settings: the overrides, else generation_config.json, else Hugging Face's
    /// defaults. Refuses a length beyond the decoder's positions.
    pub fn settings(&self, o: &Overrides) -> Result<DecodeSettings, GenerateError> {
        let d = &self.config.defaults;
        let num = |k: &str| d.get(k).and_then(Json::as_f64);
        let max_new_tokens = o
            .max_new_tokens
            .or_else(|| num("max_new_tokens").map(|v| v as usize))
            .or_else(|| num("max_length").map(|v| (v as usize).saturating_sub(1)))
            .unwrap_or(19);
        if max_new_tokens == 0 {
            return Err(GenerateError::Input(
                "max_new_tokens must be at least 1".into(),
            ));
        }
        if let Some(p) = self.config.max_positions {
            if 1 + max_new_tokens > p {
                return Err(GenerateError::TooLong(format!(
                    "max_new_tokens {max_new_tokens} needs {} decoder positions, but {} says the decoder has {p} (n_positions / max_position_embeddings): ask for at most {}",
                    1 + max_new_tokens,
                    self.files.config.display(),
                    p - 1
                )));
            }
        }
        let num_beams = o
            .num_beams
            .or_else(|| num("num_beams").map(|v| v as usize))
            .unwrap_or(1)
            .max(1);
        let early_stopping = o.early_stopping.unwrap_or(match d.get("early_stopping") {
            Some(Json::Bool(true)) => EarlyStopping::True,
            Some(Json::String(s)) if s == "never" => EarlyStopping::Never,
            _ => EarlyStopping::False,
        });
        Ok(DecodeSettings {
            max_new_tokens,
            num_beams,
            length_penalty: o
                .length_penalty
                .or_else(|| num("length_penalty").map(|v| v as f32))
                .unwrap_or(1.0),
            early_stopping,
            repetition_penalty: o
                .repetition_penalty
                .or_else(|| num("repetition_penalty").map(|v| v as f32))
                .unwrap_or(1.0),
            no_repeat_ngram_size: o
                .no_repeat_ngram_size
                .or_else(|| num("no_repeat_ngram_size").map(|v| v as usize))
                .unwrap_or(0),
            eos: if o.ignore_eos {
                vec![]
            } else {
                self.config.eos.clone()
            },
            start: self.config.decoder_start,
            stop_strings: o.stop_strings.clone(),
        })
    }

    /// Generates from an image file (PNG, JPEG, DICOM): the processor, then
    /// [`Generator::generate_pixels`].
    pub fn generate_file(&self, path: &Path, o: &Overrides) -> Result<Generation, GenerateError> {
        let t0 = Instant::now();
        let px = self.pixels_file(path)?;
        let pre = t0.elapsed().as_secs_f64() * 1e3;
        let mut g = self.generate_pixels(&px, o)?;
        g.timings.preprocess_ms = pre;
        g.timings.total_ms += pre;
        Ok(g)
    }

    /// The encoder's pixel values for an image file (PNG, JPEG, DICOM; its first frame).
    pub fn pixels_file(&self, path: &Path) -> Result<Tensor, GenerateError> {
        let images = medinfer_io::read_images(path)?;
        let img = images
            .first()
            .ok_or_else(|| GenerateError::Input(format!("{} holds no image", path.display())))?;
        self.processor.pixels(img).map_err(|e| match e {
            GenerateError::Input(m) => GenerateError::Input(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Generates from pixel values `[1, 3, H, W]` (already preprocessed).
    pub fn generate_pixels(
        &self,
        pixels: &Tensor,
        o: &Overrides,
    ) -> Result<Generation, GenerateError> {
        let s = self.settings(o)?;
        let spec = &self.encoder.inputs()[0];
        let (h, w) = self.processor.size;
        let c = self.config.num_channels.unwrap_or(3);
        if pixels.shape() != [1, c, h, w] || !spec.accepts(pixels.shape()) {
            return Err(GenerateError::Input(format!(
                "pixel values must be [1, {c}, {h}, {w}] for {} ({} {}), got {:?}",
                self.files.encoder.display(),
                spec.name,
                medinfer_engine::dynamic::dims_text(&spec.dims),
                pixels.shape()
            )));
        }
        let t0 = Instant::now();
        let out = self
            .encoder
            .run(vec![(spec.name.clone(), Value::from(pixels.clone()))])?;
        let states = out
            .into_iter()
            .next()
            .ok_or_else(|| GenerateError::Run("the encoder gave no output".into()))?
            .into_tensor()?;
        let encoder_ms = t0.elapsed().as_secs_f64() * 1e3;
        if states.shape().len() != 3 || (self.hidden != 0 && states.shape()[2] != self.hidden) {
            return Err(GenerateError::Mismatch(format!(
                "{} gave {:?}, the decoder needs [batch, seq, {}]",
                self.files.encoder.display(),
                states.shape(),
                self.hidden
            )));
        }
        let rows = s.num_beams;
        let states = repeat_rows(&states, rows)?;
        let shared = match &self.hoist {
            Some(h) => {
                let feed = precompute_feed(&h.precompute, &h.inputs, &states)?;
                let step = &self.with_past.as_ref().unwrap_or(&self.first).session;
                let mut kept = Vec::new();
                for v in h.precompute.run(feed)? {
                    kept.push(step.keep(v)?);
                }
                kept
            }
            None => Vec::new(),
        };
        let mut stepper = EngineStepper {
            g: self,
            shared,
            states,
            cache: None,
            past_len: 0,
            rows,
            step_ms: Vec::new(),
        };
        let decoded = decode::decode(&mut stepper, &s, &Text(&self.tokenizer))?;
        let total_ms = t0.elapsed().as_secs_f64() * 1e3;
        let text = self
            .tokenizer
            .decode(&decoded.tokens, true)
            .map_err(|e| GenerateError::Run(format!("decoding tokens to text: {e}")))?;
        let first_step = stepper.step_ms.first().copied().unwrap_or(0.0);
        let later = &stepper.step_ms[stepper.step_ms.len().min(1)..];
        Ok(Generation {
            findings: split_findings(&text),
            text,
            new_tokens: decoded.tokens.len() - 1,
            tokens: decoded.tokens,
            stopped_by: decoded.stopped_by.to_string(),
            score: decoded.score,
            steps: decoded.steps,
            timings: Timings {
                preprocess_ms: 0.0,
                encoder_ms,
                first_token_ms: encoder_ms + first_step,
                per_token_ms: if later.is_empty() {
                    0.0
                } else {
                    later.iter().sum::<f64>() / later.len() as f64
                },
                total_ms,
            },
        })
    }
}

/// `t` ([1, ...]) repeated to `rows` rows.
fn repeat_rows(t: &Tensor, rows: usize) -> Result<Tensor, GenerateError> {
    let bad = |e: medinfer_core::CoreError| GenerateError::Run(e.to_string());
    let mut shape = t.shape().to_vec();
    let one = t.as_f32().map_err(bad)?;
    shape[0] = rows;
    let mut data = Vec::with_capacity(one.len() * rows);
    for _ in 0..rows {
        data.extend_from_slice(one);
    }
    Tensor::from_f32(shape, data).map_err(bad)
}

fn ints(dtype: DType, shape: Vec<usize>, v: Vec<i64>) -> Result<Value, GenerateError> {
    let data = match dtype {
        DType::I32 => TensorData::I32(v.into_iter().map(|x| x as i32).collect()),
        _ => TensorData::I64(v),
    };
    Ok(Value::from(
        Tensor::new(shape, data).map_err(|e| GenerateError::Run(e.to_string()))?,
    ))
}

/// The decoder as a [`StepModel`]: the cache stays in the engine and follows the beams.
struct EngineStepper<'a> {
    g: &'a Generator,
    /// The hoisted precompute model's outputs, lent to every per-token call.
    shared: Vec<Value>,
    /// Encoder states, one row per beam.
    states: Tensor,
    /// Past keys / values in the decoder's past-input order.
    cache: Option<Vec<Value>>,
    past_len: usize,
    rows: usize,
    step_ms: Vec<f64>,
}

impl StepModel for EngineStepper<'_> {
    fn vocab(&self) -> usize {
        self.g.vocab
    }

    fn step(&mut self, tokens: &[u32], parents: &[usize]) -> Result<Vec<f32>, GenerateError> {
        let t0 = Instant::now();
        let rows = self.rows;
        if tokens.len() != rows {
            return Err(GenerateError::Run(format!(
                "{} tokens for {rows} rows",
                tokens.len()
            )));
        }
        let first_call = self.cache.is_none();
        let dec = match (&self.g.with_past, first_call) {
            (Some(wp), false) => wp,
            _ => &self.g.first,
        };
        let mut cache = self.cache.take().unwrap_or_default();
        for v in cache.iter_mut() {
            v.gather_rows(parents)?;
        }
        let mut cache = cache.into_iter();
        let enc_len = self.states.shape()[1];
        let past = self.past_len;
        let mut inputs = Vec::with_capacity(dec.roles.len());
        let mut lent: Vec<(&str, &Value)> = Vec::new();
        for (spec, role) in dec.session.inputs().iter().zip(&dec.roles) {
            let v = match role {
                Role::Hoisted(i) => {
                    let v = self.shared.get(*i).ok_or_else(|| {
                        GenerateError::Run(format!("no precomputed value for '{}'", spec.name))
                    })?;
                    lent.push((spec.name.as_str(), v));
                    continue;
                }
                Role::InputIds => ints(
                    spec.dtype,
                    vec![rows, 1],
                    tokens.iter().map(|&t| t as i64).collect(),
                )?,
                Role::EncoderStates => Value::from(self.states.clone()),
                Role::EncoderMask => {
                    ints(spec.dtype, vec![rows, enc_len], vec![1; rows * enc_len])?
                }
                Role::Mask => ints(spec.dtype, vec![rows, past + 1], vec![1; rows * (past + 1)])?,
                Role::Positions => ints(spec.dtype, vec![rows, 1], vec![past as i64; rows])?,
                Role::CachePosition => ints(spec.dtype, vec![1], vec![past as i64])?,
                Role::UseCache => Value::from(
                    Tensor::new(vec![1], TensorData::Bool(vec![!first_call]))
                        .map_err(|e| GenerateError::Run(e.to_string()))?,
                ),
                Role::Past { .. } => {
                    if first_call {
                        // Merged decoder, first step: an empty cache of the declared layout.
                        let heads = dim(spec, 1).or(self.g.config.heads).ok_or_else(|| {
                            GenerateError::Layout {
                                path: dec.session.path().to_path_buf(),
                                message: format!("cannot tell the heads of '{}'", spec.name),
                            }
                        })?;
                        let head_dim = dim(spec, 3)
                            .or_else(|| Some(self.g.config.hidden? / heads))
                            .ok_or_else(|| GenerateError::Layout {
                                path: dec.session.path().to_path_buf(),
                                message: format!("cannot tell the head size of '{}'", spec.name),
                            })?;
                        Value::from(
                            Tensor::zeros(spec.dtype, vec![rows, heads, 0, head_dim])
                                .map_err(|e| GenerateError::Run(e.to_string()))?,
                        )
                    } else {
                        cache.next().ok_or_else(|| {
                            GenerateError::Run(format!("no cached value for '{}'", spec.name))
                        })?
                    }
                }
            };
            inputs.push((spec.name.clone(), v));
        }
        let mut outputs = dec.session.run_shared(inputs, &lent)?;
        // Renew the cache from the present outputs, in the with-past decoder's input order.
        let next_dec = self.g.with_past.as_ref().unwrap_or(&self.g.first);
        let mut new_cache = Vec::with_capacity(next_dec.past_count());
        for (spec, role) in next_dec.session.inputs().iter().zip(&next_dec.roles) {
            if let Role::Past { present, .. } = role {
                let idx = dec.session.output_index(present).ok_or_else(|| GenerateError::Layout {
                    path: dec.session.path().to_path_buf(),
                    message: format!(
                        "gives no '{present}' for the next step's '{}' (cross-attention caches that are only computed once are not supported yet)",
                        spec.name
                    ),
                })?;
                let placeholder = Value::from(
                    Tensor::zeros(DType::F32, vec![0])
                        .map_err(|e| GenerateError::Run(e.to_string()))?,
                );
                new_cache.push(std::mem::replace(&mut outputs[idx], placeholder));
            }
        }
        let logits = outputs[dec.logits].to_tensor()?;
        let shape = logits.shape().to_vec();
        let data = logits
            .as_f32()
            .map_err(|e| GenerateError::Run(e.to_string()))?;
        if shape.len() != 3 || shape[0] != rows || shape[2] != self.g.vocab {
            return Err(GenerateError::Run(format!(
                "logits {shape:?}, expected [{rows}, seq, {}]",
                self.g.vocab
            )));
        }
        let seq = shape[1];
        let mut out = Vec::with_capacity(rows * self.g.vocab);
        for r in 0..rows {
            let start = (r * seq + seq - 1) * self.g.vocab;
            out.extend_from_slice(&data[start..start + self.g.vocab]);
        }
        self.cache = Some(new_cache);
        self.past_len += 1;
        self.step_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        Ok(out)
    }
}

/// Declares dim `axis` of the graph input `name` to be `len` (where the input exists and has
/// that axis).
fn fix_input_dim(
    model: &mut medinfer_onnx::proto::ModelProto,
    name: &str,
    axis: usize,
    len: usize,
) {
    use medinfer_onnx::proto::{tensor_shape_proto::dimension::Value, type_proto};
    let Some(g) = model.graph.as_mut() else {
        return;
    };
    for i in g
        .input
        .iter_mut()
        .filter(|i| i.name.as_deref() == Some(name))
    {
        if let Some(type_proto::Value::TensorType(t)) =
            i.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            if let Some(d) = t.shape.as_mut().and_then(|s| s.dim.get_mut(axis)) {
                d.value = Some(Value::DimValue(len as i64));
            }
        }
    }
}

/// The precompute model's inputs for encoder states `states` ([rows, seq, hidden]).
fn precompute_feed(
    precompute: &DynSession,
    roles: &[Role],
    states: &Tensor,
) -> Result<Vec<(String, Value)>, GenerateError> {
    let (rows, enc_len) = (states.shape()[0], states.shape()[1]);
    precompute
        .inputs()
        .iter()
        .zip(roles)
        .map(|(spec, role)| {
            let v = match role {
                Role::EncoderMask => {
                    ints(spec.dtype, vec![rows, enc_len], vec![1; rows * enc_len])?
                }
                _ => Value::from(states.clone()),
            };
            Ok((spec.name.clone(), v))
        })
        .collect()
}

/// Splits the per-token decoder `path` into a precompute model (everything that depends on the
/// encoder's states alone) and a step model, saved in a temp folder and loaded; None when
/// nothing can be hoisted.
fn hoist(
    path: &Path,
    opts: &LoadOptions,
    states: &Tensor,
) -> Result<Option<(DynSession, Hoist, Vec<String>)>, GenerateError> {
    let mut model = medinfer_onnx::load_model(path).map_err(|e| GenerateError::Model {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    // Shape arithmetic the graph fixes (an attention's head size read back through Shape,
    // reshapes around the projections and into heads) goes first: what the head size scales
    // on the encoder's side is then hoisted too, and the step runs ~2,900 fewer nodes on a
    // GPT-2-base decoder.
    // The encoder's output length is fixed for this generator (the image processor always
    // gives the configured size), so the decoder is told it: what the exporter computes from
    // it per token (cross-attention mask slices) then folds as well. A call with another
    // length would be refused by the session's shape check, not misread.
    if let Some(&enc_len) = states.shape().get(1) {
        fix_input_dim(&mut model, "encoder_hidden_states", 1, enc_len);
        fix_input_dim(&mut model, "encoder_attention_mask", 1, enc_len);
    }
    let fold = medinfer_onnx::symdims::fold_static_dims(&mut model);
    let invariant = ["encoder_hidden_states", "encoder_attention_mask"];
    let Some(h) = medinfer_onnx::hoist::split(&model, &invariant) else {
        return Ok(None);
    };
    drop(model);
    let work = tempfile::Builder::new()
        .prefix("medinfer-hoist-")
        .tempdir()
        .map_err(|e| GenerateError::Run(format!("creating a temp folder: {e}")))?;
    let save = |m: &medinfer_onnx::proto::ModelProto, name: &str| {
        let p = work.path().join(name);
        medinfer_onnx::save_model(m, &p).map_err(|e| GenerateError::Run(e.to_string()))?;
        Ok::<_, GenerateError>(p)
    };
    let pre_path = save(&h.precompute, "precompute.onnx")?;
    let precompute = load_dynamic(opts.backend, &pre_path, &opts.session)?;
    let inputs: Vec<Role> = precompute
        .inputs()
        .iter()
        .map(|s| {
            if s.name == "encoder_attention_mask" {
                Role::EncoderMask
            } else {
                Role::EncoderStates
            }
        })
        .collect();
    // Ranks of the frontier tensors: one run on the encoder's output for a blank image.
    let outs = precompute.run(precompute_feed(&precompute, &inputs, states)?)?;
    let ranks: Vec<(String, usize)> = h
        .frontier
        .iter()
        .zip(&outs)
        .map(|(n, v)| (n.clone(), v.shape().len()))
        .collect();
    let mut step_model = h.step;
    medinfer_onnx::hoist::declare_ranks(&mut step_model, &ranks);
    let step_path = save(&step_model, "decoder_with_past_step.onnx")?;
    // What the engines will run, for a look or a side-by-side timing
    // (benchmarks/report/step_ab.py): MEDINFER_KEEP_HOIST=DIR.
    if let Some(dir) = std::env::var_os("MEDINFER_KEEP_HOIST") {
        let dir = PathBuf::from(dir);
        let copy = |from: &Path, name: &str| {
            std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::copy(from, dir.join(name)))
                .map_err(|e| {
                    GenerateError::Run(format!("MEDINFER_KEEP_HOIST {}: {e}", dir.display()))
                })
        };
        copy(&pre_path, "precompute.onnx")?;
        copy(&step_path, "step.onnx")?;
    }
    drop(step_model);
    let step = load_dynamic(opts.backend, &step_path, &opts.session)?;
    Ok(Some((
        step,
        Hoist {
            precompute,
            inputs,
            nodes: h.hoisted_nodes,
            fold,
            _work: work,
        },
        h.frontier,
    )))
}
