//! Workload certificates issued per second by a generated mesh CA (one core, P-256 keys):
//! `cargo bench -p switchboard-pki --bench issue`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};
use switchboard_pki::MeshCa;
use time::OffsetDateTime;

fn main() {
    let now = OffsetDateTime::now_utc();
    let ca = MeshCa::generate("acme", "prod", now).expect("generate CA");
    let id = "spiffe://acme.switchboard.local/mesh/prod/service/pay";
    // Warm up, then issue for about two seconds.
    for _ in 0..50 {
        ca.issue(id, Duration::from_secs(86400), now)
            .expect("issue");
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        ca.issue(id, Duration::from_secs(86400), now)
            .expect("issue");
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "issued {n} certificates in {secs:.2} s: {:.0} certificates/s ({:.1} µs each)",
        n as f64 / secs,
        secs * 1e6 / n as f64
    );
}
