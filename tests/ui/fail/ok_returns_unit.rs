//! `on = "ok"` on a function that returns nothing is an error on "ok".
use kinde_meter::meter;

#[meter(feature = "syncs", on = "ok")]
fn sync_all() {}

#[meter(feature = "syncs", on = "ok")]
async fn sync_all_async() -> () {}

fn main() {
    sync_all();
    let _ = sync_all_async();
}
