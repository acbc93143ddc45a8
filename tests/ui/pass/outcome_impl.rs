//! `on = "ok"` with a user type that implements `kinde_meter::Outcome`, sync and async.
#![deny(warnings)]

use kinde_meter::{Outcome, enter_agreement, meter, testing};

#[derive(Debug, PartialEq)]
enum Reply {
    Done(u32),
    Failed,
}

impl Outcome for Reply {
    fn is_success(&self) -> bool {
        matches!(self, Reply::Done(_))
    }
}

#[meter(feature = "replies", on = "ok")]
fn reply(n: u32) -> Reply {
    if n == 0 {
        return Reply::Failed;
    }
    Reply::Done(n)
}

#[meter(feature = "async_replies", on = "ok")]
async fn reply_async(n: u32) -> Reply {
    if n == 0 {
        Reply::Failed
    } else {
        Reply::Done(n)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let capture = testing::capture();
    let _scope = enter_agreement("agreement_acme".parse().expect("valid id"));
    assert_eq!(reply(1), Reply::Done(1));
    assert_eq!(reply(0), Reply::Failed);
    assert_eq!(reply_async(2).await, Reply::Done(2));
    assert_eq!(reply_async(0).await, Reply::Failed);
    assert_eq!(capture.total("agreement_acme", "replies"), 1);
    assert_eq!(capture.total("agreement_acme", "async_replies"), 1);
}
