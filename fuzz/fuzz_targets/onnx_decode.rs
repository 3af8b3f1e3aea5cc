//! Any bytes: decoding, validation, analysis and shape inference must return, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = medinfer_onnx::decode_model(data, "fuzz.onnx") {
        let info = medinfer_onnx::analyze(&model, Some(data));
        std::hint::black_box(info);
    }
});
