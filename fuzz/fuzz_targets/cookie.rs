//! The Cookie header parser: find one cookie, remove some.
#![no_main]
use libfuzzer_sys::fuzz_target;
use microstax_proxy::cookie;

fuzz_target!(|data: &[u8]| {
    let _ = cookie::find(data, "microstax-branch");
    let rest = cookie::without(data, &["microstax-branch", "microstax-token"]);
    assert!(cookie::find(&rest, "microstax-branch").is_none());
});
