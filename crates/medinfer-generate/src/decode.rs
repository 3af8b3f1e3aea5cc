//! Decoding: greedy and beam search with Hugging Face `generate` semantics, over any model that
//! gives next-token logits for a set of rows ([`StepModel`]).
//!
//! The algorithms follow `transformers` 4.57's `GenerationMixin` exactly where the result
//! depends on it (the order of logits processors, beam search's top-k of `max(2, 1 + n_eos) x
//! beams` candidates, which candidates may finish, the length penalty on generated length, the
//! early-stop heuristic), so that the same model gives the same tokens. The parity test
//! (tests/parity.rs) checks it against `model.generate` on a random VisionEncoderDecoder.
use crate::GenerateError;

/// When beam search stops (Hugging Face's `early_stopping`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EarlyStopping {
    /// Stop when `num_beams` hypotheses are finished (`True`).
    True,
    /// Stop when no running beam can beat the finished ones, judged at the current length
    /// (`False`, the default).
    False,
    /// As `False`, judged at the longest possible length when the length penalty favours long
    /// outputs (`"never"`: the canonical beam search).
    Never,
}

/// How to decode.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DecodeSettings {
    /// Tokens generated at most (the start token not counted).
    pub max_new_tokens: usize,
    /// 1 = greedy; more = beam search.
    pub num_beams: usize,
    /// Beam scores are divided by (generated length) to this power.
    pub length_penalty: f32,
    /// Beam search's stopping rule.
    pub early_stopping: EarlyStopping,
    /// > 1 discourages tokens already in the sequence (CTRL's penalty, as Hugging Face).
    pub repetition_penalty: f32,
    /// No n-gram of this size occurs twice (0 = off).
    pub no_repeat_ngram_size: usize,
    /// End-of-sequence tokens.
    pub eos: Vec<u32>,
    /// The token the decoder starts from.
    pub start: u32,
    /// Generation stops once the decoded text contains one of these.
    pub stop_strings: Vec<String>,
}

/// A model that gives next-token logits. Row `i` of a call continues row `parents[i]` of the
/// previous call (beam search reorders its beams); the first call has no previous rows.
pub trait StepModel {
    /// Vocabulary size (length of one row of logits).
    fn vocab(&self) -> usize;
    /// Feeds `tokens[i]` to row `i` and returns `tokens.len() x vocab` logits for the next
    /// position.
    fn step(&mut self, tokens: &[u32], parents: &[usize]) -> Result<Vec<f32>, GenerateError>;
}

/// Text decoding for stop strings: the text of a token sequence.
pub trait Detokenize {
    /// The text of `ids`.
    fn text(&self, ids: &[u32]) -> String;
}

/// The tokens decoded, the start token first.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// Start token, generated tokens, and the end token when one was produced.
    pub tokens: Vec<u32>,
    /// Why it stopped: `eos`, `max_new_tokens` or `stop_string`.
    pub stopped_by: &'static str,
    /// Beam search's length-penalised score of the returned hypothesis.
    pub score: Option<f32>,
    /// Decoder calls made.
    pub steps: usize,
}

