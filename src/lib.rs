//! sluice: a Kubernetes operator that runs S3 ingest workloads and makes
//! them easy to debug. One crate, one binary (`sluice`); each part is a
//! module.

pub mod crd;
pub mod duration;
pub mod s3;
pub mod testenv;
