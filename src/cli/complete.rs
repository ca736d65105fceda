//! `kubectl sluice <TAB>`: kubectl (1.26 and later) completes a plugin's
//! arguments by running `kubectl_complete-sluice` with the words typed so
//! far, the last one being the word to complete, and reads one candidate
//! per line and a last line `:DIRECTIVE` (cobra's protocol). The `sluice`
//! binary answers so when invoked under that name (a symlink), completing
//! commands, flags, flag values and IngestSource names from the cluster.

use clap::Command;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::cluster::ClusterArgs;
use crate::crd::IngestSource;

/// The name under which the binary completes for kubectl.
pub const COMPLETER: &str = "kubectl_complete-sluice";

/// Cobra's directive: complete no file names.
const NO_FILES: &str = ":4";

/// What kubectl reads: the candidates for the last of `words` (given the
/// others, which follow the plugin's name), one per line, then the
/// directive.
pub async fn complete(mut command: Command, words: &[String]) -> String {
    // Settles what each argument takes (values or none).
    command.build();
    let (typed, partial) = match words.split_last() {
        Some((partial, typed)) => (typed, partial.as_str()),
        None => (words, ""),
    };
    let mut candidates = match expected(&command, typed, partial) {
        Expected::Static(candidates) => candidates,
        Expected::Sources => source_names(typed).await,
    };
    candidates.retain(|candidate| candidate.starts_with(partial));
    candidates.sort();
    candidates.dedup();
    let mut text: String = candidates.iter().map(|c| format!("{c}\n")).collect();
    text.push_str(NO_FILES);
    text.push('\n');
    text
}

/// What the word being completed can be.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    /// One of these.
    Static(Vec<String>),
    /// The name of an IngestSource.
    Sources,
}

/// What may come after `typed` when the word begun is `partial`: a pure
/// function of the command line's definition.
fn expected(root: &Command, typed: &[String], partial: &str) -> Expected {
    let mut command = root;
    // A flag whose value is the next word: `--state running`, not
    // `--state=running`.
    let mut value_of: Option<&clap::Arg> = None;
    for word in typed {
        if value_of.take().is_some() {
            continue;
        }
        if let Some(sub) = command.find_subcommand(word) {
            command = sub;
        } else if let Some(arg) = flag(command, word) {
            value_of = (takes_value(arg) && !word.contains('=')).then_some(arg);
        }
    }
    if let Some(arg) = value_of {
        let values = arg
            .get_possible_values()
            .iter()
            .filter(|value| !value.is_hide_set())
            .map(|value| value.get_name().to_owned())
            .collect();
        return Expected::Static(values);
    }
    if partial.starts_with('-') {
        let flags = command
            .get_arguments()
            .filter(|arg| !arg.is_hide_set() && !arg.is_positional())
            .flat_map(|arg| {
                let long = arg.get_long().map(|long| format!("--{long}"));
                let short = arg.get_short().map(|short| format!("-{short}"));
                long.into_iter().chain(short)
            })
            .collect();
        return Expected::Static(flags);
    }
    if command.has_subcommands() {
        let commands = command
            .get_subcommands()
            .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
            .map(|sub| sub.get_name().to_owned())
            .collect();
        return Expected::Static(commands);
    }
    let wants_source = command.get_positionals().any(|arg| {
        arg.get_value_names()
            .is_some_and(|names| names == ["SOURCE"])
    });
    let has_source =
        typed.iter().any(|word| !word.starts_with('-')) && positional_count(command, typed) > 0;
    if wants_source && !has_source {
        Expected::Sources
    } else {
        Expected::Static(Vec::new())
    }
}

/// The argument of `command` that `word` (`--name`, `--name=value`, `-x`)
/// names, if any.
fn flag<'a>(command: &'a Command, word: &str) -> Option<&'a clap::Arg> {
    let name = word.split('=').next().unwrap_or(word);
    command.get_arguments().find(|arg| {
        name.strip_prefix("--")
            .is_some_and(|long| arg.get_long() == Some(long))
            || name
                .strip_prefix('-')
                .filter(|short| short.chars().count() == 1)
                .is_some_and(|short| arg.get_short().map(String::from).as_deref() == Some(short))
    })
}

