//! Any bytes as a JPEG-LS stream for medinfer's own decoder. The first five bytes give the
//! expected columns, rows (u16 little endian each) and components, the rest is the stream
//! (seeds: `fuzz/seeds_jpegls.py` writes every JPEG-LS frame of the DICOM fixtures this way).
//! An image of exactly the expected size whose samples fit its precision, or an error; never
//! a panic, and no allocation beyond the expected size.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let w = u16::from_le_bytes([data[0], data[1]]) as usize;
    let h = u16::from_le_bytes([data[2], data[3]]) as usize;
    let c = data[4] as usize;
    if w * h * c > 1 << 22 {
        return;
    }
    if let Ok(img) = medinfer_io::jpegls::decode(&data[5..], (w, h, c)) {
        assert_eq!((img.width, img.height, img.components), (w, h, c));
        assert_eq!(img.samples.len(), w * h * c);
        let max = (1u32 << img.precision) - 1;
        assert!(img.samples.iter().all(|&v| (v as u32) <= max));
    }
});
