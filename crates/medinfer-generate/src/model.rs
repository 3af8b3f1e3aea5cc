//! A Hugging Face VisionEncoderDecoder ONNX export on disk: which files, what the configs say,
//! and how the decoder's inputs and key/value cache are laid out.
use crate::GenerateError;
use medinfer_engine::DynSpec;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

/// The files of an export (optimum's `image-to-text-with-past` layout).
#[derive(Clone, Debug)]
pub struct ModelFiles {
    /// The folder.
    pub dir: PathBuf,
    /// `encoder_model.onnx`.
    pub encoder: PathBuf,
    /// The decoder: `decoder_model_merged.onnx` (one file with a `use_cache_branch` input), or
    /// `decoder_model.onnx` for the first step with `decoder_with_past_model.onnx` after it.
    pub decoder: DecoderFiles,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// `config.json`.
    pub config: PathBuf,
    /// `generation_config.json`, when there is one.
    pub generation_config: Option<PathBuf>,
    /// `preprocessor_config.json`, when there is one.
    pub preprocessor_config: Option<PathBuf>,
}

/// Which decoder files an export has.
#[derive(Clone, Debug)]
pub enum DecoderFiles {
    /// One merged decoder.
    Merged(PathBuf),
    /// A first-step decoder and a decoder that takes the cache.
    Split {
        /// `decoder_model.onnx`.
        first: PathBuf,
        /// `decoder_with_past_model.onnx`.
        with_past: PathBuf,
    },
}

/// Which decoder layout to use when an export has both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecoderChoice {
    /// The split pair if present (its per-token decoder can have the encoder-only work
    /// hoisted out), else the merged file.
    Auto,
    /// `decoder_model_merged.onnx`.
    Merged,
    /// `decoder_model.onnx` + `decoder_with_past_model.onnx`.
    Split,
}

impl ModelFiles {
    /// Finds the files in `dir`, naming what is missing.
    pub fn find(dir: &Path, choice: DecoderChoice) -> Result<ModelFiles, GenerateError> {
        if !dir.is_dir() {
            return Err(GenerateError::Model {
                path: dir.to_path_buf(),
                message: "is not a folder (a report model is a folder: encoder_model.onnx, decoder_model_merged.onnx or decoder_model.onnx + decoder_with_past_model.onnx, tokenizer.json, config.json)".into(),
            });
        }
        let need = |name: &str, hint: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(GenerateError::Model {
                    path: dir.to_path_buf(),
                    message: format!("has no {name}: {hint}"),
                })
            }
        };
        let opt = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        let encoder = need(
            "encoder_model.onnx",
            "export the model with `optimum-cli export onnx --task image-to-text-with-past`",
        )?;
        let merged = opt("decoder_model_merged.onnx");
        let first = opt("decoder_model.onnx");
        let with_past = opt("decoder_with_past_model.onnx");
        let decoder = match (choice, merged, first, with_past) {
            (DecoderChoice::Auto | DecoderChoice::Split, _, Some(first), Some(with_past)) => {
                DecoderFiles::Split { first, with_past }
            }
            (DecoderChoice::Auto | DecoderChoice::Merged, Some(m), _, _) => DecoderFiles::Merged(m),
            (DecoderChoice::Merged, None, _, _) => {
                return Err(GenerateError::Model {
                    path: dir.to_path_buf(),
                    message: "has no decoder_model_merged.onnx (asked for the merged decoder)".into(),
                })
            }
            _ => {
                return Err(GenerateError::Model {
                    path: dir.to_path_buf(),
                    message: "has no decoder: it needs decoder_model_merged.onnx, or decoder_model.onnx and decoder_with_past_model.onnx (a decoder without the cache would recompute every position each step)".into(),
                })
            }
        };
        let tokenizer = need(
            "tokenizer.json",
            "save the tokenizer beside the model (`tokenizer.save_pretrained(dir)` writes it for fast tokenizers)",
        )?;
        let config = need(
            "config.json",
            "the export's model config (`model.config.save_pretrained(dir)`)",
        )?;
        Ok(ModelFiles {
            dir: dir.to_path_buf(),
            encoder,
            decoder,
            tokenizer,
            config,
            generation_config: opt("generation_config.json"),
            preprocessor_config: opt("preprocessor_config.json"),
        })
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Json, GenerateError> {
    let text = std::fs::read_to_string(path).map_err(|e| GenerateError::Model {
        path: path.to_path_buf(),
        message: format!("cannot be read: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| GenerateError::Model {
        path: path.to_path_buf(),
        message: format!("is not valid JSON: {e}"),
    })
}

fn u(j: &Json, keys: &[&str]) -> Option<usize> {
    keys.iter()
        .find_map(|k| j.get(*k).and_then(Json::as_u64))
        .map(|v| v as usize)
}

/// Token ids given as a number or a list of numbers.
fn ids(j: Option<&Json>) -> Vec<u32> {
    match j {
        Some(Json::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_u64().map(|v| v as u32))
            .collect(),
        _ => vec![],
    }
}

/// What the configs say that generation needs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelConfig {
    /// Decoder architecture (`gpt2`, ...).
    pub decoder_type: String,
    /// Positions the decoder has (`n_positions` / `max_position_embeddings`), if stated.
    pub max_positions: Option<usize>,
    /// Vocabulary size.
    pub vocab_size: Option<usize>,
    /// Attention heads of the decoder.
    pub heads: Option<usize>,
    /// Hidden size of the decoder.
    pub hidden: Option<usize>,
    /// The token decoding starts from.
    pub decoder_start: u32,
    /// End tokens.
    pub eos: Vec<u32>,
    /// Padding token.
    pub pad: Option<u32>,
    /// The encoder's image size (`encoder.image_size`), if stated.
    pub image_size: Option<(usize, usize)>,
    /// The encoder's input channels, if stated.
    pub num_channels: Option<usize>,
    /// Generation defaults from generation_config.json: max_new_tokens, num_beams,
    /// length_penalty, no_repeat_ngram_size, repetition_penalty, early_stopping.
    pub defaults: Json,
}

