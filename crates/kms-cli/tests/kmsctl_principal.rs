//! The principal `kmsctl` calls as, as a user gives it: missing or malformed, the message says
//! how to give one, in the form expected, before any call is made.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

/// Runs `kmsctl describe-key alias/x` with `KMS_PRINCIPAL` set to `principal` (unset for
/// `None`) against an address nothing listens on; returns stderr.
fn describe_as(principal: Option<&str>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kmsctl"));
    cmd.args(["describe-key", "alias/x"])
        .env("KMS_CONTROL_ADDR", "http://127.0.0.1:9")
        .env("KMS_DATA_ADDR", "http://127.0.0.1:9");
    for var in ["KMS_PRINCIPAL", "KMS_CA", "KMS_CERT", "KMS_KEY"] {
        cmd.env_remove(var);
    }
    if let Some(p) = principal {
        cmd.env("KMS_PRINCIPAL", p);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_malformed_principal_is_explained_like_a_missing_one() {
    let missing = describe_as(None);
    assert!(
        missing.contains("export KMS_PRINCIPAL=acs:ram::1234567890123456:root"),
        "{missing}"
    );
    for (bad, why) in [
        ("1234567890123456", "an account id alone"),
        ("root", "does not start with `acs:ram::`"),
        ("acs:ram:123:root", "two colons"),
    ] {
        let err = describe_as(Some(bad));
        for want in [
            format!("the principal {bad:?} (--principal or KMS_PRINCIPAL) is not a principal ARN"),
            why.to_string(),
            "expected acs:ram::<16-digit account>:root|user/<name>|role/<name>".to_string(),
            "export KMS_PRINCIPAL=acs:ram::1234567890123456:root".to_string(),
        ] {
            assert!(err.contains(&want), "{bad}: {want:?} missing in {err}");
        }
        assert!(
            !err.contains("cannot reach"),
            "refused before calling: {err}"
        );
    }
}
