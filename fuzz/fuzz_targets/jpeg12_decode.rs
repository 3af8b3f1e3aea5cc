//! Any bytes as a 12-bit JPEG stream for medinfer's own decoder: an image of exactly the
//! expected size or an error, never a panic or an allocation beyond that size.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = medinfer_io::jpeg12::decode(data, (90, 77)) {
        assert_eq!((f.width, f.height, f.data.len()), (90, 77, 90 * 77));
        assert!(f.data.iter().all(|&v| v < 4096));
        assert!(f.consumed <= data.len());
    }
});
