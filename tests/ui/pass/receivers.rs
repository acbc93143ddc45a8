//! Methods with every kind of receiver, sync and async, in every `on` mode.
#![deny(warnings)]

use std::pin::Pin;

use kinde_meter::{enter_agreement, meter, testing};

struct Counter {
    n: u64,
}

impl Counter {
    #[meter(feature = "by_value", value = self.n)]
    fn by_value(self) -> u64 {
        self.n
    }

    #[meter(feature = "by_ref", on = "return", value = self.n)]
    fn by_ref(&self) -> u64 {
        self.n
    }

    #[meter(feature = "by_mut", on = "ok", value = self.n)]
    fn by_mut(&mut self) -> Option<u64> {
        self.n += 1;
        Some(self.n)
    }

    #[meter(feature = "boxed", on = "return", value = self.n)]
    #[allow(clippy::boxed_local)]
    fn boxed(self: Box<Self>) -> u64 {
        self.n
    }

    #[meter(feature = "pinned", value = self.n)]
    fn pinned(self: Pin<&mut Self>) -> u64 {
        self.get_mut().n
    }

    #[meter(feature = "async_by_ref", on = "ok", value = self.n)]
    async fn async_by_ref(&self) -> Result<u64, ()> {
        Ok(self.n)
    }

    #[meter(feature = "async_by_mut", on = "return", value = self.n)]
    async fn async_by_mut(&mut self) -> u64 {
        self.n *= 2;
        self.n
    }

    #[meter(feature = "async_by_value", value = self.n)]
    async fn async_by_value(self) -> u64 {
        self.n
    }

    #[meter(feature = "async_boxed", on = "return", value = self.n)]
    async fn async_boxed(self: Box<Self>) -> u64 {
        self.n
    }

    #[meter(feature = "async_borrowed", on = "return")]
    async fn async_borrowed(&self) -> &u64 {
        &self.n
    }

    #[meter(feature = "async_borrowed_ok", on = "ok")]
    async fn async_borrowed_ok<'a>(&'a self, names: &'a [String]) -> Option<&'a str> {
        names.get(usize::try_from(self.n).ok()?).map(String::as_str)
    }

    #[meter(feature = "async_pinned", on = "ok", value = self.n)]
    async fn async_pinned(self: Pin<&mut Self>) -> Option<u64> {
        Some(self.n)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let capture = testing::capture();
    let _scope = enter_agreement("agreement_acme".parse().expect("valid id"));
    assert_eq!(Counter { n: 2 }.by_value(), 2);
    assert_eq!(Counter { n: 3 }.by_ref(), 3);
    assert_eq!(Counter { n: 4 }.by_mut(), Some(5));
    assert_eq!(Box::new(Counter { n: 5 }).boxed(), 5);
    let mut pinned = Counter { n: 6 };
    assert_eq!(Pin::new(&mut pinned).pinned(), 6);
    assert_eq!(Counter { n: 7 }.async_by_ref().await, Ok(7));
    assert_eq!(Counter { n: 8 }.async_by_mut().await, 16);
    assert_eq!(Counter { n: 9 }.async_by_value().await, 9);
    assert_eq!(Box::new(Counter { n: 10 }).async_boxed().await, 10);
    let mut pinned = Counter { n: 11 };
    assert_eq!(Pin::new(&mut pinned).async_pinned().await, Some(11));
    assert_eq!(Counter { n: 0 }.async_borrowed().await, &0);
    let names = ["a".to_owned(), "b".to_owned()];
    assert_eq!(Counter { n: 1 }.async_borrowed_ok(&names).await, Some("b"));
    assert_eq!(Counter { n: 5 }.async_borrowed_ok(&names).await, None);
    assert_eq!(capture.total("agreement_acme", "async_borrowed"), 1);
    assert_eq!(capture.total("agreement_acme", "async_borrowed_ok"), 1);
    for (feature, value) in [
        ("by_value", 2),
        ("by_ref", 3),
        ("by_mut", 4),
        ("boxed", 5),
        ("pinned", 6),
        ("async_by_ref", 7),
        ("async_by_mut", 8),
        ("async_by_value", 9),
        ("async_boxed", 10),
        ("async_pinned", 11),
    ] {
        assert_eq!(capture.total("agreement_acme", feature), value, "{feature}");
    }
}
