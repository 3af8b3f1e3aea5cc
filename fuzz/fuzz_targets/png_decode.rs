//! Any bytes as PNG and as JPEG: an image or an error, never a panic or an oversized allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = medinfer_io::raster::decode_png("fuzz.png", data) {
        assert_eq!(img.data.len(), img.width * img.height * img.channels);
    }
    if let Ok(img) = medinfer_io::raster::decode_jpeg("fuzz.jpg", data) {
        assert_eq!(img.data.len(), img.width * img.height * img.channels);
    }
});
