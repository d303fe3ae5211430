//! Table-driven tests of the translator's output: each builds a mesh from the same JSON specs
//! the REST API accepts, translates it, decodes the resources and compares them with the
//! Envoy messages they should be.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod clusters;
mod common;
mod endpoints;
mod gateway_tls;
mod grpc_mtls;
mod incremental;
mod listeners;
mod mtls;
mod rbac;
mod routes;
