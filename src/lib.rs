//! sluice: a Kubernetes operator that runs S3 ingest workloads and makes
//! them easy to debug. One crate, one binary (`sluice`); each part is a
//! module.

pub mod api;
pub mod archive;
pub mod cli;
pub mod config;
pub mod coordinator;
pub mod crd;
pub mod duration;
pub mod operator;
pub mod s3;
pub mod telemetry;
pub mod testenv;
pub mod worker;
