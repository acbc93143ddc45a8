//! `todo!()` and other diverging bodies compile warning-free in every mode.
#![deny(warnings)]
#![allow(clippy::todo, clippy::unimplemented, dead_code)]

use std::future::Future;
use std::pin::Pin;

use kinde_meter::meter;

#[meter(feature = "t1")]
fn call_todo() -> u32 {
    todo!()
}

#[meter(feature = "t2", on = "return")]
fn return_todo() -> u32 {
    todo!()
}

#[meter(feature = "t3", on = "ok")]
fn ok_todo() -> Result<u32, String> {
    todo!()
}

#[meter(feature = "t4", on = "ok")]
fn ok_unimplemented(flag: bool) -> Option<u32> {
    if flag {
        return Some(1);
    }
    unimplemented!()
}

#[meter(feature = "t5")]
async fn async_call_todo() -> u32 {
    todo!()
}

#[meter(feature = "t6", on = "return")]
async fn async_return_todo() -> u32 {
    todo!()
}

#[meter(feature = "t7", on = "ok")]
async fn async_ok_todo() -> Result<u32, String> {
    todo!()
}

#[meter(feature = "t8", on = "ok")]
fn boxed_ok_todo() -> Pin<Box<dyn Future<Output = Option<u32>>>> {
    Box::pin(async move { todo!() })
}

#[meter(feature = "t11", on = "ok")]
fn ok_panic() -> Option<u32> {
    panic!("not here")
}

#[meter(feature = "t12", on = "return")]
async fn async_unreachable() -> u32 {
    unreachable!()
}

#[meter(feature = "t9")]
fn never() -> ! {
    panic!("never returns")
}

#[meter(feature = "t10", on = "return")]
fn loops_forever() -> ! {
    loop {
        std::thread::park();
    }
}

fn main() {}
