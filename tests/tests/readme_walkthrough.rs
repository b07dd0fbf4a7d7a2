//! The README's five-minute walkthrough, run as written, twice, against one `kmsctl dev up`.
//!
//! The commands come from README.md itself: every `sh` block of the walkthrough section, but
//! the one that starts the stack (`scripts/dev-up.sh`, which builds and hands over to `kmsctl
//! dev up --dir .dev`: the test runs that itself, on free ports) and the one for `grpcurl`,
//! which is not one of the project's tools. They run in one shell per pass, in a directory
//! holding `.dev` and `target/debug/kmsctl`, with `KMS_CONTROL_ADDR` and `KMS_DATA_ADDR`
//! naming the test's ports. A comment beside a command is what it must do:
//! `# prints: TEXT` succeeds printing TEXT, `# CODE: Reason` fails with that gRPC code and
//! reason code; any other command succeeds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use kms_e2e::bin_path;
use kms_e2e::kmsctl::DevUp;

/// One command of the walkthrough and what it must do.
#[derive(Debug)]
struct Step {
    line: String,
    expect: Expect,
}

#[derive(Debug, PartialEq)]
enum Expect {
    Success,
    Prints(String),
    Fails(String),
}

/// The `sh` blocks of the README section `heading`, each as its lines.
fn blocks(readme: &str, heading: &str) -> Vec<Vec<String>> {
    let start = readme.find(heading).expect("the walkthrough heading");
    let section = &readme[start + heading.len()..];
    let end = section
        .find("\n## ")
        .into_iter()
        .chain(section.find("\n### "))
        .min()
        .unwrap_or(section.len());
    let mut out = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in section[..end].lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => out.extend(current.take()),
            (Some(block), l) => block.push(l.to_string()),
            (None, _) => {}
        }
    }
    out
}

/// Where a comment starts in a shell line: a `#` after whitespace, outside quotes.
fn comment_start(line: &str) -> Option<usize> {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single && prev != '\\' => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return Some(i),
            _ => {}
        }
        prev = c;
    }
    None
}

/// The commands of a block, with what each must do; comment lines and blank lines dropped,
/// continuation lines joined.
fn steps(block: &[String]) -> Vec<Step> {
    let mut joined: Vec<String> = Vec::new();
    let mut pending = String::new();
    for line in block {
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        pending.push_str(line);
        joined.push(std::mem::take(&mut pending));
    }
    let mut out = Vec::new();
    for line in joined {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (command, comment) = match comment_start(&line) {
            Some(i) => (line[..i].trim_end(), line[i + 1..].trim()),
            None => (line.as_str(), ""),
        };
        let expect = if let Some(text) = comment.strip_prefix("prints:") {
            Expect::Prints(text.trim().to_string())
        } else if comment.split_once(": ").is_some_and(|(code, _)| {
            !code.is_empty() && code.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        }) {
            Expect::Fails(comment.to_string())
        } else {
            Expect::Success
        };
        out.push(Step {
            line: command.to_string(),
            expect,
        });
    }
    out
}

/// The walkthrough's steps from README.md; the blocks left out are named and counted.
fn walkthrough() -> Vec<Step> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let blocks = blocks(&readme, "## A five-minute walkthrough");
    let first_word = |b: &Vec<String>| {
        b.iter()
            .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
            .unwrap_or_default()
    };
    let (left_out, run): (Vec<_>, Vec<_>) = blocks
        .iter()
        .partition(|b| matches!(first_word(b).as_str(), "scripts/dev-up.sh" | "grpcurl"));
    assert_eq!(
        left_out.len(),
        2,
        "the walkthrough's stack start and grpcurl blocks: {left_out:?}"
    );
    let steps: Vec<Step> = run.into_iter().flat_map(|b| steps(b)).collect();
    assert!(steps.len() >= 12, "too few commands found: {steps:?}");
    steps
}

