//! `kmsctl` against the real planes: instances, the key lifecycle, versions, aliases, tags and
//! policies, as a user runs them, in text and JSON, with errors as kmsctl prints them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kms_e2e::{ACCOUNT, ADMIN, ALICE, OPERATOR, Stack, bin_path};
use serde_json::Value;

struct Cli<'a> {
    stack: &'a Stack,
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Cli<'_> {
    async fn run(&self, who: &str, args: &[&str]) -> Run {
        let mut cmd = tokio::process::Command::new(bin_path("kmsctl").unwrap());
        cmd.args(args)
            .env(
                "KMS_CONTROL_ADDR",
                format!("http://{}", self.stack.control_addr()),
            )
            .env(
                "KMS_DATA_ADDR",
                format!("http://{}", self.stack.data_addr()),
            )
            .env("KMS_PRINCIPAL", who);
        for var in ["KMS_CA", "KMS_CERT", "KMS_KEY"] {
            cmd.env_remove(var);
        }
        let out = cmd.output().await.unwrap();
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs a command that must succeed and returns its output.
    async fn ok(&self, who: &str, args: &[&str]) -> String {
        let r = self.run(who, args).await;
        assert!(r.ok, "kmsctl {args:?} failed: {}", r.stderr);
        r.stdout
    }

    /// Runs a command with `--json` that must succeed and returns the document.
    async fn json(&self, who: &str, args: &[&str]) -> Value {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        let text = self.ok(who, &with_json).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    /// Runs a command that must fail and returns what it printed on stderr.
    async fn fails(&self, who: &str, args: &[&str]) -> String {
        let r = self.run(who, args).await;
        assert!(!r.ok, "kmsctl {args:?} succeeded: {}", r.stdout);
        r.stderr
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmsctl_manages_instances_keys_aliases_and_tags() {
    let stack = Stack::start().await.unwrap();
    let cli = Cli { stack: &stack };

    // Instances: operators create and share them; accounts see their own.
    let err = cli
        .fails(
            ALICE,
            &[
                "create-kms-instance",
                "--type",
                "software",
                "--owner",
                ACCOUNT,
            ],
        )
        .await;
    assert!(
        err.contains("error: PERMISSION_DENIED: Forbidden.NoPermission"),
        "{err}"
    );
    let instance = cli
        .json(
            OPERATOR,
            &[
                "create-kms-instance",
                "--type",
                "software",
                "--owner",
                ACCOUNT,
                "--key-quota",
                "10",
                "--access-management-quota",
                "1",
            ],
        )
        .await;
    let sw = instance["kms_instance_id"].as_str().unwrap().to_string();
    assert_eq!(instance["instance_type"], "SOFTWARE");
    assert_eq!(instance["key_quota"], 10);
    let listed = cli.ok(ALICE, &["list-kms-instances"]).await;
    assert!(
        listed.contains("INSTANCE ID") && listed.contains(&sw) && listed.contains("0/10"),
        "{listed}"
    );
    let shared = cli
        .json(
            OPERATOR,
            &["share-kms-instance", &sw, "--account", "6543210987654321"],
        )
        .await;
    assert_eq!(shared["shared_with_account_ids"][0], "6543210987654321");
    cli.ok(
        OPERATOR,
        &["unshare-kms-instance", &sw, "--account", "6543210987654321"],
    )
    .await;
    let text = cli.ok(ALICE, &["get-kms-instance", &sw]).await;
    assert!(text.contains("keys:") && text.contains("0 of 10"), "{text}");
    // Operators change the quotas; back to 10 keys for what follows.
    let updated = cli
        .json(
            OPERATOR,
            &[
                "update-kms-instance",
                &sw,
                "--key-quota",
                "20",
                "--access-management-quota",
                "2",
            ],
        )
        .await;
    assert_eq!(
        (&updated["key_quota"], &updated["access_management_quota"]),
        (&Value::from(20), &Value::from(2))
    );
    cli.ok(OPERATOR, &["update-kms-instance", &sw, "--key-quota", "10"])
        .await;
    let err = cli
        .fails(ALICE, &["update-kms-instance", &sw, "--key-quota", "30"])
        .await;
    assert!(
        err.contains("error: PERMISSION_DENIED: Forbidden.NoPermission"),
        "{err}"
    );
    let err = cli
        .fails(OPERATOR, &["update-kms-instance", &sw, "--key-quota", "0"])
        .await;
    assert!(
        err.contains("INVALID_ARGUMENT: InvalidParameter.KeyQuota"),
        "{err}"
    );
    let err = cli.fails(OPERATOR, &["update-kms-instance", &sw]).await;
    assert!(err.contains("--key-quota"), "{err}");

    // A key in the instance, listed as a table and as JSON.
    let key = cli
        .json(
            ALICE,
            &[
                "create-key",
                "--instance",
                &sw,
                "--alias",
                "alias/cli",
                "--tag",
                "env=dev",
            ],
        )
        .await;
    let key_id = key["key_id"].as_str().unwrap().to_string();
    let table = cli.ok(ALICE, &["list-keys", "--instance", &sw]).await;
    assert!(table.starts_with("KEY ID"), "{table}");
    assert!(
        table.contains(&key_id) && table.contains("Aliyun_AES_256") && table.contains("alias/cli"),
        "{table}"
    );
    let all = cli
        .json(ALICE, &["list-keys", "--all", "--tag-key", "env"])
        .await;
    assert_eq!(all["keys"][0]["key_id"], key_id.as_str());
    assert_eq!(all["next_page_token"], "");
    let none = cli.ok(ALICE, &["list-keys", "--state", "disabled"]).await;
    assert_eq!(none, "(none)\n");

    // Lifecycle.
    let disabled = cli.json(ALICE, &["disable-key", "alias/cli"]).await;
    assert_eq!(disabled["key_state"], "Disabled");
    assert_eq!(disabled["rotation_status"], "Suspended");
    cli.ok(ALICE, &["enable-key", "alias/cli"]).await;
    let described = cli
        .json(
            ALICE,
            &[
                "update-key-description",
                "alias/cli",
                "--description",
                "orders",
            ],
        )
        .await;
    assert_eq!(described["description"], "orders");
    cli.ok(
        ALICE,
        &[
            "set-deletion-protection",
            "alias/cli",
            "--on",
            "--description",
            "prod",
        ],
    )
    .await;
    let err = cli
        .fails(
            ALICE,
            &[
                "schedule-key-deletion",
                "alias/cli",
                "--pending-window-days",
                "7",
            ],
        )
        .await;
    assert!(
        err.starts_with("error: FAILED_PRECONDITION: Forbidden.DeletionProtection"),
        "{err}"
    );
    cli.ok(ALICE, &["set-deletion-protection", "alias/cli", "--off"])
        .await;
    let err = cli
        .fails(
            ALICE,
            &[
                "schedule-key-deletion",
                "alias/cli",
                "--pending-window-days",
                "6",
            ],
        )
        .await;
    assert!(
        err.contains("INVALID_ARGUMENT: InvalidParameter.PendingWindowInDays"),
        "{err}"
    );
    let pending = cli
        .json(
            ALICE,
            &[
                "schedule-key-deletion",
                "alias/cli",
                "--pending-window-days",
                "7",
            ],
        )
        .await;
    assert_eq!(pending["key_state"], "PendingDeletion");
    assert!(pending["delete_date"].is_string());
    let back = cli.json(ALICE, &["cancel-key-deletion", &key_id]).await;
    assert_eq!(back["key_state"], "Enabled");
    let rotation = cli
        .json(
            ALICE,
            &[
                "update-rotation-policy",
                "alias/cli",
                "--rotation-days",
                "30",
            ],
        )
        .await;
    assert_eq!(rotation["rotation_interval_days"], 30);
    let text = cli
        .ok(ALICE, &["update-rotation-policy", "alias/cli", "--disable"])
        .await;
    assert!(
        text.contains("rotation:") && text.contains("Disabled"),
        "{text}"
    );

    // Versions.
    let v2 = cli.json(ALICE, &["create-key-version", "alias/cli"]).await;
    assert_eq!(v2["is_primary"], true);
    let versions = cli
        .json(ALICE, &["list-key-versions", "alias/cli", "--all"])
        .await;
    assert_eq!(versions["key_versions"].as_array().unwrap().len(), 2);
    let v1 = versions["key_versions"][0]["key_version_id"]
        .as_str()
        .unwrap()
        .to_string();
    let text = cli
        .ok(
            ALICE,
            &["describe-key-version", "alias/cli", "--version", &v1],
        )
        .await;
    assert!(
        text.contains(&v1) && text.contains("primary:") && text.contains("no"),
        "{text}"
    );
    let page = cli
        .ok(ALICE, &["list-key-versions", &key_id, "--page-size", "1"])
        .await;
    assert!(page.contains("--page-token"), "{page}");

    // Aliases.
    cli.ok(ALICE, &["create-alias", "alias/two", "--key", "alias/cli"])
        .await;
    let err = cli
        .fails(ALICE, &["create-alias", "alias/two", "--key", &key_id])
        .await;
    assert!(
        err.contains("ALREADY_EXISTS: Forbidden.AliasExists"),
        "{err}"
    );
    let aliases = cli.ok(ALICE, &["list-aliases"]).await;
    assert!(
        aliases.contains("alias/cli") && aliases.contains("alias/two"),
        "{aliases}"
    );
    let other = cli.json(ALICE, &["create-key", "--instance", &sw]).await;
    let other_id = other["key_id"].as_str().unwrap().to_string();
    cli.ok(ALICE, &["update-alias", "alias/two", "--key", &other_id])
        .await;
    let by_key = cli
        .json(ALICE, &["list-aliases-by-key-id", &other_id])
        .await;
    assert_eq!(by_key["aliases"][0]["alias_name"], "alias/two");
    cli.ok(ALICE, &["delete-alias", "alias/two"]).await;
    let err = cli.fails(ALICE, &["describe-key", "alias/two"]).await;
    assert!(
        err.starts_with("error: NOT_FOUND: Forbidden.AliasNotFound"),
        "{err}"
    );

    // Tags.
    cli.ok(
        ALICE,
        &[
            "tag-resources",
            "--key",
            "alias/cli",
            "--key",
            &other_id,
            "--tag",
            "team=kms",
        ],
    )
    .await;
    let tags = cli.json(ALICE, &["list-resource-tags", "alias/cli"]).await;
    assert_eq!(tags["tags"].as_array().unwrap().len(), 2);
    let err = cli
        .fails(
            ALICE,
            &["tag-resources", "--key", "alias/cli", "--tag", "aliyun:x=1"],
        )
        .await;
    assert!(err.contains("InvalidParameter.TagKey"), "{err}");
    cli.ok(
        ALICE,
        &["untag-resources", "--key", "alias/cli", "--tag-key", "env"],
    )
    .await;
    let text = cli.ok(ALICE, &["list-resource-tags", "alias/cli"]).await;
    assert_eq!(text, "KEY   VALUE\nteam  kms\n");

    // Policies.
    let policy = format!(
        r#"{{"Version":"1","Statement":[{{"Effect":"Allow","Principal":{{"RAM":["acs:ram::{ACCOUNT}:*"]}},"Action":["kms:*"],"Resource":["*"]}}]}}"#
    );
    let file = stack.dir().join("policy.json");
    std::fs::write(&file, &policy).unwrap();
    cli.ok(
        ALICE,
        &[
            "set-key-policy",
            "alias/cli",
            "--policy-file",
            file.to_str().unwrap(),
        ],
    )
    .await;
    let got = cli.json(ALICE, &["get-key-policy", "alias/cli"]).await;
    assert_eq!(got["policy"]["Version"], "1");
    let err = cli
        .fails(ALICE, &["set-key-policy", "alias/cli", "--policy", "{}"])
        .await;
    assert!(err.contains("InvalidParameter.Policy"), "{err}");

    // Count kept true.
    let instance = cli.json(ALICE, &["get-kms-instance", &sw]).await;
    assert_eq!(instance["key_count"], 2);
}

/// The README walkthrough run a second time: its first command, a second default key, is
/// refused with the key there is and how to go on, not only that it exists. A principal the
/// default key's policy does not let describe it is not told its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_default_key_says_how_to_use_the_first() {
    let stack = Stack::start().await.unwrap();
    let cli = Cli { stack: &stack };
    let first_run = [
        "create-key",
        "--alias",
        "alias/demo",
        "--description",
        "my first key",
    ];
    let key = cli.json(ALICE, &first_run).await;
    let key_id = key["key_id"].as_str().unwrap().to_string();
    let err = cli.fails(ALICE, &first_run).await;
    for want in [
        format!(
            "error: ALREADY_EXISTS: Forbidden.DefaultKeyExists: the account already has its \
             default key, {key_id} (alias/demo): use it by that key id or alias (DescribeKey \
             shows it)"
        ),
        "create them in a KMS instance (CreateKey with kms_instance_id".to_string(),
    ] {
        assert!(err.contains(&want), "{want:?} missing in {err}");
    }

    // Under a policy that lets only the administrator describe it, a member is not told.
    let admin_only = format!(
        r#"{{"Version":"1","Statement":[{{"Effect":"Allow","Principal":{{"RAM":["{ADMIN}"]}},"Action":["kms:*"],"Resource":["*"]}}]}}"#
    );
    stack
        .keys(Some(ALICE))
        .unwrap()
        .set_key_policy(kms_proto::kms::v1::SetKeyPolicyRequest {
            key_id: key_id.clone(),
            policy: admin_only,
        })
        .await
        .unwrap();
    let err = cli
        .fails("acs:ram::1234567890123456:user/member", &["create-key"])
        .await;
    assert!(
        err.contains(
            "Forbidden.DefaultKeyExists: the account already has its default key (ListKeys"
        ) && !err.contains(&key_id),
        "{err}"
    );
}
