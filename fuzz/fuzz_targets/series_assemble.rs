//! Any bytes as a small folder of DICOM files, through what `medinfer inspect` and
//! `medinfer convert FOLDER` do with a folder: header scan, grouping into series, layout (slice
//! order, spacing, frames, cine phases) and assembly into a volume. `dicom_decode` covers one
//! file's parse and decode; this target reaches the per-series bookkeeping, where a header of a
//! few hundred bytes once declared 2^31 frames and layout tried to list them all.
//!
//! The input is cut into up to 4 files at the 8-byte marker `\0MISEP\0\0`; the same bytes are
//! also written as one file more, so single-file multi-frame volumes are reached too.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

const SEP: &[u8] = b"\0MISEP\0\0";

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while parts.len() < 3 {
        match rest.windows(SEP.len()).position(|w| w == SEP) {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + SEP.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
}

fuzz_target!(|data: &[u8]| {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("medinfer-fuzz-series-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    });
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let _ = std::fs::remove_file(e.path());
    }
    for (i, part) in split(data).iter().enumerate() {
        std::fs::write(dir.join(format!("f{i}.dcm")), part).unwrap();
    }
    let files = medinfer_io::series::list_files(dir).unwrap();
    let scan = medinfer_io::series::scan(&files);
    for s in &scan.series {
        if let Ok(lay) = medinfer_io::series::layout(s) {
            let [nx, ny, nz, nt] = lay.dims;
            assert_eq!(lay.order.len(), nz * nt);
            if let Ok(v) = medinfer_io::series::assemble(s) {
                assert_eq!(v.data.len(), nx * ny * nz * nt);
            }
        }
    }
    let _ = medinfer_io::inspect::inspect(dir);
    // The whole input as one file, as `convert FILE` reads it.
    let one = dir.join("whole.dcm");
    std::fs::write(&one, data).unwrap();
    let _ = medinfer_io::read_volume(&one);
});
