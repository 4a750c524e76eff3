//! The MicroStax benchmark crate. The library holds what the criterion benches and the load
//! harness binary share: the config generator. The harness itself lives in `src/main.rs` and
//! `src/harness/`.

pub mod synth;
