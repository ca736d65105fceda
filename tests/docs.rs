//! The documentation holds together: every relative link in README.md and
//! docs/ reaches a file (and, with `#anchor`, a heading in it), and
//! docs/architecture.svg is what graphviz makes of docs/architecture.dot.

mod support;

use std::path::Path;
use std::process::Command;

use support::{repo, succeed};

/// The markdown files a reader is sent to.
fn pages() -> Vec<std::path::PathBuf> {
    let mut pages = vec![repo().join("README.md"), repo().join("BENCHMARKS.md")];
    let docs = std::fs::read_dir(repo().join("docs")).unwrap();
    pages.extend(
        docs.map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "md")),
    );
    pages.sort();
    pages
}

/// A heading's anchor as GitHub makes it: lower case, punctuation other
/// than `-` and `_` dropped, spaces to `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(page: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(page).unwrap();
    let mut fenced = false;
    text.lines()
        .filter(|line| {
            if line.starts_with("```") {
                fenced = !fenced;
            }
            !fenced && line.starts_with('#')
        })
        .map(|line| anchor(line.trim_start_matches('#')))
        .collect()
}

/// The targets of `[text](target)` links in `text`, outside code.
fn links(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            found.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    found
}

#[test]
fn every_relative_link_reaches_its_file_and_heading() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for link in links(&text) {
            if link.starts_with("http://") || link.starts_with("https://") {
                continue;
            }
            let (path, fragment) = link.split_once('#').unwrap_or((&link, ""));
            let target = if path.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(path)
            };
            if !target.exists() {
                broken.push(format!("{}: {link}: no such file", page.display()));
            } else if !fragment.is_empty()
                && target.extension().is_some_and(|ext| ext == "md")
                && !anchors(&target).contains(&fragment.to_owned())
            {
                broken.push(format!("{}: {link}: no such heading", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_architecture_diagram_is_rendered_from_its_source() {
    let rendered = succeed(
        Command::new("dot")
            .args(["-Tsvg", "docs/architecture.dot"])
            .current_dir(repo())
            .output()
            .unwrap(),
    );
    let on_disk = std::fs::read_to_string(repo().join("docs/architecture.svg")).unwrap();
    assert!(
        rendered == on_disk,
        "docs/architecture.svg is not what graphviz makes of docs/architecture.dot: \
         run `make docs` and commit the result"
    );
}
