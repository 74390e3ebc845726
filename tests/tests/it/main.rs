//! Every integration test in one binary: each file below was its own test target, and each target
//! links the whole workspace (AWS SDK included). One binary links once, which keeps a clean build's
//! disk use and link time down. Run one area with a filter: `cargo test -p integration-tests
//! --test it -- auth::` (see scripts/test.sh).

mod auth;
mod cli;
mod concurrent_writes;
mod deploy;
mod e2e;
mod engine;
mod export_filters;
mod fanout;
mod http_api;
mod lambda;
mod loader;
mod organize_output;
mod postgres_tls;
mod presigned_s3s;
mod queue_contract;
mod signing_secret;
mod smart_fetch;
mod stalls;
mod storage_contract;
mod views;
