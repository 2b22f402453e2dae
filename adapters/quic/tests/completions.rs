//! Shell completions and man pages, generated from the same clap definitions as the
//! commands: they name every command, bash completes with them, and the pages render.

use std::path::Path;
use std::process::{Command, Output};

/// Every command `pbft` has, as a user types it.
const COMMANDS: &[&str] = &[
    "keygen",
    "testnet",
    "gateway",
    "node",
    "client",
    "status",
    "validator",
    "verify-qc",
    "bench",
    "data",
    "completions",
    "man",
    "demo",
];

fn pbft(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_pbft"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "pbft {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Whether `program` runs here (a shell or a formatter the machine may lack).
fn available(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

#[test]
fn the_bash_completion_names_every_command_and_completes_them() {
    let script = stdout(&pbft(&["completions", "bash"]));
    for command in COMMANDS.iter().chain(&["inspect", "repair"]) {
        assert!(script.contains(command), "{command} is not completed");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let other = stdout(&pbft(&["completions", shell]));
        assert!(other.contains("data"), "{shell}: no `data` command");
    }
    if !available("bash") {
        println!("no bash here: the script's text was checked, not run");
        return;
    }
    // What a user gets from `pbft da<TAB>` and `pbft data <TAB>`.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pbft.bash");
    std::fs::write(&path, &script).unwrap();
    // Bash calls a completion function with the command, the word being completed and the
    // word before it, with the line in COMP_WORDS.
    let complete = |words: &str, current: usize| {
        let probe = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={current}; \
             _pbft pbft \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             echo \"${{COMPREPLY[@]}}\"",
            path.display()
        );
        let output = Command::new("bash").args(["-c", &probe]).output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout(&output)
    };
    assert_eq!(complete("pbft da", 1).trim(), "data");
    let actions = complete("pbft data ''", 2);
    assert!(
        actions.contains("inspect") && actions.contains("repair"),
        "{actions}"
    );
    let options = complete("pbft data repair --y", 3);
    assert_eq!(options.trim(), "--yes");
}

/// Checks a page's roff and, where a formatter is installed, that it renders.
fn check_page(page: &str, name: &str) {
    assert!(page.contains(".SH NAME"), "{name}: no NAME");
    assert!(page.contains(".SH SYNOPSIS"), "{name}: no SYNOPSIS");
    if !available("groff") {
        return;
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), page).unwrap();
    let output = Command::new("groff")
        // Plain text: no overstrikes for bold and underline.
        .args(["-man", "-Tutf8", "-ww", "-P-c", "-P-b", "-P-o", "-P-u"])
        .arg(file.path())
        .output()
        .unwrap();
    let rendered = String::from_utf8_lossy(&output.stdout);
    let warnings = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{name}: {warnings}");
    assert!(warnings.trim().is_empty(), "{name}: {warnings}");
    assert!(rendered.contains("NAME") && rendered.contains("SYNOPSIS"));
}

#[test]
fn the_man_pages_render_with_every_command() {
    let page = stdout(&pbft(&["man"]));
    check_page(&page, "pbft.1");
    for command in COMMANDS {
        assert!(
            page.contains(&format!("pbft\\-{}", command.replace('-', "\\-"))),
            "pbft.1 does not list {command}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    pbft(&["man", "--dir", pages.to_str().unwrap()]);
    for name in [
        "pbft.1",
        "pbft-node.1",
        "pbft-data-inspect.1",
        "pbft-data-repair.1",
    ] {
        let path: &Path = &pages.join(name);
        let page = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{name}: {err}"));
        check_page(&page, name);
    }
    let repair = std::fs::read_to_string(pages.join("pbft-data-repair.1")).unwrap();
    assert!(repair.contains("\\-\\-yes"), "the repair page lacks --yes");
}
