//! Branch-context resolution over a whole header map built from the input (one `name: value`
//! per line): the precedence walk, every carrier parser, never a panic.
#![no_main]
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use microstax_proxy::ContextRules;
use microstax_table::HostPattern;

fuzz_target!(|data: &[u8]| {
    let mut h = HeaderMap::new();
    let mut host = None;
    for line in data.split(|&b| b == b'\n') {
        let Some(i) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..i]),
            HeaderValue::from_bytes(line[i + 1..].trim_ascii()),
        ) else {
            continue;
        };
        if n == http::header::HOST {
            host = v.to_str().ok().map(str::to_string);
        }
        h.append(n, v);
    }
    let Ok(p) = HostPattern::parse("{branch}.preview.example.com") else {
        return;
    };
    let rules = ContextRules {
        header: HeaderName::from_static("x-microstax-branch"),
        baggage_key: "microstax-branch".into(),
        cookie: "microstax-branch".into(),
        patterns: vec![p].into_boxed_slice(),
    };
    let _ = rules.extract(&h, host.as_deref());
});
