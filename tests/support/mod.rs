//! Helpers shared by the integration tests: `mod support;` in a test file
//! (each test binary uses part of it).
#![allow(dead_code)]

pub mod alloc;
pub mod metrics;
#[cfg(feature = "toml")]
pub mod policy;
