//! Native `async fn` in trait impls, including a trait that requires a `Send` future.
#![deny(warnings)]

use std::future::Future;

use kinde_meter::{AgreementId, meter, testing, with_agreement};

trait Fetch {
    async fn fetch(&self, id: u32) -> Result<u32, String>;
}

trait SendFetch {
    fn fetch_send(&self, id: u32) -> impl Future<Output = Option<u32>> + Send;
}

struct Api;

impl Fetch for Api {
    #[meter(feature = "fetches", on = "ok")]
    async fn fetch(&self, id: u32) -> Result<u32, String> {
        if id == 0 {
            return Err("no such id".to_owned());
        }
        Ok(id)
    }
}

impl SendFetch for Api {
    #[meter(feature = "send_fetches", on = "return", value = id)]
    async fn fetch_send(&self, id: u32) -> Option<u32> {
        tokio::task::yield_now().await;
        Some(id)
    }
}

fn assert_send<T: Send>(value: T) -> T {
    value
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let capture = testing::capture();
    let acme: AgreementId = "agreement_acme".parse().expect("valid id");
    with_agreement(acme, async {
        assert_eq!(Api.fetch(1).await, Ok(1));
        assert!(Api.fetch(0).await.is_err());
        assert_eq!(assert_send(Api.fetch_send(3)).await, Some(3));
    })
    .await;
    assert_eq!(capture.total("agreement_acme", "fetches"), 1);
    assert_eq!(capture.total("agreement_acme", "send_fetches"), 3);
}
