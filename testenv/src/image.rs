//! Container images written without a container engine: one uncompressed
//! layer of files, an OCI image configuration, and an `oci-layout` archive
//! that `ctr images import` loads. Every timestamp and owner is fixed, so
//! the same files give the same digest.
//!
//! [`sluice`] describes the image the chart runs; the `Dockerfile` at the
//! root of the repository builds the same image for users with a registry
//! (a test keeps the two in step).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Error, repo, walk};

/// The user every sluice container runs as (distroless' `nonroot`).
pub const SLUICE_USER: &str = "65532:65532";
/// Where the binary is, and the entrypoint.
pub const SLUICE_BINARY: &str = "/usr/local/bin/sluice";
/// The CA certificates for real S3 endpoints, where Debian and distroless
/// keep them.
pub const CA_CERTIFICATES: &str = "/etc/ssl/certs/ca-certificates.crt";

/// An image: its name as pods name it, its files and how it starts.
#[derive(Debug)]
pub struct Image {
    /// The full reference, `docker.io/library/sluice:0.1.0`.
    pub name: String,
    pub files: Vec<File>,
    pub user: String,
    pub entrypoint: Vec<String>,
}

/// A file in an image: its absolute path there, where its bytes come from,
/// and its mode.
#[derive(Debug)]
pub struct File {
    pub path: String,
    pub contents: Contents,
    pub mode: u32,
}

#[derive(Debug)]
pub enum Contents {
    /// A file of this machine, read when the image is written.
    Host(PathBuf),
    Bytes(Vec<u8>),
    Directory,
}

impl File {
    pub fn host(path: &str, source: impl Into<PathBuf>, mode: u32) -> Self {
        Self {
            path: path.into(),
            contents: Contents::Host(source.into()),
            mode,
        }
    }

    pub fn text(path: &str, text: &str) -> Self {
        Self {
            path: path.into(),
            contents: Contents::Bytes(text.as_bytes().to_vec()),
            mode: 0o644,
        }
    }

    pub fn directory(path: &str, mode: u32) -> Self {
        Self {
            path: path.into(),
            contents: Contents::Directory,
            mode,
        }
    }
}

/// The sluice image of `binary` (a release build): the binary, the shared
/// libraries it links (glibc and libgcc, as distroless' `cc` image has
/// them), CA certificates, a `nonroot` user and a `/tmp`.
pub fn sluice(binary: &Path, tag: &str) -> Result<Image, Error> {
    let mut files = vec![
        File::host(SLUICE_BINARY, binary, 0o755),
        File::host(CA_CERTIFICATES, CA_CERTIFICATES, 0o644),
        File::text(
            "/etc/passwd",
            "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
        ),
        File::text("/etc/group", "root:x:0:\nnonroot:x:65532:\n"),
        File::directory("/home/nonroot", 0o700),
        File::directory("/tmp", 0o1777),
    ];
    files.extend(
        shared_libraries(binary)?
            .into_iter()
            .map(|library| File::host(&library.to_string_lossy(), &library, 0o755)),
    );
    Ok(Image {
        name: format!("docker.io/library/sluice:{tag}"),
        files,
        user: SLUICE_USER.into(),
        entrypoint: vec![SLUICE_BINARY.into()],
    })
}

/// `name`'s release build (`sluice`, `sluice-testenv`) in this process's
/// Cargo target directory, which `make test` and `make demo` build first.
/// One missing, or older than a Rust source of a crate it is built from, is
/// an error, so pods never run stale code.
pub fn release_binary(name: &str) -> Result<PathBuf, Error> {
    let release = target_dir()?.join("release").join(name);
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    // The product's sources, and the harness's for its own binary.
    let crates: &[&str] = match name {
        "sluice" => &["src"],
        _ => &["src", "testenv/src"],
    };
    let newest_source = crates
        .iter()
        .flat_map(|dir| walk(&repo().join(dir)))
        .filter(|path| path.extension().is_some_and(|extension| extension == "rs"))
        .filter_map(|path| modified(&path))
        .max();
    match (modified(&release), newest_source) {
        (Some(built), Some(source)) if built >= source => Ok(release),
        _ => Err(Error::Command {
            what: format!("using {}", release.display()),
            stderr: "it is missing or older than the sources: run `cargo build --release --locked --workspace --bins` (make test does)".into(),
        }),
    }
}

/// The Cargo target directory this process was built into: its binary is
/// `<target>/<profile>/NAME` or, for tests and benchmarks,
/// `<target>/<profile>/deps/NAME-HASH`.
fn target_dir() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        what: "finding this binary".into(),
        source,
    })?;
    let mut profile = exe.parent();
    if profile.is_some_and(|dir| dir.ends_with("deps")) {
        profile = profile.and_then(Path::parent);
    }
    Ok(profile.and_then(Path::parent).unwrap_or(&exe).to_owned())
}

