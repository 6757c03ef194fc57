//! The man pages and shell completions the Debian package ships (`packaging/man`,
//! `packaging/completions`) are generated from the clap definitions of [`ioc_gateway::cli::Cli`];
//! this test regenerates them and fails when the committed files differ, so that a new flag can
//! never ship with a stale man page. `IOC_REGENERATE_PACKAGING=1 cargo test -p ioc-gateway --test
//! packaging_assets` rewrites them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

/// The command as the package documents it: the plain version (the long version carries the
/// git commit, which would make every commit change the man page).
fn command() -> clap::Command {
    ioc_gateway::cli::Cli::command()
        .version(ioc_gateway::build_info::VERSION)
        .long_version(ioc_gateway::build_info::VERSION)
}

/// Every generated file: path under packaging/ -> contents.
fn generated() -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let dir = tempfile::tempdir().expect("temp dir");
    clap_mangen::generate_to(command(), dir.path()).expect("man pages");
    for entry in std::fs::read_dir(dir.path()).expect("read temp dir") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().expect("file name").to_owned();
        let body = std::fs::read(&path).expect("read page");
        files.insert(Path::new("man").join(name), body);
    }
    for (shell, name) in [
        (Shell::Bash, "ioc-gateway.bash"),
        (Shell::Zsh, "_ioc-gateway"),
        (Shell::Fish, "ioc-gateway.fish"),
    ] {
        let mut body = Vec::new();
        clap_complete::generate(shell, &mut command(), "ioc-gateway", &mut body);
        files.insert(Path::new("completions").join(name), body);
    }
    files
}

#[test]
fn man_pages_and_completions_match_the_command_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
    let files = generated();
    assert!(
        files
            .keys()
            .any(|p| p.ends_with("ioc-gateway-check-config.1")),
        "a page per subcommand: {:?}",
        files.keys().collect::<Vec<_>>()
    );
    if std::env::var_os("IOC_REGENERATE_PACKAGING").is_some() {
        for sub in ["man", "completions"] {
            let _ = std::fs::remove_dir_all(root.join(sub));
            std::fs::create_dir_all(root.join(sub)).expect("create packaging dir");
        }
        for (path, body) in &files {
            std::fs::write(root.join(path), body).expect("write packaging file");
        }
        return;
    }
    let mut stale = Vec::new();
    for (path, body) in &files {
        match std::fs::read(root.join(path)) {
            Ok(committed) if &committed == body => {}
            _ => stale.push(path.display().to_string()),
        }
    }
    // A page for a subcommand that no longer exists would ship too.
    for sub in ["man", "completions"] {
        for entry in std::fs::read_dir(root.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            let rel = Path::new(sub).join(entry.file_name());
            if !files.contains_key(&rel) {
                stale.push(format!("{} (no longer generated)", rel.display()));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "packaging/ is out of step with the command line: {stale:?}; run \
         IOC_REGENERATE_PACKAGING=1 cargo test -p ioc-gateway --test packaging_assets"
    );
}
