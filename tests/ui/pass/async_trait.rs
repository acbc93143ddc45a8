//! `#[async_trait]` methods: the inner future is metered; `value` may read `self` and args.
#![deny(warnings)]

use async_trait::async_trait;
use kinde_meter::{AgreementId, meter, testing, with_agreement};

#[async_trait]
trait Mailer {
    async fn send(&self, to: &str, body: String) -> Result<usize, String>;
    async fn queue(&mut self, n: u64) -> u64;
    async fn ping(&self);
    async fn owned(self: Box<Self>, n: u64) -> Option<u64>;
}

struct Smtp {
    batch: u64,
}

#[async_trait]
impl Mailer for Smtp {
    #[meter(feature = "mails", on = "ok", value = to.len() + self.batch as usize)]
    async fn send(&self, to: &str, body: String) -> Result<usize, String> {
        if body.is_empty() {
            return Err("empty body".to_owned());
        }
        let sent: usize = body.parse().map_err(|_| "not a number".to_owned())?;
        Ok(sent + to.len())
    }

    #[meter(feature = "queued", on = "return", value = n * self.batch)]
    async fn queue(&mut self, n: u64) -> u64 {
        self.batch += n;
        self.batch
    }

    #[meter(feature = "mail_pings")]
    async fn ping(&self) {}

    #[meter(feature = "owned", on = "ok", value = self.batch)]
    async fn owned(self: Box<Self>, n: u64) -> Option<u64> {
        Some(self.batch + n)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let capture = testing::capture();
    let acme: AgreementId = "agreement_acme".parse().expect("valid id");
    with_agreement(acme, async {
        let mut smtp = Smtp { batch: 1 };
        assert_eq!(smtp.send("ab", "5".to_owned()).await, Ok(7));
        assert!(smtp.send("ab", String::new()).await.is_err());
        assert!(smtp.send("ab", "x".to_owned()).await.is_err());
        assert_eq!(smtp.queue(2).await, 3);
        smtp.ping().await;
        let mailer: Box<dyn Mailer> = Box::new(smtp);
        // Building the future records nothing: only running it does.
        let pending = mailer.ping();
        drop(pending);
        assert_eq!(mailer.owned(4).await, Some(7));
    })
    .await;
    assert_eq!(capture.total("agreement_acme", "mails"), 3);
    assert_eq!(capture.total("agreement_acme", "queued"), 2);
    assert_eq!(capture.total("agreement_acme", "mail_pings"), 1);
    assert_eq!(capture.total("agreement_acme", "owned"), 3);
}
