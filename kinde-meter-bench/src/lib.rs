//! Benchmarks and memory tests of `kinde-meter` built without cargo features, as a service
//! ships it: `cargo bench -p kinde-meter-bench` and `cargo test -p kinde-meter-bench`. Built
//! on their own (`-p`), so that no other package's features are unified into the build.
