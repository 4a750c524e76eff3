//! The upstream HTTP/1.1 response decoder (head, interim answers, length, chunked with
//! extensions and trailers, until close): never panics, never yields more body than it was
//! given, and a response decoded is decoded the same way again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use microstax_proxy::h1;

fuzz_target!(|data: &[u8]| {
    let head_only = data.first().is_some_and(|b| b & 1 == 1);
    if let Ok(r) = h1::decode(data, head_only) {
        assert!(r.body.len() + r.left <= data.len());
        assert_eq!(h1::decode(data, head_only).ok(), Some(r));
    }
});
