//! `on = "ok"` on a returned future whose output lacks `Outcome` errs on the output.
use async_trait::async_trait;
use kinde_meter::meter;
use std::future::Future;
use std::pin::Pin;

struct Receipt;

#[async_trait]
trait Export {
    async fn export(&self, rows: &[u32]) -> Receipt;
}

struct Exporter;

#[async_trait]
impl Export for Exporter {
    #[meter(feature = "exports", on = "ok")]
    async fn export(&self, rows: &[u32]) -> Receipt {
        let _ = rows;
        Receipt
    }
}

#[meter(feature = "exports", on = "ok")]
fn export_boxed() -> Pin<Box<dyn Future<Output = Vec<u8>> + Send>> {
    Box::pin(async move { Vec::new() })
}

#[meter(feature = "exports", on = "ok")]
fn export_block() -> impl Future<Output = Receipt> {
    async move { Receipt }
}

fn main() {}
