//! Any bytes as a NIfTI file (plain or gzipped): header parse, then the whole read path.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let _ = medinfer_io::nifti::parse_header("fuzz.nii", data);
    // The file reader (gzip detection, vox_offset, truncation) goes through a real file.
    let dir = std::env::temp_dir().join(format!("medinfer-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join("f.nii");
    if let Ok(mut f) = std::fs::File::create(&p) {
        let _ = f.write_all(data);
    }
    if let Ok(v) = medinfer_io::nifti::read(&p) {
        assert_eq!(v.data.len(), v.dims.iter().product::<usize>());
    }
});
