//! Any bytes: the NPY decoder must return a tensor or an error, never panic or over-allocate.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = medinfer_io::npy::decode(data, "fuzz.npy") {
        // Whatever decodes must re-encode to something that decodes to the same tensor.
        let again = medinfer_io::npy::decode(&medinfer_io::npy::encode(&t), "re.npy").expect("own output decodes");
        assert_eq!(again, t);
    }
});
