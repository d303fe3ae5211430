//! The xDS server over real gRPC on 127.0.0.1, against a SQLite store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod ads;
mod auth;
mod authorization;
mod cache;
mod delta;
mod gateway_certs;
mod mtls;
mod plan;
mod quotas;
mod sds;
mod status;
mod streams;
