//! The `unused_variables` lint still fires for an unused argument of a metered function.
#![deny(unused_variables)]
use kinde_meter::meter;

#[meter(feature = "pages")]
fn render(pages: u32) -> u32 {
    1
}

#[meter(feature = "pages", on = "return")]
async fn render_async(pages: u32) -> u32 {
    2
}

#[meter(feature = "pages", on = "ok")]
fn render_ok(pages: u32) -> Option<u32> {
    Some(3)
}

fn main() {
    let _ = render(1);
    let _ = render_async(1);
    let _ = render_ok(1);
}
