//! The names of an IngestSource's children, which users see in `kubectl
//! get` and the CLI uses to find the coordinator's Service.

use kube::ResourceExt;

use super::IngestSource;

/// The names of an IngestSource's children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub coordinator: String,
    pub worker: String,
    pub config: String,
    pub token: String,
}

impl Names {
    pub fn of(source: &IngestSource) -> Self {
        let name = source.name_any();
        Self {
            coordinator: format!("{name}-coordinator"),
            worker: format!("{name}-worker"),
            config: format!("{name}-config"),
            token: format!("{name}-token"),
        }
    }
}
