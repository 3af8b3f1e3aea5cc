//! Batch runs over whole archives: resumable result files and deterministic sharding.
//!
//! - **Resume.** Results are appended one line per item (CSV or JSON lines) and flushed as they
//!   come, so an interrupted run leaves every finished item on disk. On restart the file is
//!   read back, a last line cut short by the interruption is removed ([`repair_torn_tail`]), and
//!   the items already there are skipped.
//! - **Sharding.** `--shard K/N` splits an archive over N workers (Kubernetes Indexed Jobs,
//!   Slurm arrays) without coordination: an item belongs to shard `hash(key) mod N`, with the
//!   64-bit FNV-1a hash of its key (the path as listed). The split depends only on the key and
//!   N, so every worker computes the same one, the shards together cover every item exactly
//!   once, and adding files to the archive moves no already-assigned file.

use crate::PipelineError;
use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;

fn os(path: &Path) -> impl FnOnce(std::io::Error) -> PipelineError + '_ {
    move |e| {
        PipelineError::Io(medinfer_io::IoError::Os {
            path: path.display().to_string(),
            source: e,
        })
    }
}

/// The whole lines of the result file `path` (empty when it does not exist). A last line
/// without its newline (a write cut off by an interruption) is removed from the file first, so
/// that appending continues on a line boundary.
pub fn repair_torn_tail(path: &Path) -> Result<Vec<u8>, PipelineError> {
    let mut bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(os(path)(e)),
    };
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if whole < bytes.len() {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(os(path))?;
        f.set_len(whole as u64).map_err(os(path))?;
        bytes.truncate(whole);
    }
    Ok(bytes)
}

/// The first field of every row of the CSV result file `path` after its header: the items
/// already done. The file is repaired first ([`repair_torn_tail`]).
pub fn csv_done(path: &Path) -> Result<HashSet<String>, PipelineError> {
    let bytes = repair_torn_tail(path)?;
    let mut done = HashSet::new();
    for line in bytes.lines().skip(1) {
        if let Some(first) = csv_first_field(&line.map_err(os(path))?) {
            done.insert(first);
        }
    }
    Ok(done)
}

/// The `key` field of every line of the JSON-lines result file `path`: the items already done.
/// The file is repaired first; a whole line that is not JSON is an error (the file is not
/// medinfer's, and nothing is appended to it).
pub fn jsonl_done(path: &Path, key: &str) -> Result<HashSet<String>, PipelineError> {
    let bytes = repair_torn_tail(path)?;
    let mut done = HashSet::new();
    for (n, line) in bytes.lines().enumerate() {
        let line = line.map_err(os(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| PipelineError::Output {
                path: path.display().to_string(),
                reason: format!("line {} is not JSON ({e}); not appending to it", n + 1),
            })?;
        if let Some(k) = v.get(key).and_then(|k| k.as_str()) {
            done.insert(k.to_string());
        }
    }
    Ok(done)
}

/// The first field of a CSV line (quoted or not).
pub fn csv_first_field(line: &str) -> Option<String> {
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

/// A CSV field, quoted when it must be.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Opens the result file `path` for appending (created when missing); `header` is written
/// first when the file is new or empty.
pub fn open_append(path: &Path, header: Option<&str>) -> Result<std::fs::File, PipelineError> {
    use std::io::Write;
    let new = std::fs::metadata(path).map_or(true, |m| m.len() == 0);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(os(path))?;
    if let (true, Some(h)) = (new, header) {
        writeln!(f, "{h}").map_err(os(path))?;
    }
    Ok(f)
}

/// One of N deterministic parts of a batch (`index` counts from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This worker's part, 0-based.
    pub index: usize,
    /// Number of parts.
    pub count: usize,
}

impl Shard {
    /// Parses `K/N` (0 <= K < N), as `--shard` takes it. `K` may be `env` to read Kubernetes'
    /// `JOB_COMPLETION_INDEX` (Indexed Jobs) or Slurm's `SLURM_ARRAY_TASK_ID`.
    pub fn parse(s: &str) -> Result<Shard, PipelineError> {
        let bad = |why: String| PipelineError::Config {
            what: "--shard".into(),
            reason: why,
        };
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| bad(format!("'{s}' is not K/N (e.g. 0/8)")))?;
        let n: usize = n
            .trim()
            .parse()
            .map_err(|_| bad(format!("'{n}' is not a count")))?;
        let k = if k.trim() == "env" {
            let var = ["JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"]
                .into_iter()
                .find_map(|v| std::env::var(v).ok().map(|x| (v, x)));
            let (v, x) = var.ok_or_else(|| {
                bad(
                    "K is 'env' but neither JOB_COMPLETION_INDEX nor SLURM_ARRAY_TASK_ID is set"
                        .into(),
                )
            })?;
            x.trim()
                .parse()
                .map_err(|_| bad(format!("{v}={x} is not an index")))?
        } else {
            k.trim()
                .parse()
                .map_err(|_| bad(format!("'{k}' is not an index")))?
        };
        if n == 0 || k >= n {
            return Err(bad(format!("{k}/{n}: need 0 <= K < N")));
        }
        Ok(Shard { index: k, count: n })
    }

    /// Whether the item with key `key` belongs to this shard.
    pub fn contains(&self, key: &str) -> bool {
        (fnv1a(key.as_bytes()) % self.count as u64) as usize == self.index
    }
}

/// 64-bit FNV-1a: stable across platforms and releases (unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_key_exactly_once_and_are_stable() {
        let keys: Vec<String> = (0..5000).map(|i| format!("archive/p{i:05}.png")).collect();
        for n in [1, 2, 3, 8] {
            let shards: Vec<Shard> = (0..n).map(|k| Shard { index: k, count: n }).collect();
            let mut sizes = vec![0usize; n];
            for key in &keys {
                let owners: Vec<usize> = shards
                    .iter()
                    .filter(|s| s.contains(key))
                    .map(|s| s.index)
                    .collect();
                assert_eq!(owners.len(), 1, "{key} in {owners:?} of {n}");
                sizes[owners[0]] += 1;
            }
            // Roughly even (FNV-1a over similar names).
            let even = keys.len() / n;
            assert!(sizes.iter().all(|&s| s * 10 > even * 8), "{sizes:?}");
        }
        // The published FNV-1a test vectors: the split is the same on every machine and release.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn shard_specs_parse_or_say_why_not() {
        assert_eq!(Shard::parse("2/8").unwrap(), Shard { index: 2, count: 8 });
        for bad in ["8/8", "1/0", "x/2", "3", "-1/4"] {
            let e = Shard::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--shard"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_torn_last_line_is_cut_and_whole_lines_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.csv");
        std::fs::write(&p, "file,status\na.png,ok\n\"b,1.png\",ok\nc.pn").unwrap();
        let done = csv_done(&p).unwrap();
        assert_eq!(done, ["a.png", "b,1.png"].map(String::from).into());
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "file,status\na.png,ok\n\"b,1.png\",ok\n"
        );
        let j = d.path().join("r.jsonl");
        std::fs::write(&j, "{\"key\":\"s1\"}\n{\"key\":\"s2\"}\n{\"key\":\"s").unwrap();
        assert_eq!(
            jsonl_done(&j, "key").unwrap(),
            ["s1", "s2"].map(String::from).into()
        );
        std::fs::write(&j, "not json\n").unwrap();
        assert!(jsonl_done(&j, "key")
            .unwrap_err()
            .to_string()
            .contains("not JSON"));
    }
}
