//! `on = "ok"` on a function whose return type does not implement `Outcome` is an error
//! on that return type, for sync and async functions alike.
use kinde_meter::meter;

struct Receipt;

#[meter(feature = "exports", on = "ok")]
fn export(rows: &[u32]) -> Receipt {
    let _ = rows;
    Receipt
}

#[meter(feature = "exports", on = "ok")]
async fn export_async(rows: &[u32]) -> Receipt {
    let _ = rows;
    Receipt
}

#[meter(feature = "exports", on = "ok")]
fn export_vec(rows: &[u32]) -> Vec<u32> {
    rows.to_vec()
}

#[meter(feature = "exports", on = "ok")]
async fn export_vec_async(rows: &[u32]) -> Vec<u32> {
    rows.to_vec()
}

fn main() {
    let _ = export(&[]);
    let _ = export_async(&[]);
    let _ = export_vec(&[]);
    let _ = export_vec_async(&[]);
}
