//! sluice: a Kubernetes operator that runs S3 ingest workloads and makes
//! them easy to debug. One binary (`sluice`); each part is a module. The
//! test harness is a crate of its own (`testenv/`, `sluice-testenv`), so
//! none of it is in the binary users run.

pub mod cli;
pub mod config;
pub mod coordinator;
pub mod crd;
pub mod operator;
pub mod retry;
pub mod s3;
pub mod telemetry;
pub mod worker;
