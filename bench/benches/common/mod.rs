//! Fixtures shared by the benchmarks and the examples.

#![allow(dead_code, clippy::unwrap_used)]

pub mod world;