fn takes_value(arg: &clap::Arg) -> bool {
    arg.get_num_args().is_some_and(|range| range.takes_values())
        && !matches!(
            arg.get_action(),
            clap::ArgAction::SetTrue | clap::ArgAction::Count
        )
}

/// How many positional words `typed` holds after the subcommand's name.
fn positional_count(command: &Command, typed: &[String]) -> usize {
    let after = typed
        .iter()
        .position(|word| word == command.get_name())
        .map_or(0, |at| at + 1);
    let mut count = 0;
    let mut skip = false;
    for word in &typed[after..] {
        if skip {
            skip = false;
        } else if word.starts_with('-') {
            skip = flag(command, word).is_some_and(takes_value) && !word.contains('=');
        } else {
            count += 1;
        }
    }
    count
}

/// The names of the IngestSources in the namespace (and with the
/// kubeconfig and context) the typed words name; none when the cluster
/// cannot be asked (completion never prints an error).
async fn source_names(typed: &[String]) -> Vec<String> {
    let value = |names: &[&str]| {
        typed.iter().enumerate().find_map(|(at, word)| {
            names.iter().find_map(|name| {
                word.strip_prefix(&format!("{name}="))
                    .map(str::to_owned)
                    .or_else(|| (word == name).then(|| typed.get(at + 1).cloned()).flatten())
            })
        })
    };
    let cluster = ClusterArgs {
        kubeconfig: value(&["--kubeconfig"]).map(Into::into),
        context: value(&["--context"]),
        namespace: value(&["-n", "--namespace"]),
        ..ClusterArgs::default()
    };
    let Ok(cluster) = cluster.connect().await else {
        return Vec::new();
    };
    let api: Api<IngestSource> = match &cluster.namespace {
        Some(namespace) => Api::namespaced(cluster.client, namespace),
        None => Api::all(cluster.client),
    };
    let listed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        api.list_metadata(&ListParams::default()),
    )
    .await;
    match listed {
        Ok(Ok(list)) => list.items.iter().map(|source| source.name_any()).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use clap::{Arg, ArgAction};

    use super::*;

    fn command() -> Command {
        Command::new("sluice")
            .subcommand(
                Command::new("tasks")
                    .arg(Arg::new("source").value_name("SOURCE"))
                    .arg(
                        Arg::new("state")
                            .long("state")
                            .value_parser(["pending", "running"]),
                    )
                    .arg(Arg::new("namespace").short('n').long("namespace"))
                    .arg(
                        Arg::new("watch")
                            .short('w')
                            .long("watch")
                            .action(ArgAction::SetTrue),
                    ),
            )
            .subcommand(Command::new("history"))
            .subcommand(Command::new("operator").hide(true))
    }

    fn words(text: &str) -> Vec<String> {
        text.split(' ').map(str::to_owned).collect()
    }

    fn expect(typed: &str, partial: &str) -> Expected {
        let typed: Vec<String> = if typed.is_empty() {
            vec![]
        } else {
            words(typed)
        };
        let mut command = command();
        command.build();
        expected(&command, &typed, partial)
    }

    fn names(list: &[&str]) -> Expected {
        Expected::Static(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn commands_then_sources_then_nothing() {
        assert_eq!(expect("", ""), names(&["tasks", "history"]));
        assert_eq!(expect("tasks", ""), Expected::Sources);
        assert_eq!(expect("tasks -n shop", ""), Expected::Sources);
        assert_eq!(expect("tasks -w", ""), Expected::Sources);
        assert_eq!(expect("tasks orders", ""), names(&[]));
    }

    #[test]
    fn flags_and_their_values() {
        assert_eq!(
            expect("tasks", "--"),
            names(&[
                "--state",
                "--namespace",
                "-n",
                "--watch",
                "-w",
                "--help",
                "-h"
            ])
        );
        assert_eq!(expect("tasks --state", ""), names(&["pending", "running"]));
        assert_eq!(expect("tasks --state=running", ""), Expected::Sources);
    }
}
