//! Any bytes: the NPY and NPZ decoders must return tensors or an error, never panic or
//! over-allocate.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = medinfer_io::npy::decode(data, "fuzz.npy") {
        // Whatever decodes must re-encode to something that decodes to the same tensor.
        let again = medinfer_io::npy::decode(&medinfer_io::npy::encode(&t), "re.npy").expect("own output decodes");
        assert_eq!(again, t);
    }
    if let Ok(arrays) = medinfer_io::npy::decode_npz(data, "fuzz.npz") {
        let refs: Vec<(&str, &medinfer_core::Tensor)> = arrays.iter().map(|(k, t)| (k.as_str(), t)).collect();
        let bytes = medinfer_io::npy::encode_npz(&refs).expect("own arrays encode");
        let again = medinfer_io::npy::decode_npz(&bytes, "re.npz").expect("own output decodes");
        assert_eq!(again, arrays);
    }
});
