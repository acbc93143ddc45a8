//! Helpers shared by the workspace's integration tests, examples and benchmarks.
//! Not published.

pub mod reporter;
