//! The client request head parser of the own HTTP/1.1 server: never panics; a request it
//! serves itself has no body (no `Transfer-Encoding`, no `Content-Length` but one of zeros), so
//! nothing can be smuggled past it as a bodiless request; a connection handed to hyper keeps
//! every byte; and the same bytes are classified the same way again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use microstax_proxy::h1server::{decode_request, DecodedRequest};

fuzz_target!(|data: &[u8]| {
    let max = usize::from(data.first().copied().unwrap_or(0) % 8) * 16 + 4;
    let d = decode_request(data, max);
    match &d {
        DecodedRequest::Served { len, fields, .. } => {
            assert!(*len <= data.len());
            assert!(*fields <= max);
            let head = String::from_utf8_lossy(&data[..*len]).to_ascii_lowercase();
            // a line ends at LF, with or without CR before it, as for the parser (RFC 9112
            // 2.2 lets a recipient take a bare LF as a line's end, and httparse and hyper do)
            let field = |name: &str| -> Vec<String> {
                head.split('\n')
                    .map(|l| l.strip_suffix('\r').unwrap_or(l))
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .filter(|(n, _)| *n == name)
                    .map(|(_, v)| v.trim().to_string())
                    .collect()
            };
            assert!(field("transfer-encoding").is_empty(), "{head:?}");
            let lengths = field("content-length");
            let zero = |v: &String| !v.is_empty() && v.bytes().all(|b| b == b'0');
            assert!(lengths.len() <= 1 && lengths.iter().all(zero), "{head:?}");
        }
        DecodedRequest::Hyper { intact } => assert!(intact),
        DecodedRequest::Partial | DecodedRequest::Refused(_) => {}
    }
    assert_eq!(decode_request(data, max), d);
});