/// The shared libraries `binary` loads, the dynamic loader included, as
/// `ldd` resolves them on this machine.
fn shared_libraries(binary: &Path) -> Result<BTreeSet<PathBuf>, Error> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|source| Error::Spawn {
            name: "ldd".into(),
            source,
        })?;
    if !output.status.success() {
        return Err(Error::Command {
            what: format!("ldd {}", binary.display()),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(libraries_in(&String::from_utf8_lossy(&output.stdout)))
}

/// The absolute paths in `ldd`'s output: `libc.so.6 => /lib/.../libc.so.6
/// (0x...)` and `/lib64/ld-linux-x86-64.so.2 (0x...)`; not the vDSO.
fn libraries_in(ldd: &str) -> BTreeSet<PathBuf> {
    ldd.lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Writes `image` as an `oci-layout` tar archive at `out`; returns the
/// manifest's digest.
pub fn write_archive(image: &Image, out: &Path) -> Result<String, Error> {
    let layer = layer(&image.files)?;
    let diff_id = digest(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "User": image.user,
            "Entrypoint": image.entrypoint,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", format!("SSL_CERT_FILE={CA_CERTIFICATES}")],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "sluice testenv"}],
    }))
    .expect("a JSON value serializes");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": diff_id,
            "size": layer.len(),
        }],
    }))
    .expect("a JSON value serializes");
    let manifest_digest = digest(&manifest);
    let tag = image.name.rsplit_once(':').map_or("latest", |(_, tag)| tag);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": image.name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))
    .expect("a JSON value serializes");

    let io = |source| Error::Io {
        what: format!("writing the image archive {}", out.display()),
        source,
    };
    let mut archive = tar::Builder::new(std::fs::File::create(out).map_err(io)?);
    let mut add = |name: String, data: &[u8]| {
        let mut header = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        archive.append_data(&mut header, name, data)
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io)?;
    add("index.json".into(), &index).map_err(io)?;
    for blob in [&layer, &config, &manifest] {
        let name = format!("blobs/sha256/{}", &digest(blob)["sha256:".len()..]);
        add(name, blob).map_err(io)?;
    }
    archive.into_inner().map_err(io)?;
    Ok(manifest_digest)
}

/// The layer: every file, and every directory above one, in path order.
fn layer(files: &[File]) -> Result<Vec<u8>, Error> {
    let mut entries: std::collections::BTreeMap<String, &File> = Default::default();
    let mut parents = BTreeSet::new();
    for file in files {
        let path = file.path.trim_start_matches('/');
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent.filter(|dir| !dir.as_os_str().is_empty()) {
            parents.insert(dir.to_string_lossy().into_owned());
            parent = dir.parent();
        }
        entries.insert(path.to_owned(), file);
    }
    let io = |what: String| move |source| Error::Io { what, source };
    let mut layer = tar::Builder::new(Vec::new());
    let mut names: BTreeSet<&str> = parents.iter().map(String::as_str).collect();
    names.extend(entries.keys().map(String::as_str));
    for name in names {
        match entries.get(name).map(|file| (&file.contents, file.mode)) {
            None | Some((Contents::Directory, _)) => {
                let mode = entries.get(name).map_or(0o755, |file| file.mode);
                let mut header = header(tar::EntryType::Directory, mode, 0);
                layer
                    .append_data(&mut header, format!("{name}/"), std::io::empty())
                    .map_err(io(format!("adding {name}/ to a layer")))?;
            }
            Some((Contents::Bytes(bytes), mode)) => {
                let mut header = header(tar::EntryType::Regular, mode, bytes.len() as u64);
                layer
                    .append_data(&mut header, name, bytes.as_slice())
                    .map_err(io(format!("adding {name} to a layer")))?;
            }
            Some((Contents::Host(source), mode)) => {
                let bytes = std::fs::read(source)
                    .map_err(io(format!("reading {} for an image", source.display())))?;
                let mut header = header(tar::EntryType::Regular, mode, bytes.len() as u64);
                layer
                    .append_data(&mut header, name, bytes.as_slice())
                    .map_err(io(format!("adding {name} to a layer")))?;
            }
        }
    }
    layer.into_inner().map_err(io("finishing a layer".into()))
}

/// A tar header owned by root, dated 1970, with `mode`.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256:");
    for byte in hash {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_libraries_and_the_loader_not_the_vdso() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        let libraries: Vec<PathBuf> = libraries_in(ldd).into_iter().collect();
        assert_eq!(
            libraries,
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn the_same_files_give_the_same_digest_and_other_files_another() {
        let image = |text: &str| Image {
            name: "docker.io/library/test:1".into(),
            files: vec![
                File::text("/etc/motd", text),
                File::directory("/tmp", 0o1777),
            ],
            user: "65532:65532".into(),
            entrypoint: vec!["/bin/true".into()],
        };
        let dir = tempfile::tempdir().unwrap();
        let write =
            |image: &Image, name: &str| write_archive(image, &dir.path().join(name)).unwrap();
        let first = write(&image("hello"), "a.tar");
        assert_eq!(write(&image("hello"), "b.tar"), first);
        assert_eq!(
            std::fs::read(dir.path().join("a.tar")).unwrap(),
            std::fs::read(dir.path().join("b.tar")).unwrap()
        );
        assert_ne!(write(&image("other"), "c.tar"), first);
    }

    #[test]
    fn a_layer_holds_every_parent_directory_once_before_its_files() {
        let layer = layer(&[
            File::text("/etc/ssl/certs/a.crt", "a"),
            File::text("/etc/passwd", "p"),
        ])
        .unwrap();
        let mut archive = tar::Archive::new(layer.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|entry| {
                entry
                    .unwrap()
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(
            names,
            [
                "etc/",
                "etc/passwd",
                "etc/ssl/",
                "etc/ssl/certs/",
                "etc/ssl/certs/a.crt"
            ]
        );
    }
}
