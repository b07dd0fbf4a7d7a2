//! `kmsctl --help` texts as a user reads them: the real binary, no server needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kmsctl"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // clap wraps long help to the terminal: compare with whitespace collapsed.
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `create-key --help` says which specs each kind of instance offers, as the service enforces.
#[test]
fn create_key_help_names_the_specs_of_each_instance_type() {
    let text = help(&["create-key"]);
    for want in [
        "A software instance offers Aliyun_AES_256, RSA_2048, RSA_3072, EC_P256, EC_P256K;",
        "a hardware instance also Aliyun_AES_192, Aliyun_AES_128, RSA_4096;",
        "the default key is Aliyun_AES_256",
        "keys with imported material never rotate automatically",
    ] {
        assert!(text.contains(want), "{want:?} missing in:\n{text}");
    }
}
