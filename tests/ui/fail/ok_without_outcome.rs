//! `on = "ok"` with a return type lacking `Outcome` is an error on that type, sync and async.
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
