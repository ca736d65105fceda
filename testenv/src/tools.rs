//! Where the pinned binaries are: the directories `tools/build.sh path`
//! prints, never whatever else is on PATH.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::Error;

/// The path of the pinned binary `name`.
pub fn binary(name: &str) -> Result<PathBuf, Error> {
    let dirs = tool_dirs()?;
    dirs.iter()
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| Error::ToolMissing {
            name: name.to_owned(),
            searched: std::env::join_paths(dirs)
                .map(|joined| joined.to_string_lossy().into_owned())
                .unwrap_or_default(),
        })
}

fn tool_dirs() -> Result<&'static Vec<PathBuf>, Error> {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    if let Some(dirs) = DIRS.get() {
        return Ok(dirs);
    }
    let script = super::repo().join("tools/build.sh");
    let fail = |reason: String| Error::ToolsPath {
        script: script.clone(),
        reason,
    };
    let output = Command::new("bash")
        .arg(&script)
        .arg("path")
        .output()
        .map_err(|err| fail(err.to_string()))?;
    if !output.status.success() {
        return Err(fail(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(DIRS.get_or_init(|| stdout.trim().split(':').map(PathBuf::from).collect()))
}
