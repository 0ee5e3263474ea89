//! The release as a user installs it: `scripts/release.sh` packs the built
//! binary and renders the krew manifest with the archive's real sha256; the
//! real `krew` (built from its Go module by `scripts/krew-bin.sh`) validates
//! the manifest, checks the checksum, installs, and links
//! `kubectl-roomkeeper`, which then runs as the plugin. A manifest whose
//! checksum does not match its archive is refused by krew.
//!
//! Needs `ROOMKEEPER_BIN` (the release binary) and krew
//! (`ROOMKEEPER_KREW_BIN`, else the cache path of `scripts/krew-bin.sh`).
//! Without krew the test prints SKIPPED and passes, unless `CI` is set.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use roomkeeper_e2e::k8s::skip_or_panic;
use roomkeeper_e2e::operator::{go_mod_version, repo_root};

/// The krew version `scripts/krew-bin.sh` builds: the one tests/krew-bin/go.mod pins.
fn pinned_krew_version() -> String {
    go_mod_version("tests/krew-bin/go.mod", "sigs.k8s.io/krew")
}

/// krew, or `None` after a loud SKIPPED; panics under CI.
fn krew_or_skip(test: &str) -> Option<PathBuf> {
    let bin = roomkeeper_e2e::env_or_cached(
        "ROOMKEEPER_KREW_BIN",
        Path::new("krew").join(pinned_krew_version()).join("krew"),
    );
    if bin.is_file() {
        return Some(bin);
    }
    skip_or_panic(
        test,
        &format!(
            "no krew at {} (run scripts/krew-bin.sh, or set ROOMKEEPER_KREW_BIN)",
            bin.display()
        ),
    );
    None
}

/// A directory of this test's own, removed when it ends.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!("roomkeeper-release-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create the scratch dir");
        ScratchDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    eprintln!(
        "$ {cmd:?} -> {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sha256_of(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a sha256sum line")
        .to_string()
}

/// `krew install` of the rendered manifest with its archive, in a krew root
/// of its own (nothing of the user's krew is read or written).
fn krew_install(krew: &Path, root: &Path, manifest: &Path, archive: &Path) -> Output {
    run(Command::new(krew)
        .env("KREW_ROOT", root)
        .env("HOME", root)
        .arg("install")
        .arg(format!("--manifest={}", manifest.display()))
        .arg(format!("--archive={}", archive.display())))
}

#[test]
fn the_release_archive_installs_with_krew_and_runs_as_the_kubectl_plugin() {
    let test = "the_release_archive_installs_with_krew_and_runs_as_the_kubectl_plugin";
    let Some(krew) = krew_or_skip(test) else {
        return;
    };
    let bin = roomkeeper_e2e::binary();
    let dir = ScratchDir::new();
    let dist = dir.path().join("dist");
    let out = run(Command::new("bash")
        .arg(repo_root().join("scripts/release.sh"))
        .args(["--binary"])
        .arg(&bin)
        .args(["--arch", "amd64", "--out"])
        .arg(&dist));
    assert!(out.status.success(), "scripts/release.sh failed");

    let version = std::fs::read_to_string(repo_root().join("Cargo.toml"))
        .expect("Cargo.toml")
        .lines()
        .find_map(|l| {
            l.strip_prefix("version = \"")?
                .strip_suffix('"')
                .map(String::from)
        })
        .expect("a workspace version");
    let archive = dist.join(format!("roomkeeper-v{version}-linux-amd64.tar.gz"));
    let manifest = dist.join("krew/roomkeeper.yaml");
    let text = std::fs::read_to_string(&manifest).expect("the rendered manifest");
    let sum = sha256_of(&archive);
    assert!(
        text.contains(&format!("sha256: \"{sum}\"")),
        "the manifest carries the archive's sha256 {sum}:\n{text}"
    );
    assert!(!text.contains("@SHA256@") && !text.contains(&"0".repeat(64)));
    // Only platforms with an archive are listed: arm64 was not built here.
    assert!(!text.contains("arch: arm64"), "{text}");
    assert!(text.contains(&format!("version: v{version}")), "{text}");

    // The same archive twice gives the same bytes: the checksum is stable.
    let again = dir.path().join("again");
    let out = run(Command::new("bash")
        .arg(repo_root().join("scripts/release.sh"))
        .args(["--binary"])
        .arg(&bin)
        .args(["--arch", "amd64", "--out"])
        .arg(&again));
    assert!(out.status.success());
    assert_eq!(
        sha256_of(&again.join(format!("roomkeeper-v{version}-linux-amd64.tar.gz"))),
        sum,
        "the archive is reproducible"
    );

    // krew validates the manifest, checks the checksum and installs.
    let root = dir.path().join("krew-root");
    let out = krew_install(&krew, &root, &manifest, &archive);
    assert!(out.status.success(), "krew install failed");
    let plugin = root.join("bin/kubectl-roomkeeper");
    let out = run(Command::new(&plugin).arg("--help"));
    assert!(out.status.success(), "kubectl-roomkeeper --help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.starts_with("kubectl roomkeeper") && help.contains("status"),
        "krew's link runs the binary as the plugin: {help}"
    );

    // A manifest that names another checksum is refused and installs nothing.
    let tampered = dist.join("krew/tampered.yaml");
    std::fs::write(&tampered, text.replace(&sum, &"a".repeat(64)))
        .expect("write the tampered manifest");
    let root2 = dir.path().join("krew-root-2");
    let out = krew_install(&krew, &root2, &tampered, &archive);
    assert!(
        !out.status.success(),
        "krew installed despite a wrong sha256"
    );
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("sha256") || err.contains("checksum"), "{err}");
    assert!(!root2.join("bin/kubectl-roomkeeper").exists());

    // Bad input to the script: a clear error, nothing half-written.
    let out = run(Command::new("bash")
        .arg(repo_root().join("scripts/release.sh"))
        .args(["--binary", "/nonexistent/roomkeeper", "--out"])
        .arg(dir.path().join("bad")));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an executable file"));
    assert!(!dir.path().join("bad").exists());
}
