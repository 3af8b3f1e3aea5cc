//! Any bytes as a DICOM file: parse, then decode every frame. Must return images or an error,
//! never panic, abort or allocate beyond the declared limits.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = medinfer_io::dicom::DicomFile::from_bytes("fuzz.dcm", data) {
        if let Ok(images) = f.images() {
            for img in images {
                assert_eq!(img.data.len(), img.width * img.height * img.channels);
            }
        }
    }
});
