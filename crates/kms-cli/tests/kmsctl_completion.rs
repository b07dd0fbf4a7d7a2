//! `kmsctl completion SHELL` as a user loads it: the real binary's script, sourced in bash and
//! asked to complete.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn completion(shell: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kmsctl"))
        .args(["completion", shell])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What bash completes for the words of `line` (the last one being completed), with the
/// script of `kmsctl completion bash` loaded.
fn complete_in_bash(script: &str, line: &[&str]) -> Vec<String> {
    let words = line
        .iter()
        .map(|w| format!("'{w}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kmsctl.bash");
    std::fs::write(&file, script).unwrap();
    let program = format!(
        "source '{}'\nCOMP_WORDS=({words}); COMP_CWORD={}; COMP_LINE='{}'; COMP_POINT=${{#COMP_LINE}}; \
         _kmsctl kmsctl '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display(),
        line.len() - 1,
        line.join(" "),
        line[line.len() - 1],
        line[line.len() - 2],
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_commands_flags_and_enum_values() {
    let script = completion("bash");
    let got = complete_in_bash(&script, &["kmsctl", "describe-"]);
    assert!(got.contains(&"describe-key".to_string()), "{got:?}");
    assert!(got.contains(&"describe-key-version".to_string()), "{got:?}");
    let got = complete_in_bash(&script, &["kmsctl", "list-keys", "--st"]);
    assert_eq!(got, ["--state"]);
    let got = complete_in_bash(&script, &["kmsctl", "list-keys", "--state", ""]);
    assert_eq!(
        got,
        ["Enabled", "Disabled", "PendingDeletion", "PendingImport"]
    );
    let got = complete_in_bash(&script, &["kmsctl", "sign", "--algorithm", ""]);
    assert_eq!(
        got,
        ["RSA_PSS_SHA_256", "RSA_PKCS1_SHA_256", "ECDSA_SHA_256"]
    );
}

#[test]
fn zsh_and_fish_scripts_name_the_commands() {
    let zsh = completion("zsh");
    assert!(zsh.starts_with("#compdef kmsctl"), "{}", &zsh[..80]);
    assert!(zsh.contains("describe-key") && zsh.contains("--if-not-exists"));
    let fish = completion("FISH");
    assert!(fish.contains("complete -c kmsctl") && fish.contains("describe-key"));
    let out = Command::new(env!("CARGO_BIN_EXE_kmsctl"))
        .args(["completion", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bash") && err.contains("zsh") && err.contains("fish"),
        "{err}"
    );
}
