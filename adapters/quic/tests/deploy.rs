//! The example systemd unit (`deploy/pbft.service`) starts `pbft node` with flags the binary
//! has, and passes systemd's own check where systemd is installed.

use std::process::Command;

const UNIT: &str = include_str!("../../../deploy/pbft.service");

/// The unit's `ExecStart=` command line, split on spaces.
fn exec_start() -> Vec<&'static str> {
    let line = UNIT
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart=");
    line.split_whitespace().collect()
}

#[test]
fn the_unit_runs_pbft_node_with_flags_it_has() {
    let command = exec_start();
    assert!(command[0].ends_with("/pbft"), "{command:?}");
    assert_eq!(command[1], "node");
    let help = Command::new(env!("CARGO_BIN_EXE_pbft"))
        .args(["node", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let flags: Vec<&str> = command[2..]
        .iter()
        .copied()
        .filter(|word| word.starts_with("--"))
        .collect();
    assert!(flags.contains(&"--config"), "{command:?}");
    for flag in flags {
        assert!(help.contains(flag), "`pbft node` has no {flag}:\n{help}");
    }
    // The flag its comments suggest too.
    assert!(UNIT.contains("--transport tcp") && help.contains("--transport"));
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let installed = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !installed {
        println!("no systemd-analyze here: the unit was not verified");
        return;
    }
    // The unit as installed, with its binary where this build put it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pbft.service");
    let binary = exec_start()[0];
    std::fs::write(&path, UNIT.replace(binary, env!("CARGO_BIN_EXE_pbft"))).unwrap();
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(said.trim().is_empty(), "{said}");
}
