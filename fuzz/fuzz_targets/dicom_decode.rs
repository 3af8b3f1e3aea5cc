//! Any bytes as a DICOM file: parse, then decode every frame. Must return images or an error,
//! never panic, abort or allocate beyond the declared limits.
//!
//! medinfer runs every dicom-rs call under `catch_unwind` (a panic in the dependency becomes an
//! error naming the file). libFuzzer's default panic hook aborts before that can happen, so the
//! hook is replaced by one that only counts: a panic caught by medinfer's guard is handled, one
//! that escapes medinfer still aborts (libfuzzer-sys catches the unwind and aborts).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    if let Ok(f) = medinfer_io::dicom::DicomFile::from_bytes("fuzz.dcm", data) {
        if let Ok(images) = f.images() {
            for img in images {
                assert_eq!(img.data.len(), img.width * img.height * img.channels);
            }
        }
    }
});
