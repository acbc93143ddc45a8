//! `agreement` takes ids and strings, owned or borrowed; `value` reads args the body moves.
#![deny(warnings)]

use kinde_meter::{AgreementId, meter, testing};

struct Request {
    agreement: AgreementId,
    tenant: String,
    rows: Vec<u32>,
}

#[meter(feature = "by_ref", agreement = &request.agreement, value = request.rows.len())]
fn by_ref(request: Request) -> usize {
    request.rows.into_iter().filter(|&row| row > 0).count()
}

#[meter(feature = "by_value", agreement = id, value = 2u8)]
fn by_value(id: AgreementId) {
    let _ = id;
}

#[meter(feature = "by_str", agreement = "agreement_literal", value = n)]
fn by_str(n: i64) -> i64 {
    n
}

#[meter(feature = "by_string", agreement = request.tenant.clone(), on = "return")]
fn by_string(request: Request) -> Vec<u32> {
    request.rows
}

#[meter(feature = "by_string_ref", agreement = &request.tenant, on = "ok", value = request.rows.len() as u64)]
fn by_string_ref(request: Request) -> Option<Vec<u32>> {
    Some(request.rows)
}

fn request() -> Request {
    Request {
        agreement: "agreement_acme".parse().expect("valid id"),
        tenant: "agreement_tenant".to_owned(),
        rows: vec![1, 2, 3],
    }
}

fn main() {
    let capture = testing::capture();
    assert_eq!(by_ref(request()), 3);
    by_value(request().agreement);
    assert_eq!(by_str(4), 4);
    assert_eq!(by_string(request()).len(), 3);
    assert!(by_string_ref(request()).is_some());
    assert_eq!(capture.total("agreement_acme", "by_ref"), 3);
    assert_eq!(capture.total("agreement_acme", "by_value"), 2);
    assert_eq!(capture.total("agreement_literal", "by_str"), 4);
    assert_eq!(capture.total("agreement_tenant", "by_string"), 1);
    assert_eq!(capture.total("agreement_tenant", "by_string_ref"), 3);
}
