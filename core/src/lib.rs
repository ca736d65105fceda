//! What every part of sluice shares, and none of it Kubernetes or AWS: what
//! names a task and a source ([`id`]), the task API's JSON bodies ([`api`]), the archive's task records and their
//! codec ([`archive`]), where stores are ([`location`]) and where things go
//! in them ([`layout`]), how source objects are encoded ([`encoding`]), the
//! durations users write ([`duration`]), bytes as hex ([`hex`]) and the
//! one way to take a lock ([`sync`]). The compiler keeps it so: this crate does not depend on
//! kube, k8s-openapi or the AWS SDK.

pub mod api;
pub mod archive;
pub mod duration;
pub mod encoding;
pub mod hex;
pub mod id;
pub mod layout;
pub mod location;
pub mod sync;