impl ModelConfig {
    /// Reads config.json and generation_config.json.
    pub fn read(files: &ModelFiles) -> Result<ModelConfig, GenerateError> {
        let cfg = read_json(&files.config)?;
        let gen = match &files.generation_config {
            Some(p) => read_json(p)?,
            None => Json::Object(Default::default()),
        };
        let dec = cfg.get("decoder").cloned().unwrap_or_else(|| cfg.clone());
        let pick = |k: &str| gen.get(k).or_else(|| cfg.get(k)).or_else(|| dec.get(k));
        let decoder_start = ids(pick("decoder_start_token_id"))
            .first()
            .copied()
            .or_else(|| ids(pick("bos_token_id")).first().copied())
            .ok_or_else(|| GenerateError::Model {
                path: files.config.clone(),
                message: "states no decoder_start_token_id (nor bos_token_id): medinfer cannot know the first token".into(),
            })?;
        let eos = ids(pick("eos_token_id"));
        Ok(ModelConfig {
            decoder_type: dec
                .get("model_type")
                .and_then(Json::as_str)
                .unwrap_or("?")
                .to_string(),
            max_positions: u(&dec, &["n_positions", "max_position_embeddings"]),
            vocab_size: u(&dec, &["vocab_size"]),
            heads: u(
                &dec,
                &["n_head", "num_attention_heads", "decoder_attention_heads"],
            ),
            hidden: u(&dec, &["n_embd", "hidden_size", "d_model"]),
            decoder_start,
            eos,
            pad: ids(pick("pad_token_id")).first().copied(),
            image_size: cfg.get("encoder").and_then(|e| match e.get("image_size") {
                Some(Json::Number(n)) => n.as_u64().map(|v| (v as usize, v as usize)),
                Some(Json::Array(a)) if a.len() == 2 => {
                    Some((a[0].as_u64()? as usize, a[1].as_u64()? as usize))
                }
                _ => None,
            }),
            num_channels: cfg.get("encoder").and_then(|e| u(e, &["num_channels"])),
            defaults: gen,
        })
    }
}

/// What a decoder input is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// `input_ids`.
    InputIds,
    /// `encoder_hidden_states`.
    EncoderStates,
    /// `encoder_attention_mask`: ones.
    EncoderMask,
    /// `attention_mask`: ones over past and new positions.
    Mask,
    /// `position_ids`: past length onwards.
    Positions,
    /// `cache_position`: past length onwards, no batch axis.
    CachePosition,
    /// `use_cache_branch` of a merged decoder.
    UseCache,
    /// A tensor computed once per generation by the hoisted precompute model (index into its
    /// outputs).
    Hoisted(usize),
    /// A past key or value; the output that renews it is named here.
    Past {
        /// The `present...` output.
        present: String,
        /// A cross-attention entry (computed once from the encoder, kept afterwards).
        cross: bool,
    },
}

/// The roles of a decoder's inputs; an input medinfer does not know is refused by name.
pub fn roles(
    specs: &[DynSpec],
    file: &Path,
    hoisted: &[String],
) -> Result<Vec<Role>, GenerateError> {
    specs
        .iter()
        .map(|s| {
            let n = s.name.as_str();
            if let Some(i) = hoisted.iter().position(|h| h == n) {
                return Ok(Role::Hoisted(i));
            }
            Ok(match n {
                "input_ids" | "decoder_input_ids" => Role::InputIds,
                "encoder_hidden_states" => Role::EncoderStates,
                "encoder_attention_mask" => Role::EncoderMask,
                "attention_mask" | "decoder_attention_mask" => Role::Mask,
                "position_ids" => Role::Positions,
                "cache_position" => Role::CachePosition,
                "use_cache_branch" => Role::UseCache,
                _ => past_role(n).ok_or_else(|| GenerateError::Layout {
                    path: file.to_path_buf(),
                    message: format!(
                        "input '{n}' is not one medinfer knows: the decoder's inputs must be input_ids, encoder_hidden_states, optional masks / positions / use_cache_branch, and past keys and values named past_key_values.N.key / .value (decoder-only cache) or past_key_values.N.decoder.key / .encoder.key ... (seq2seq cache), as optimum exports them"
                    ),
                })?,
            })
        })
        .collect()
}

fn past_role(name: &str) -> Option<Role> {
    let rest = name.strip_prefix("past_key_values.")?;
    let mut parts = rest.split('.');
    let layer = parts.next()?;
    layer.parse::<usize>().ok()?;
    let cross = match (parts.next()?, parts.next()) {
        ("key" | "value", None) => false,
        ("decoder", Some("key" | "value")) => false,
        ("encoder", Some("key" | "value")) => true,
        _ => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Role::Past {
        present: format!("present.{rest}"),
        cross,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_names_of_both_layouts_are_understood() {
        assert_eq!(
            past_role("past_key_values.3.key"),
            Some(Role::Past {
                present: "present.3.key".into(),
                cross: false
            })
        );
        assert_eq!(
            past_role("past_key_values.0.encoder.value"),
            Some(Role::Past {
                present: "present.0.encoder.value".into(),
                cross: true
            })
        );
        assert_eq!(past_role("past_key_values.x.key"), None);
        assert_eq!(past_role("past_key_values.1.key_cache"), None);
        assert_eq!(past_role("past.1.key"), None);
    }
}
