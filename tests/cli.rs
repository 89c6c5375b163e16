//! The binary documents itself: completions, man pages, version, exit codes.

mod common;

use common::*;

#[test]
fn completions_and_man_pages_are_generated_from_the_cli() {
    for shell in ["bash", "zsh", "fish"] {
        let out = airlock_ok(&["completions", shell]);
        // Every visible subcommand is completed.
        for sub in ["export", "import", "verify", "serve", "login", "inspect"] {
            assert!(out.contains(sub), "{shell} completions lack {sub}");
        }
    }
    let man = airlock_ok(&["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH airlock 1"),
        "{}",
        &man[..200.min(man.len())]
    );
    assert!(man.contains("serve") && man.contains("export"));
    let page = airlock_ok(&["man", "import"]);
    assert!(page.contains(".TH airlock-import"));
    assert!(
        page.contains("verify\\-first"),
        "the import page lists its flags"
    );
    let (code, _, err) = airlock(&["man", "no-such"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn version_and_exit_codes() {
    let v = airlock_ok(&["--version"]);
    assert!(v.contains("bundle format 1") && v.contains("commit"), "{v}");
    let help = airlock_ok(&["--help"]);
    for code in ["0", "1", "2", "3", "4"] {
        assert!(help.contains(code), "exit code {code} not in --help");
    }
}
