//! Times the hot path's pieces in a plain loop (a quick check beside the criterion bench).
use std::hint::black_box;
use std::time::{Duration, Instant};

use kinde_meter::api::{Credentials, Domain};
use kinde_meter::{AgreementId, Config, FeatureCode, enter_agreement, meter};

#[meter(feature = "search")]
#[inline(never)]
fn search(x: u64) -> u64 {
    black_box(x)
}

const F: FeatureCode = FeatureCode::from_static("record_for");

fn time(name: &str, n: u64, mut f: impl FnMut(u64)) {
    for i in 0..n / 10 {
        f(i);
    }
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("{name:<40} {ns:6.2} ns");
}

fn main() {
    let domain = Domain::parse("http://127.0.0.1:9").expect("domain");
    let config = Config::new(domain, Credentials::access_token("bench"))
        .allow_http(true)
        .max_pending_keys(1_000_000)
        .flush_interval(Duration::from_secs(3600));
    std::mem::forget(kinde_meter::init(config).expect("reporter"));
    let id: AgreementId = "agreement_0195ac80a14c2ca2cec97d026d864de0"
        .parse()
        .expect("id");
    let n = 50_000_000;
    time("plain loop", n, |i| {
        black_box(i);
    });
    time("record_for one key", n, |_| {
        kinde_meter::record_for(&id, &F, 1)
    });
    for n in [1_000usize, 10_000, 100_000] {
        let ids: Vec<AgreementId> = (0..n)
            .map(|i| format!("agreement_{i:032x}").parse().expect("id"))
            .collect();
        let mut j = 0;
        time(&format!("record_for round robin {n}"), 10_000_000, |_| {
            kinde_meter::record_for(&ids[j], &F, 1);
            j += 1;
            if j == n {
                j = 0;
            }
        });
    }
    let _scope = enter_agreement(id.clone());
    time("#[meter] thread scope one key", n, |i| {
        black_box(search(i));
    });
    time("current_agreement()", n / 10, |_| {
        black_box(kinde_meter::current_agreement());
    });
}
