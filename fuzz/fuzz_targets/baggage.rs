//! The W3C baggage parser: find, decode, remove and merge the branch member.
#![no_main]
use libfuzzer_sys::fuzz_target;
use microstax_proxy::baggage;

fuzz_target!(|data: &[u8]| {
    let key = "microstax-branch";
    if let Some(raw) = baggage::find_raw(data, key) {
        let mut buf = [0u8; 63];
        let _ = baggage::percent_decode(raw, &mut buf);
    }
    let _ = baggage::has_member(std::iter::once(data), key);
    let _ = baggage::only_member_is(std::iter::once(data), key, "dev");
    let _ = baggage::without_member(&[data, data], key);
    let _ = baggage::with_member(&[data], key, "dev");
});
