//! Fault tests of Switchboard as it is deployed: `tests/faults.rs` starts the installation of
//! `deploy/local/switchboard-local` (PostgreSQL, three replicas behind HAProxy, two sidecars
//! with apps), breaks part of it under data-plane traffic and a writer changing a route, and
//! asserts what users are promised. The library itself is empty: everything is in `tests/`.
