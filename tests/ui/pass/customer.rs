//! `customer` takes a `Customer` or `&Customer`; customer scopes reach every metered call.
#![deny(warnings)]

use kinde_meter::{Customer, in_customer, meter, testing};

struct Claims {
    customer: Customer,
}

#[meter(feature = "by_ref", customer = &claims.customer)]
fn by_ref(claims: Claims) -> Claims {
    claims
}

#[meter(feature = "by_value", customer = customer, value = 2u8, on = "return")]
fn by_value(customer: Customer) {
    let _ = customer;
}

#[meter(feature = "in_scope")]
fn in_scope() {}

fn main() {
    let acme = Customer::org("org_acme").expect("code");
    let capture = testing::capture();
    let claims = by_ref(Claims {
        customer: acme.clone(),
    });
    by_value(claims.customer);
    in_customer(acme.clone(), in_scope);
    assert_eq!(capture.customer_total(&acme, "by_ref"), 1);
    assert_eq!(capture.customer_total(&acme, "by_value"), 2);
    assert_eq!(capture.customer_total(&acme, "in_scope"), 1);
}
