//! Compile tests of `#[meter]`: what must build (`tests/ui/pass`) and the errors for what
//! must not (`tests/ui/fail`, each `.rs` beside the `.stderr` it must produce).
//!
//! The expected errors are rustc's own text, so they are pinned to the stable toolchain
//! CI uses; regenerate them with `TRYBUILD=overwrite cargo test --test ui`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
