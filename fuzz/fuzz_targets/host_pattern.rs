//! Host patterns: parsing a pattern, and matching a host against one.
#![no_main]
use libfuzzer_sys::fuzz_target;
use microstax_table::HostPattern;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, host) = s.split_once('\n').unwrap_or((s, "dev.preview.example.com"));
    let _ = HostPattern::parse(pattern);
    microstax_fuzz_support::host(host);
});

mod microstax_fuzz_support {
    use http::HeaderMap;
    use microstax_proxy::ContextRules;
    use microstax_table::HostPattern;

    pub fn host(host: &str) {
        let Ok(p) = HostPattern::parse("{branch}.preview.example.com") else {
            return;
        };
        let rules = ContextRules {
            header: http::HeaderName::from_static("x-microstax-branch"),
            baggage_key: "microstax-branch".into(),
            cookie: "microstax-branch".into(),
            patterns: vec![p].into_boxed_slice(),
        };
        let _ = rules.extract(&HeaderMap::new(), Some(host));
    }
}