/// Runs every step in one shell in `cwd`; each step's exit code, stdout and stderr.
async fn run_pass(
    cwd: &Path,
    steps: &[Step],
    info: &serde_json::Value,
    pass: usize,
) -> Vec<(i32, String, String)> {
    let results = cwd.join(format!("pass-{pass}"));
    std::fs::create_dir_all(&results).unwrap();
    let mut script = String::new();
    for (n, step) in steps.iter().enumerate() {
        let out = results.join(n.to_string());
        script.push_str(&format!(
            "{{\n{}\n}} >'{o}.out' 2>'{o}.err' </dev/null; echo $? >'{o}.rc'\n",
            step.line,
            o = out.display()
        ));
    }
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-c")
        .arg(&script)
        .current_dir(cwd)
        .env("KMS_CONTROL_ADDR", info["control_addr"].as_str().unwrap())
        .env("KMS_DATA_ADDR", info["data_addr"].as_str().unwrap())
        .env("KMSCTL_CONFIG", cwd.join("no-kmsctl-config.toml"))
        .kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KMS_")
            && name != "KMS_CONTROL_ADDR"
            && name != "KMS_DATA_ADDR"
        {
            cmd.env_remove(name);
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(300), cmd.status())
        .await
        .expect("the walkthrough finishes within 5 minutes")
        .unwrap();
    assert!(status.success(), "the shell itself failed: {status}");
    (0..steps.len())
        .map(|n| {
            let read = |ext: &str| {
                std::fs::read_to_string(results.join(format!("{n}.{ext}"))).unwrap_or_default()
            };
            (read("rc").trim().parse().unwrap(), read("out"), read("err"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_runs_twice_against_one_stack() {
    let steps = walkthrough();
    // `scripts/dev-up.sh` hands over to `kmsctl dev up --dir .dev` from the repository root:
    // here the root is a directory holding `.dev` and the `target/debug/kmsctl` the README
    // calls.
    let up = DevUp::start_named(tempfile::tempdir().unwrap(), ".dev", &[]);
    let cwd = up.root().to_path_buf();
    std::fs::create_dir_all(cwd.join("target/debug")).unwrap();
    std::os::unix::fs::symlink(bin_path("kmsctl").unwrap(), cwd.join("target/debug/kmsctl"))
        .unwrap();
    let info = up.info();

    for pass in 1..=2 {
        let results = run_pass(&cwd, &steps, &info, pass).await;
        for (step, (rc, out, err)) in steps.iter().zip(&results) {
            let what = format!("pass {pass}: `{}`\nstdout: {out}\nstderr: {err}", step.line);
            match &step.expect {
                Expect::Success => assert_eq!(*rc, 0, "{what}"),
                Expect::Prints(text) => {
                    assert_eq!(*rc, 0, "{what}");
                    assert_eq!(out.trim_end(), text, "{what}");
                }
                Expect::Fails(refusal) => {
                    assert_ne!(*rc, 0, "{what}");
                    assert!(err.contains(refusal.as_str()), "{what}");
                }
            }
        }
    }
}

#[test]
fn steps_read_the_outcome_beside_a_command() {
    let block: Vec<String> = [
        "export A=1",
        "# a comment line",
        "",
        "kmsctl decrypt --in b   # prints: hello",
        "kmsctl decrypt --in b   # INVALID_ARGUMENT: InvalidCiphertext",
        "openssl dgst -verify x  # Verified OK",
        "echo 'a # not a comment' \\",
        "  more",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let s = steps(&block);
    assert_eq!(s.len(), 5, "{s:?}");
    assert_eq!(s[0].expect, Expect::Success);
    assert_eq!(s[1].line, "kmsctl decrypt --in b");
    assert_eq!(s[1].expect, Expect::Prints("hello".into()));
    assert_eq!(
        s[2].expect,
        Expect::Fails("INVALID_ARGUMENT: InvalidCiphertext".into())
    );
    assert_eq!(s[3].expect, Expect::Success);
    assert_eq!(s[4].line, "echo 'a # not a comment'   more");
}
