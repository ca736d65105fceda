//! Reaching the cluster the way kubectl does: `--kubeconfig`, `--context`,
//! `--cluster`, `--user`, `--as`, `--as-group`, `--request-timeout`,
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

    /// The kubeconfig cluster to use (default: the context's).
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,

    /// The kubeconfig user to use (default: the context's).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Act as this user (impersonation; you need the `impersonate` right).
    #[arg(long = "as", value_name = "USER")]
    pub as_user: Option<String>,

    /// Act as a member of this group, with --as; repeat for more groups.
    #[arg(long = "as-group", value_name = "GROUP", requires = "as_user")]
    pub as_groups: Vec<String>,

    /// How long to wait for each answer, as kubectl takes it: a duration
    /// such as 30s or 1m, or a number of seconds; 0 waits as long as it
    /// takes.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = request_timeout)]
    pub request_timeout: RequestTimeout,
}

/// `--request-timeout`: none (0), or how long.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestTimeout(pub Option<std::time::Duration>);

/// kubectl's `--request-timeout`: `0`, a number of seconds, or a duration.
fn request_timeout(text: &str) -> Result<RequestTimeout, String> {
    let duration = match text.parse::<u64>() {
        Ok(seconds) => std::time::Duration::from_secs(seconds),
        Err(_) => sluice_core::duration::parse_std(text)
            .map_err(|err| format!("{err}: give a duration such as 30s or a number of seconds"))?,
    };
    Ok(RequestTimeout((!duration.is_zero()).then_some(duration)))
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
    #[error("kubeconfig {path} has no {what} {name:?}")]
    NotInKubeconfig {
        path: String,
        what: &'static str,
        name: String,
    },
    #[error("cannot reach the API server at {server}: {source}")]
    Unreachable { server: String, source: kube::Error },
    #[error(
        "the IngestSource resource (sluice.dev/v1alpha1) is not installed in the cluster at \
         {server}: install sluice with `helm install sluice charts/sluice`"
    )]
    NoCrd { server: String },
    #[error("the API server refused: {message}")]
    Forbidden { message: String },
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
            cluster: self.cluster.clone(),
            user: self.user.clone(),
        };
        let kubeconfig_error =
            |path: String| move |source| ClusterError::Kubeconfig { path, source };
        let read = match &self.kubeconfig {
            Some(path) => {
                let shown = path.display().to_string();
                let kubeconfig =
                    Kubeconfig::read_from(path).map_err(kubeconfig_error(shown.clone()))?;
                Some((kubeconfig, shown))
            }
            None => match Kubeconfig::read() {
                Ok(kubeconfig) => Some((kubeconfig, default_kubeconfig())),
                Err(_) if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => None,
                Err(_) => return Err(ClusterError::NoKubeconfig),
            },
        };
        let config = match read {
            Some((kubeconfig, shown)) => {
                // kube would go on without a named user (as anonymous);
                // kubectl refuses, and so does this.
                let missing = [
                    (
                        "user",
                        &self.user,
                        kubeconfig
                            .auth_infos
                            .iter()
                            .map(|a| &a.name)
                            .collect::<Vec<_>>(),
                    ),
                    (
                        "cluster",
                        &self.cluster,
                        kubeconfig.clusters.iter().map(|c| &c.name).collect(),
                    ),
                ]
                .into_iter()
                .find_map(|(what, wanted, names)| {
                    let wanted = wanted.as_ref()?;
                    (!names.contains(&wanted)).then(|| (what, wanted.clone()))
                });
                if let Some((what, name)) = missing {
                    return Err(ClusterError::NotInKubeconfig {
                        path: shown,
                        what,
                        name,
                    });
                }
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(kubeconfig_error(shown))?
            }
            None => Config::incluster().map_err(|_| ClusterError::NoKubeconfig)?,
        };
        // A person waits: a coordinator without a ready pod (503 from the
        // service proxy) is reported at once, not retried for seconds.
        let mut config = config;
        config.default_retry = false;
        if let Some(user) = &self.as_user {
            config.auth_info.impersonate = Some(user.clone());
            config.auth_info.impersonate_groups =
                Some(self.as_groups.clone()).filter(|groups| !groups.is_empty());
        }
        if let RequestTimeout(Some(timeout)) = self.request_timeout {
            config.connect_timeout = Some(timeout);
            config.read_timeout = Some(timeout);
            config.write_timeout = Some(timeout);
        }
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
            kube::Error::Api(status) if status.is_forbidden() => ClusterError::Forbidden {
                message: status.message.clone(),
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
