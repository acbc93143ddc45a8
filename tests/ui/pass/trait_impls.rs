//! Trait impl methods, methods of generic impls and default trait methods with a body.
#![deny(warnings)]

use std::marker::PhantomData;

use kinde_meter::{enter_agreement, meter, testing};

trait Store {
    fn put(&mut self, key: &str) -> usize;

    #[meter(feature = "store_len", on = "return")]
    fn len_twice(&self) -> usize {
        self.len() * 2
    }

    fn len(&self) -> usize;
}

struct Memory<T> {
    keys: Vec<String>,
    _item: PhantomData<T>,
}

impl<T: Default> Store for Memory<T> {
    #[meter(feature = "store_put", value = key.len())]
    fn put(&mut self, key: &str) -> usize {
        self.keys.push(key.to_owned());
        self.keys.len()
    }

    #[meter(feature = "store_size", on = "return")]
    fn len(&self) -> usize {
        self.keys.len()
    }
}

impl<T: Default> Memory<T> {
    #[meter(feature = "store_new")]
    fn new() -> Self {
        Self {
            keys: Vec::new(),
            _item: PhantomData,
        }
    }

    #[meter(feature = "store_default", on = "ok")]
    fn default_item(&self) -> Option<T> {
        Some(T::default())
    }
}

fn main() {
    let capture = testing::capture();
    let _scope = enter_agreement("agreement_acme".parse().expect("valid id"));
    let mut store = Memory::<u8>::new();
    assert_eq!(store.put("abc"), 1);
    assert_eq!(store.len(), 1);
    assert_eq!(store.len_twice(), 2);
    assert_eq!(store.default_item(), Some(0));
    assert_eq!(capture.total("agreement_acme", "store_new"), 1);
    assert_eq!(capture.total("agreement_acme", "store_put"), 3);
    assert_eq!(capture.total("agreement_acme", "store_size"), 2);
    assert_eq!(capture.total("agreement_acme", "store_len"), 1);
    assert_eq!(capture.total("agreement_acme", "store_default"), 1);
}
