//! Type errors in a metered body point at the user's lines, in every mode.
use kinde_meter::meter;

#[meter(feature = "a")]
fn call_mode() -> u32 {
    let n: u32 = "one";
    n
}

#[meter(feature = "b", on = "return")]
fn return_mode() -> u32 {
    return "two";
}

#[meter(feature = "c", on = "ok")]
fn ok_mode() -> Result<u32, String> {
    let n: u32 = "3".parse()?;
    Ok(n)
}

#[meter(feature = "d", on = "ok")]
async fn async_ok() -> Result<u32, String> {
    if true {
        return Ok("four");
    }
    Ok(4)
}

#[meter(feature = "e", on = "return")]
async fn async_return() -> u32 {
    let v: Vec<u32> = vec![1];
    v.iter().collect()
}

fn main() {
    let _ = call_mode();
    let _ = return_mode();
    let _ = ok_mode();
    let _ = async_ok();
    let _ = async_return();
}