/// Applies the logits processors that `generate` applies, in its order: repetition penalty,
/// then the n-gram ban.
pub fn process(seq: &[u32], scores: &mut [f32], s: &DecodeSettings) {
    if s.repetition_penalty != 1.0 {
        let mut seen = vec![false; scores.len()];
        for &t in seq {
            let t = t as usize;
            if t < scores.len() && !seen[t] {
                seen[t] = true;
                let v = scores[t];
                scores[t] = if v < 0.0 {
                    v * s.repetition_penalty
                } else {
                    v / s.repetition_penalty
                };
            }
        }
    }
    let n = s.no_repeat_ngram_size;
    if n > 0 && seq.len() + 1 >= n {
        let prefix = &seq[seq.len() + 1 - n..];
        for w in seq.windows(n) {
            if &w[..n - 1] == prefix {
                if let Some(v) = scores.get_mut(w[n - 1] as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
    }
}

fn log_softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
    let lse = sum.ln();
    for v in row.iter_mut() {
        *v = *v - max - lse;
    }
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

fn hits_stop(tokens: &[u32], s: &DecodeSettings, text: &dyn Detokenize) -> bool {
    !s.stop_strings.is_empty() && {
        let t = text.text(&tokens[1..]);
        s.stop_strings.iter().any(|x| t.contains(x.as_str()))
    }
}

/// Greedy decoding: the most likely token each step.
pub fn greedy(
    model: &mut dyn StepModel,
    s: &DecodeSettings,
    text: &dyn Detokenize,
) -> Result<Decoded, GenerateError> {
    let mut seq = vec![s.start];
    let max_len = 1 + s.max_new_tokens;
    let mut steps = 0;
    let stopped_by = loop {
        let mut logits = model.step(&[*seq.last().unwrap_or(&s.start)], &[0])?;
        steps += 1;
        process(&seq, &mut logits, s);
        let next = argmax(&logits) as u32;
        seq.push(next);
        if s.eos.contains(&next) {
            break "eos";
        }
        if hits_stop(&seq, s, text) {
            break "stop_string";
        }
        if seq.len() >= max_len {
            break "max_new_tokens";
        }
    };
    Ok(Decoded {
        tokens: seq,
        stopped_by,
        score: None,
        steps,
    })
}

struct Finished {
    tokens: Vec<u32>,
    score: f32,
    done: bool,
    stopped_by: &'static str,
}

/// Indices of the `k` largest values, largest first (stable for ties: lower index first).
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let k = k.min(values.len());
    let cmp = |a: &usize, b: &usize| {
        values[*b]
            .partial_cmp(&values[*a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(b))
    };
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

/// Beam search with Hugging Face's semantics (batch of one input).
pub fn beam_search(
    model: &mut dyn StepModel,
    s: &DecodeSettings,
    text: &dyn Detokenize,
) -> Result<Decoded, GenerateError> {
    let b = s.num_beams.max(1);
    let vocab = model.vocab();
    let keep = 2usize.max(1 + s.eos.len()) * b;
    let prompt = 1usize;
    let max_len = prompt + s.max_new_tokens;
    let mut running: Vec<Vec<u32>> = vec![vec![s.start]; b];
    let mut running_scores: Vec<f32> = (0..b).map(|i| if i == 0 { 0.0 } else { -1e9 }).collect();
    let mut finished: Vec<Finished> = (0..b)
        .map(|_| Finished {
            tokens: vec![s.start],
            score: -1e9,
            done: false,
            stopped_by: "max_new_tokens",
        })
        .collect();
    let mut improvable = true;
    let mut cur_len = prompt;
    let mut parents: Vec<usize> = (0..b).collect();
    let mut steps = 0;
    loop {
        let last: Vec<u32> = running.iter().map(|r| r[r.len() - 1]).collect();
        let mut logits = model.step(&last, &parents)?;
        steps += 1;
        if logits.len() != b * vocab {
            return Err(GenerateError::Run(format!(
                "the decoder gave {} logits for {b} beams of {vocab}",
                logits.len()
            )));
        }
        for (r, row) in logits.chunks_exact_mut(vocab).enumerate() {
            log_softmax(row);
            process(&running[r], row, s);
            for v in row.iter_mut() {
                *v += running_scores[r];
            }
        }
        // Top `keep` continuations over all beams.
        let top = top_k(&logits, keep);
        let cands: Vec<(f32, usize, u32)> = top
            .iter()
            .map(|&i| (logits[i], i / vocab, (i % vocab) as u32))
            .collect();
        let cand_tokens: Vec<Vec<u32>> = cands
            .iter()
            .map(|&(_, r, t)| {
                let mut v = running[r].clone();
                v.push(t);
                v
            })
            .collect();
        let hit_by: Vec<Option<&'static str>> = cand_tokens
            .iter()
            .map(|seq| {
                let t = seq[seq.len() - 1];
                if s.eos.contains(&t) {
                    Some("eos")
                } else if hits_stop(seq, s, text) {
                    Some("stop_string")
                } else if cur_len + 1 >= max_len {
                    Some("max_new_tokens")
                } else {
                    None
                }
            })
            .collect();
        // Next running beams: the best candidates that did not stop.
        let run_scores: Vec<f32> = cands
            .iter()
            .zip(&hit_by)
            .map(|(c, h)| c.0 + if h.is_some() { -1.0e9 } else { 0.0 })
            .collect();
        let next = top_k(&run_scores, b);
        // Finished hypotheses: the top `b` candidates that stopped, length-penalised, merged
        // with those kept so far.
        let denom = ((cur_len + 1 - prompt) as f64).powf(s.length_penalty as f64) as f32;
        let all_done = finished.iter().all(|f| f.done);
        let mut merged_scores: Vec<f32> = finished.iter().map(|f| f.score).collect();
        for (j, ((score, _, _), h)) in cands.iter().zip(&hit_by).enumerate() {
            let mut v = score / denom;
            if all_done && s.early_stopping == EarlyStopping::True {
                v += -1.0e9;
            }
            if !improvable {
                v += -1.0e9;
            }
            if !(h.is_some() && j < b) {
                v += -1.0e9;
            }
            merged_scores.push(v);
        }
        let best = top_k(&merged_scores, b);
        let mut new_finished = Vec::with_capacity(b);
        for &i in &best {
            if i < b {
                let f = &finished[i];
                new_finished.push(Finished {
                    tokens: f.tokens.clone(),
                    score: f.score,
                    done: f.done,
                    stopped_by: f.stopped_by,
                });
            } else {
                let j = i - b;
                new_finished.push(Finished {
                    tokens: cand_tokens[j].clone(),
                    score: merged_scores[i],
                    done: hit_by[j].is_some() && j < b,
                    stopped_by: hit_by[j].unwrap_or("max_new_tokens"),
                });
            }
        }
        finished = new_finished;
        running = next.iter().map(|&j| cand_tokens[j].clone()).collect();
        running_scores = next.iter().map(|&j| run_scores[j]).collect();
        parents = next.iter().map(|&j| cands[j].1).collect();
        cur_len += 1;
        // Can a running beam still beat the worst finished one?
        let best_len = if s.early_stopping == EarlyStopping::Never && s.length_penalty > 0.0 {
            max_len - prompt
        } else {
            cur_len - prompt
        };
        let best_possible =
            running_scores[0] / ((best_len as f64).powf(s.length_penalty as f64) as f32);
        let min_finished = finished
            .iter()
            .map(|f| f.score)
            .fold(f32::INFINITY, f32::min);
        improvable = improvable
            && finished.iter().any(|f| {
                let worst = if f.done { min_finished } else { -1.0e9 };
                best_possible > worst
            });
        let open_beam =
            !(finished.iter().all(|f| f.done) && s.early_stopping == EarlyStopping::True);
        let can_continue = !hit_by.iter().all(|h| h.is_some());
        if !(improvable && open_beam && can_continue) {
            break;
        }
    }
    let best = &finished[0];
    Ok(Decoded {
        tokens: best.tokens.clone(),
        stopped_by: best.stopped_by,
        score: Some(best.score),
        steps,
    })
}

/// Greedy for one beam, beam search for more.
pub fn decode(
    model: &mut dyn StepModel,
    s: &DecodeSettings,
    text: &dyn Detokenize,
) -> Result<Decoded, GenerateError> {
    if s.num_beams <= 1 {
        greedy(model, s, text)
    } else {
        beam_search(model, s, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoText;
    impl Detokenize for NoText {
        fn text(&self, ids: &[u32]) -> String {
            ids.iter().map(|i| format!("<{i}>")).collect()
        }
    }

    /// A bigram model: the logits of the next token depend on the last token only.
    struct Bigram {
        table: Vec<Vec<f32>>,
        calls: usize,
    }

    impl StepModel for Bigram {
        fn vocab(&self) -> usize {
            self.table[0].len()
        }
        fn step(&mut self, tokens: &[u32], _: &[usize]) -> Result<Vec<f32>, GenerateError> {
            self.calls += 1;
            Ok(tokens
                .iter()
                .flat_map(|&t| self.table[t as usize].clone())
                .collect())
        }
    }

    fn settings(beams: usize) -> DecodeSettings {
        DecodeSettings {
            max_new_tokens: 6,
            num_beams: beams,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::False,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            eos: vec![1],
            start: 0,
            stop_strings: vec![],
        }
    }

    #[test]
    fn greedy_follows_the_largest_logit_and_stops_at_eos() {
        // 0 -> 2 -> 3 -> 1 (eos)
        let table = vec![
            vec![0.0, 0.0, 5.0, 0.0],
            vec![0.0; 4],
            vec![0.0, 1.0, 0.0, 4.0],
            vec![0.0, 3.0, 2.0, 0.0],
        ];
        let mut m = Bigram { table, calls: 0 };
        let d = greedy(&mut m, &settings(1), &NoText).unwrap();
        assert_eq!(d.tokens, vec![0, 2, 3, 1]);
        assert_eq!(d.stopped_by, "eos");
        assert_eq!(m.calls, 3);
    }

    #[test]
    fn no_repeat_ngram_bans_the_completing_token() {
        let s = DecodeSettings {
            no_repeat_ngram_size: 2,
            ..settings(1)
        };
        let mut scores = vec![0.0; 5];
        process(&[0, 2, 3, 2], &mut scores, &s);
        assert_eq!(scores[3], f32::NEG_INFINITY); // (2, 3) seen, last token 2
        assert!(scores.iter().filter(|v| v.is_infinite()).count() == 1);
    }

    #[test]
    fn repetition_penalty_shrinks_positive_and_grows_negative_scores_once() {
        let s = DecodeSettings {
            repetition_penalty: 2.0,
            ..settings(1)
        };
        let mut scores = vec![4.0, -4.0, 4.0];
        process(&[0, 1, 1, 0], &mut scores, &s);
        assert_eq!(scores, vec![2.0, -8.0, 4.0]);
    }

    #[test]
    fn beam_search_finds_a_sequence_greedy_misses() {
        // Greedy takes 2 (p 0.5) then is stuck with a flat row; beam search finds 3 -> eos
        // with p 0.4 x 0.99.
        let ln = |p: f32| p.ln();
        let table = vec![
            vec![
                f32::NEG_INFINITY,
                f32::NEG_INFINITY,
                ln(0.5),
                ln(0.4),
                ln(0.1),
            ],
            vec![0.0; 5],
            vec![ln(0.2); 5],
            vec![ln(0.0025), ln(0.99), ln(0.0025), ln(0.0025), ln(0.0025)],
            vec![ln(0.2); 5],
        ];
        let mut m = Bigram {
            table: table.clone(),
            calls: 0,
        };
        let g = greedy(&mut m, &settings(1), &NoText).unwrap();
        assert_eq!(&g.tokens[..2], &[0, 2]);
        let mut m = Bigram { table, calls: 0 };
        let d = beam_search(&mut m, &settings(3), &NoText).unwrap();
        assert_eq!(d.tokens, vec![0, 3, 1]);
        assert_eq!(d.stopped_by, "eos");
        let expected = (0.4f32.ln() + 0.99f32.ln()) / 2.0;
        assert!((d.score.unwrap() - expected).abs() < 1e-5, "{d:?}");
    }

    #[test]
    fn top_k_orders_largest_first() {
        assert_eq!(top_k(&[0.1, 3.0, -1.0, 2.0], 2), vec![1, 3]);
        assert_eq!(top_k(&[1.0, 1.0, 0.0], 3), vec![0, 1, 2]);
    }
}
