//! Reaching the cluster the way kubectl does: `--kubeconfig`, `--context`,
//! `-n/--namespace` and `-A/--all-namespaces`, and finding IngestSources.

use std::path::PathBuf;

use clap::Args;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::crd::IngestSource;

/// kubectl's flags for which cluster and namespace to use.
#[derive(Args, Clone, Debug, Default)]
pub struct ClusterArgs {
    /// The kubeconfig file to use (default: $KUBECONFIG, then ~/.kube/config;
    /// in a pod, its service account).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,

    /// The namespace to look in (default: the context's namespace, else
    /// `default`).
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// Look in every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
}

/// What went wrong reaching the cluster, said so a person can act on it.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "no kubeconfig: none at $KUBECONFIG or ~/.kube/config and not in a pod; \
         pass --kubeconfig FILE"
    )]
    NoKubeconfig,
    #[error("cannot use kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("cannot reach the API server at {server}: {source}")]
    Unreachable { server: String, source: kube::Error },
    #[error(
        "the IngestSource resource (sluice.dev/v1alpha1) is not installed in the cluster at \
         {server}: install sluice with `helm install sluice charts/sluice`"
    )]
    NoCrd { server: String },
    #[error("IngestSource {name:?} not found in namespace {namespace:?}")]
    NotFound { namespace: String, name: String },
    #[error("a single IngestSource is named within one namespace: drop -A or the name")]
    NameWithAllNamespaces,
}

/// A client of the cluster and the namespace to look in.
pub struct Cluster {
    pub client: Client,
    /// None with `-A`.
    pub namespace: Option<String>,
    /// The API server's URL, for messages.
    pub server: String,
}

impl ClusterArgs {
    /// Reads the kubeconfig (or the pod's service account) and makes a
    /// client. Does not contact the API server.
    pub async fn connect(&self) -> Result<Cluster, ClusterError> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let kubeconfig_error =
            |path: String| move |source| ClusterError::Kubeconfig { path, source };
        let config = match &self.kubeconfig {
            Some(path) => {
                let shown = path.display().to_string();
                let kubeconfig =
                    Kubeconfig::read_from(path).map_err(kubeconfig_error(shown.clone()))?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(kubeconfig_error(shown))?
            }
            None => match Kubeconfig::read() {
                Ok(kubeconfig) => Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(kubeconfig_error(default_kubeconfig()))?,
                Err(_) if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                    Config::incluster().map_err(|_| ClusterError::NoKubeconfig)?
                }
                Err(_) => return Err(ClusterError::NoKubeconfig),
            },
        };
        // A person waits: a coordinator without a ready pod (503 from the
        // service proxy) is reported at once, not retried for seconds.
        let mut config = config;
        config.default_retry = false;
        let server = config.cluster_url.to_string();
        let namespace = (!self.all_namespaces).then(|| {
            self.namespace
                .clone()
                .unwrap_or_else(|| config.default_namespace.clone())
        });
        let client = Client::try_from(config).map_err(|source| ClusterError::Unreachable {
            server: server.clone(),
            source,
        })?;
        Ok(Cluster {
            client,
            namespace,
            server,
        })
    }
}

/// Where the kubeconfig is read from when no `--kubeconfig` is given.
fn default_kubeconfig() -> String {
    std::env::var("KUBECONFIG").unwrap_or_else(|_| "~/.kube/config".into())
}

impl Cluster {
    /// The IngestSource `name`, or every IngestSource in the namespace (in
    /// every namespace with `-A`), sorted by namespace and name.
    pub async fn sources(&self, name: Option<&str>) -> Result<Vec<IngestSource>, ClusterError> {
        let api: Api<IngestSource> = match &self.namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        };
        let result = match name {
            Some(_) if self.namespace.is_none() => {
                return Err(ClusterError::NameWithAllNamespaces);
            }
            Some(name) => api
                .get_opt(name)
                .await
                .map(|found| found.into_iter().collect::<Vec<_>>()),
            None => api
                .list(&ListParams::default())
                .await
                .map(|list| list.items),
        };
        let mut sources = result.map_err(|source| match &source {
            kube::Error::Api(status) if status.code == 404 => ClusterError::NoCrd {
                server: self.server.clone(),
            },
            _ => ClusterError::Unreachable {
                server: self.server.clone(),
                source,
            },
        })?;
        if let (Some(name), true) = (name, sources.is_empty()) {
            return Err(ClusterError::NotFound {
                namespace: self.namespace.clone().unwrap_or_default(),
                name: name.to_owned(),
            });
        }
        sources.sort_by_key(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
        Ok(sources)
    }
}
