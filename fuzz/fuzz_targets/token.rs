//! The branch-token verifier: any bytes are refused or accepted, never a panic; a token it
//! accepts names a valid branch.
#![no_main]
use libfuzzer_sys::fuzz_target;
use microstax_proxy::TokenKeys;

fuzz_target!(|data: &[u8]| {
    let Ok(keys) = TokenKeys::new(&["fuzz-key-0123456789abcdef"]) else {
        return;
    };
    if let Ok((branch, _)) = keys.verify(data, "microstax", 0) {
        assert!(!branch.as_str().is_empty());
    }
});
