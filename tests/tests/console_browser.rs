//! The web console against the real planes: the guide walked in headless Chromium over
//! WebDriver (a screenshot of every page under `target/console-screenshots/`), and the
//! console's defences over plain HTTP: escaping, CSRF, identity headers from untrusted peers,
//! and the API's refusal shown to a caller without permission.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use kms_e2e::{ACCOUNT, ALICE, MALLORY, OPERATOR, PARTNER, Stack, bin_path, eventually, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PARTNER_ACCOUNT: &str = "6543210987654321";
const READY: Duration = Duration::from_secs(30);

/// A child process killed with its whole process group when dropped.
struct Guard {
    child: Child,
    name: &'static str,
}

impl Drop for Guard {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.wait();
        let _ = self.name;
    }
}

fn spawn_group(name: &'static str, command: &mut Command) -> Result<Guard> {
    use std::os::unix::process::CommandExt;
    let child = command
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Guard { child, name })
}

/// One HTTP/1.1 exchange: status, headers (lowercase names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Answer> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    if method == "POST" {
        request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: body.to_string(),
    })
}

/// Percent-encoding for form values.
fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A kms-console process for `stack`.
struct Console {
    addr: SocketAddr,
    _guard: Guard,
}

async fn start_console(
    stack: &Stack,
    name: &str,
    trusted: &[&str],
    dev_json: Option<&Path>,
) -> Result<Console> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let trusted: Vec<String> = trusted.iter().map(|t| format!("{t:?}")).collect();
    let mut config = format!(
        "listen_addr = \"{addr}\"\n\
         control_plane_url = \"http://{}\"\n\
         data_plane_url = \"http://{}\"\n\
         [identity.proxy_header]\n\
         trusted_proxies = [{}]\n",
        stack.control_addr(),
        stack.data_addr(),
        trusted.join(", ")
    );
    if let Some(path) = dev_json {
        config.push_str(&format!(
            "[identity.dev_sign_in]\ndev_json = {:?}\n",
            path.display().to_string()
        ));
    }
    let file = stack.dir().join(format!("{name}.toml"));
    std::fs::write(&file, config)?;
    let log = std::fs::File::create(stack.dir().join(format!("logs/{name}.log")))?;
    let guard = spawn_group(
        "kms-console",
        Command::new(bin_path("kms-console")?)
            .arg("--config")
            .arg(&file)
            .env_remove("KMS_LISTEN_ADDR")
            .stdout(Stdio::null())
            .stderr(log),
    )?;
    eventually(READY, "kms-console /healthz", || async move {
        http(addr, "GET", "/healthz", &[], "")
            .await
            .ok()
            .filter(|a| a.status == 200)
    })
    .await?;
    Ok(Console {
        addr,
        _guard: guard,
    })
}

/// `dev.json` naming the principals the sign-in page offers.
fn write_dev_json(dir: &Path) -> PathBuf {
    let path = dir.join("dev.json");
    let doc = serde_json::json!({
        "operator_principal": OPERATOR,
        "account_principal": ALICE,
        "partner_principal": PARTNER,
    });
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

fn openssl(args: &[&str]) -> Result<String> {
    let out = Command::new("openssl").args(args).output()?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn kmsctl(stack: &Stack, args: &[&str]) -> Result<String> {
    let out = Command::new(bin_path("kmsctl")?)
        .args(args)
        .env(
            "KMS_CONTROL_ADDR",
            format!("http://{}", stack.control_addr()),
        )
        .env("KMS_DATA_ADDR", format!("http://{}", stack.data_addr()))
        .env("KMS_PRINCIPAL", ALICE)
        .env_remove("KMS_CA")
        .env_remove("KMS_CERT")
        .env_remove("KMS_KEY")
        .output()?;
    if !out.status.success() {
        bail!("kmsctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A headless Chromium session driven through a chromedriver of our own.
struct Browser {
    client: Client,
    base: String,
    shots: PathBuf,
    count: usize,
    _driver: Guard,
    /// Chromium's temporary files (its `TMPDIR`), removed after the driver is stopped.
    _tmp: tempfile::TempDir,
}

impl Browser {
    async fn start(console: SocketAddr) -> Result<Self> {
        let port = free_port()?;
        let tmp = tempfile::tempdir()?;
        let driver = spawn_group(
            "chromedriver",
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .env("TMPDIR", tmp.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        let url = format!("http://127.0.0.1:{port}");
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1000", "--no-first-run", "--disable-extensions"]
            }),
        );
        let client = eventually(READY, "chromedriver session", || {
            let caps = caps.clone();
            let url = url.clone();
            async move {
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps)
                    .connect(&url)
                    .await
                    .ok()
            }
        })
        .await?;
        let target = bin_path("kms-console")?
            .parent()
            .and_then(Path::parent)
            .context("no target directory")?
            .join("console-screenshots");
        std::fs::create_dir_all(&target)?;
        Ok(Self {
            client,
            base: format!("http://{console}"),
            shots: target,
            count: 0,
            _driver: driver,
            _tmp: tmp,
        })
    }

    /// Saves a screenshot of the page shown, numbered in the order of the walk.
    async fn shot(&mut self, name: &str) -> Result<()> {
        self.count += 1;
        let png = self.client.screenshot().await?;
        std::fs::write(
            self.shots.join(format!("{:02}-{name}.png", self.count)),
            png,
        )?;
        Ok(())
    }

    async fn goto(&mut self, path: &str, name: &str) -> Result<()> {
        self.client.goto(&format!("{}{path}", self.base)).await?;
        self.shot(name).await
    }

    async fn title(&self) -> Result<String> {
        Ok(self.client.title().await?)
    }

    /// Waits until the page's title starts with `title`, then takes its screenshot.
    async fn arrive(&mut self, title: &str, name: &str) -> Result<()> {
        let client = self.client.clone();
        let got = eventually(Duration::from_secs(10), title, || {
            let client = client.clone();
            async move {
                let t = client.title().await.ok()?;
                t.starts_with(title).then_some(t)
            }
        })
        .await;
        if got.is_err() {
            let source = self.client.source().await.unwrap_or_default();
            bail!(
                "expected page {title:?}, got {:?}: {source}",
                self.title().await?
            );
        }
        self.shot(name).await
    }

    async fn click(&self, css: &str) -> Result<()> {
        self.client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("no {css}"))?
            .click()
            .await?;
        Ok(())
    }

    async fn fill(&self, css: &str, text: &str) -> Result<()> {
        let e = self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("no {css}"))?;
        e.clear().await?;
        e.send_keys(text).await?;
        Ok(())
    }

    async fn select(&self, css: &str, value: &str) -> Result<()> {
        self.client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("no {css}"))?
            .select_by_value(value)
            .await?;
        Ok(())
    }

    async fn text(&self, css: &str) -> Result<String> {
        Ok(self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("no {css}"))?
            .text()
            .await?)
    }

    /// Clicks the button or link with exactly `label` inside the element matched by `css`.
    async fn click_in(&self, css: &str, label: &str) -> Result<()> {
        let scope = self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("no {css}"))?;
        let xpath = format!(".//*[(self::a or self::button) and normalize-space(.)='{label}']");
        scope
            .find(Locator::XPath(&xpath))
            .await
            .with_context(|| format!("no {label:?} in {css}"))?
            .click()
            .await?;
        Ok(())
    }

    async fn sign_in(&mut self, principal: &str, name: &str) -> Result<()> {
        self.goto("/sign-in", &format!("sign-in-{name}")).await?;
        self.click(&format!("input[value='{principal}']")).await?;
        self.click("form[action='/sign-in'] button[type=submit]")
            .await?;
        self.arrive("Keys", &format!("keys-as-{name}")).await
    }

    async fn sign_out(&mut self) -> Result<()> {
        self.click("form[action='/sign-out'] button").await?;
        self.arrive("Sign in", "signed-out").await
    }

    /// Fills and submits the Create Key form for `instance`; the new key's id.
    async fn create_key(
        &mut self,
        instance: &str,
        fields: &[(&str, &str)],
        name: &str,
    ) -> Result<String> {
        self.goto(
            &format!("/keys?tab=keys&instance={instance}"),
            &format!("keys-before-{name}"),
        )
        .await?;
        self.click("#create-key").await?;
        self.arrive("Create Key", &format!("create-key-{name}"))
            .await?;
        for (css, value) in fields {
            match *value {
                "click" => self.click(css).await?,
                v if css.starts_with("select") => self.select(css, v).await?,
                v => self.fill(css, v).await?,
            }
        }
        self.click("form.create button[type=submit]").await?;
        self.arrive("Key Details", &format!("created-{name}"))
            .await?;
        self.text("#key-id code").await
    }

    async fn state(&self) -> Result<String> {
        self.text("#key-state").await
    }
}

/// Instance ids on the KMS Instances page whose row mentions `kind`.
async fn instance_rows(b: &Browser, kind: &str) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for row in b
        .client
        .find_all(Locator::Css("tr[data-instance-id]"))
        .await?
    {
        if row.text().await?.contains(kind) {
            ids.push(row.attr("data-instance-id").await?.unwrap_or_default());
        }
    }
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_walks_the_guide_in_a_browser() {
    let stack = Stack::start().await.unwrap();
    let dev_json = write_dev_json(stack.dir());
    let console = start_console(&stack, "console", &["127.0.0.1"], Some(&dev_json))
        .await
        .unwrap();
    let mut b = Browser::start(console.addr).await.unwrap();
    let result = walk(&stack, &console, &mut b).await;
    let _ = b.client.clone().close().await;
    if let Err(e) = result {
        panic!(
            "{e:#}\nconsole log:\n{}",
            std::fs::read_to_string(stack.dir().join("logs/console.log")).unwrap_or_default()
        );
    }
}

async fn walk(stack: &Stack, console: &Console, b: &mut Browser) -> Result<()> {
    // Operators: create a software and a hardware instance for the account; share one.
    b.sign_in(OPERATOR, "operator").await?;
    b.goto("/instances", "instances").await?;
    for kind in ["software", "hardware"] {
        b.click(&format!("#type-{kind}")).await?;
        b.fill("#owner_account_id", ACCOUNT).await?;
        b.fill("#key_quota", "20").await?;
        b.fill("#access_management_quota", "2").await?;
        b.click("#create-instance button[type=submit]").await?;
        b.arrive("KMS Instances", &format!("instance-created-{kind}"))
            .await?;
    }
    let software = instance_rows(b, "Software key management")
        .await?
        .pop()
        .context("software instance")?;
    let hardware = instance_rows(b, "Hardware key management")
        .await?
        .pop()
        .context("hardware instance")?;
    let row = format!("tr[data-instance-id='{software}']");
    b.fill(&format!("#share-{software}"), PARTNER_ACCOUNT)
        .await?;
    b.click_in(&row, "Share").await?;
    b.arrive("KMS Instances", "instance-shared").await?;
    assert!(
        b.text(&format!("{row} .shared"))
            .await?
            .contains(PARTNER_ACCOUNT)
    );
    assert_eq!(
        b.text(&format!("{row} .access-quota")).await?,
        "1 shared / 2"
    );
    assert_eq!(b.text(&format!("{row} .key-quota")).await?, "0 / 20");
    b.click_in(&row, &format!("Unshare {PARTNER_ACCOUNT}"))
        .await?;
    b.arrive("KMS Instances", "instance-unshared").await?;
    assert_eq!(
        b.text(&format!("{row} .access-quota")).await?,
        "0 shared / 2"
    );
    b.fill(&format!("#quota-{software}"), "30").await?;
    b.click_in(&row, "Update Quotas").await?;
    b.arrive("KMS Instances", "instance-quota").await?;
    assert_eq!(b.text(&format!("{row} .key-quota")).await?, "0 / 30");
    b.sign_out().await?;

    // A key administrator of the account follows "Create a key".
    b.sign_in(ALICE, "account").await?;
    let description = "first key <script>alert(\"x\")</script> & 'quotes'";
    let first = b
        .create_key(
            &software,
            &[
                ("#alias", "console-demo"),
                ("#tag-key-0", "env"),
                ("#tag-value-0", "prod"),
                ("#tag-key-1", "team"),
                ("#tag-value-1", "payments"),
                ("#rotation_days", "30"),
                ("#description", description),
            ],
            "software",
        )
        .await?;
    assert_eq!(
        b.text("#key-description").await?,
        description,
        "the description renders as text"
    );
    assert_eq!(b.state().await?, "Enabled");

    // It is listed, with its alias and both tags.
    b.goto(&format!("/keys?tab=keys&instance={software}"), "keys-list")
        .await?;
    let row = format!("tr[data-key-id='{first}']");
    let listed = b.text(&row).await?;
    for want in [
        "alias/console-demo",
        "env:prod",
        "team:payments",
        "Enabled",
        "Aliyun_AES_256",
    ] {
        assert!(listed.contains(want), "{want} in {listed}");
    }

    // Disable (with the Disable Key dialog) and Enable from the Actions column.
    b.click_in(&row, "Disable").await?;
    b.arrive("Disable Key", "disable-dialog").await?;
    assert!(
        b.text(".dialog")
            .await?
            .contains("cannot use disabled keys")
    );
    b.click(".dialog button[type=submit]").await?;
    b.arrive("Key Details", "disabled").await?;
    assert_eq!(b.state().await?, "Disabled");
    b.goto(
        &format!("/keys?tab=keys&instance={software}"),
        "keys-disabled",
    )
    .await?;
    b.click_in(&row, "Enable").await?;
    b.arrive("Key Details", "enabled").await?;
    assert_eq!(b.state().await?, "Enabled");

    // Deletion Protection on: Schedule Deletion is refused with the API's reason and message.
    b.click("#deletion-protection-toggle").await?;
    b.arrive("Key Details", "protection-on").await?;
    assert!(b.text("#deletion-protection-state").await?.contains("on"));
    b.goto(
        &format!("/keys/{first}/schedule-deletion"),
        "schedule-dialog",
    )
    .await?;
    assert!(b.text(".dialog").await?.contains("7 to 366 days"));
    b.fill("#pending_days", "7").await?;
    b.click(".dialog button[type=submit]").await?;
    b.arrive("The request failed", "schedule-refused").await?;
    assert_eq!(b.text(".reason").await?, "Forbidden.DeletionProtection");
    assert!(!b.text(".message").await?.is_empty());
    b.goto(&format!("/keys/{first}"), "details").await?;
    b.click("#deletion-protection-toggle").await?;
    b.arrive("Key Details", "protection-off").await?;
    assert!(b.text("#deletion-protection-state").await?.contains("off"));

    // Schedule Deletion, then Cancel Key Deletion.
    b.goto(
        &format!("/keys/{first}/schedule-deletion"),
        "schedule-dialog-again",
    )
    .await?;
    b.fill("#pending_days", "7").await?;
    b.click(".dialog button[type=submit]").await?;
    b.arrive("Key Details", "scheduled").await?;
    assert_eq!(b.state().await?, "Pending Deletion");
    b.click_in(".actions", "Cancel Key Deletion").await?;
    b.arrive("Key Details", "deletion-cancelled").await?;
    assert_eq!(b.state().await?, "Enabled");

    // Edit Tag on the details page, an alias made and removed, the policy's validation.
    b.click_in("#tags-section", "Remove team").await?;
    b.arrive("Key Details", "tag-removed").await?;
    assert!(!b.text("#tags-section").await?.contains("team:payments"));
    b.fill("#new-alias", "console-extra").await?;
    b.click("button[value=create]").await?;
    b.arrive("Key Details", "alias-created").await?;
    assert!(
        b.text("#basic-section")
            .await?
            .contains("alias/console-extra")
    );
    b.click_in("main", "Delete Alias alias/console-extra")
        .await?;
    b.arrive("Key Details", "alias-deleted").await?;
    assert!(
        !b.text("#basic-section")
            .await?
            .contains("alias/console-extra")
    );
    b.fill("#rotation_days", "90").await?;
    b.click_in("main", "Save Rotation Settings").await?;
    b.arrive("Key Details", "rotation-saved").await?;
    assert_eq!(b.text("#rotation-period").await?, "90");
    b.fill("#description", "updated in the console").await?;
    b.click_in("main", "Save Description").await?;
    b.arrive("Key Details", "description-saved").await?;
    assert_eq!(b.text("#key-description").await?, "updated in the console");
    b.fill("#policy", "{\"Version\": \"1\"}").await?;
    b.click_in("main", "Save Policy").await?;
    b.arrive("The request failed", "policy-refused").await?;
    assert!(
        b.text(".reason").await?.starts_with("InvalidParameter"),
        "{}",
        b.text(".reason").await?
    );

    // Batch Add Tag / Remove Tag on two keys, and the tag filter.
    let second = b
        .create_key(&software, &[("#alias", "console-second")], "second")
        .await?;
    b.goto(&format!("/keys?tab=keys&instance={software}"), "keys-two")
        .await?;
    b.click(&format!("#select-{first}")).await?;
    b.click(&format!("#select-{second}")).await?;
    b.fill("#batch-tag-key", "batch").await?;
    b.fill("#batch-tag-value", "yes").await?;
    b.click("button[name=op][value=add]").await?;
    b.arrive("Keys", "batch-tagged").await?;
    b.goto(
        &format!("/keys?tab=keys&instance={software}&tag_key=batch"),
        "filter-tag",
    )
    .await?;
    assert_eq!(
        b.client
            .find_all(Locator::Css("tr[data-key-id]"))
            .await?
            .len(),
        2
    );
    b.goto(
        &format!("/keys?tab=keys&instance={software}&state=disabled"),
        "filter-state",
    )
    .await?;
    assert_eq!(
        b.client
            .find_all(Locator::Css("tr[data-key-id]"))
            .await?
            .len(),
        0
    );
    b.goto(&format!("/keys?tab=keys&instance={software}"), "keys-untag")
        .await?;
    b.click(&format!("#select-{first}")).await?;
    b.click(&format!("#select-{second}")).await?;
    b.fill("#batch-tag-key", "batch").await?;
    b.click("button[name=op][value=remove]").await?;
    b.arrive("Keys", "batch-untagged").await?;
    b.goto(
        &format!("/keys?tab=keys&instance={software}&tag_key=batch"),
        "filter-tag-gone",
    )
    .await?;
    assert_eq!(
        b.client
            .find_all(Locator::Css("tr[data-key-id]"))
            .await?
            .len(),
        0
    );

    // An EC_P256 key in the hardware instance; kmsctl signs, OpenSSL verifies with the
    // public key downloaded from the Key Version tab.
    let ec = b
        .create_key(
            &hardware,
            &[
                ("#type-asymmetric", "click"),
                ("select#key_spec", "EC_P256"),
                ("select#key_usage", "SIGN/VERIFY"),
                ("#alias", "console-ec"),
            ],
            "hardware-ec",
        )
        .await?;
    let dir = tempfile::tempdir()?;
    let (msg, sig, pem) = (
        dir.path().join("msg"),
        dir.path().join("sig"),
        dir.path().join("pub.pem"),
    );
    std::fs::write(&msg, b"signed in the browser test")?;
    kmsctl(
        stack,
        &[
            "sign",
            "--key",
            "alias/console-ec",
            "--algorithm",
            "ECDSA_SHA_256",
            "--in",
            msg.to_str().unwrap(),
            "--out",
            sig.to_str().unwrap(),
        ],
    )?;
    b.goto(&format!("/keys/{ec}?tab=versions"), "key-version")
        .await?;
    assert!(b.text("table.versions").await?.contains("Primary"));
    b.click_in("table.versions", "View Public Key").await?;
    b.arrive("View Public Key", "view-public-key").await?;
    let shown = b.text("#public-key").await?;
    let href = b
        .client
        .find(Locator::LinkText("Download"))
        .await?
        .attr("href")
        .await?
        .context("Download has no href")?;
    let downloaded = http(
        console.addr,
        "GET",
        &href,
        &[("x-kms-principal", ALICE)],
        "",
    )
    .await?;
    assert_eq!(downloaded.status, 200);
    assert!(
        downloaded
            .header("content-disposition")
            .unwrap_or_default()
            .contains("attachment")
    );
    assert_eq!(downloaded.body.trim(), shown.trim());
    std::fs::write(&pem, &downloaded.body)?;
    let verified = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        pem.to_str().unwrap(),
        "-signature",
        sig.to_str().unwrap(),
        msg.to_str().unwrap(),
    ])?;
    assert!(verified.contains("Verified OK"), "{verified}");

    // External key material: wrapping public key and token from the console, material
    // wrapped by OpenSSL, uploaded, then deleted.
    let external = b
        .create_key(
            &software,
            &[
                ("#origin-external", "click"),
                ("#external-ack", "click"),
                ("#alias", "console-external"),
            ],
            "external",
        )
        .await?;
    assert_eq!(b.state().await?, "Pending Import");
    b.goto(&format!("/keys/{external}/import"), "import")
        .await?;
    b.select("select#wrapping_algorithm", "RSAES_OAEP_SHA_256")
        .await?;
    b.click_in("main", "Obtain Parameters").await?;
    b.arrive("Import Key Material", "import-parameters").await?;
    assert_ne!(b.text("#token-expiry").await?, "-");
    let wrapping = dir.path().join("wrapping.pem");
    std::fs::write(&wrapping, b.text("#wrapping-public-key").await? + "\n")?;
    let (material, wrapped) = (
        dir.path().join("material.bin"),
        dir.path().join("wrapped.bin"),
    );
    openssl(&["rand", "-out", material.to_str().unwrap(), "32"])?;
    openssl(&[
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-inkey",
        wrapping.to_str().unwrap(),
        "-in",
        material.to_str().unwrap(),
        "-out",
        wrapped.to_str().unwrap(),
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha256",
        "-pkeyopt",
        "rsa_mgf1_md:sha256",
    ])?;
    b.client
        .find(Locator::Css("#material"))
        .await?
        .send_keys(wrapped.to_str().unwrap())
        .await?;
    b.fill("#expire_days", "30").await?;
    b.click("form[enctype='multipart/form-data'] button[type=submit]")
        .await?;
    b.arrive("Key Details", "imported").await?;
    assert_eq!(b.state().await?, "Enabled");
    assert_ne!(b.text("#material-expiry").await?, "-");
    let blob = kmsctl(
        stack,
        &[
            "encrypt",
            "--key",
            "alias/console-external",
            "--plaintext",
            "imported",
        ],
    )?;
    assert!(!blob.trim().is_empty());
    b.click_in("main", "Delete Key Material").await?;
    b.arrive("Delete Key Material", "delete-material-dialog")
        .await?;
    b.click(".dialog button[type=submit]").await?;
    b.arrive("Key Details", "material-deleted").await?;
    assert_eq!(b.state().await?, "Pending Import");

    // Key Association: Check shows who signed with the EC key.
    b.goto(&format!("/keys/{ec}?tab=association"), "association")
        .await?;
    let base = b.base.clone();
    let client = b.client.clone();
    eventually(
        Duration::from_secs(15),
        "the signature in Key Association",
        || {
            let client = client.clone();
            let url = format!("{base}/keys/{ec}/association");
            async move {
                client.goto(&url).await.ok()?;
                let text = client
                    .find(Locator::Css("table.association"))
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                (text.contains("AsymmetricSign") && text.contains(ALICE)).then_some(())
            }
        },
    )
    .await?;
    b.shot("association-checked").await?;

    // The Default Key tab: Enable the account's default key.
    b.goto("/keys?tab=default", "default-key-tab").await?;
    b.click_in("main", "Enable").await?;
    b.arrive("Enable the Default Key", "default-key-form")
        .await?;
    b.fill("#alias", "console-default").await?;
    b.click("form.create button[type=submit]").await?;
    b.arrive("Key Details", "default-key").await?;
    assert!(b.text("#basic-section").await?.contains("(default key)"));
    b.goto("/keys?tab=default", "default-key-listed").await?;
    assert_eq!(
        b.client
            .find_all(Locator::Css("tr[data-key-id]"))
            .await?
            .len(),
        1
    );
    Ok(())
}

/// The session cookie and CSRF token a page gives to a header-identified caller.
async fn session_of(addr: SocketAddr, principal: &str) -> (String, String) {
    let a = http(
        addr,
        "GET",
        "/keys/new",
        &[("x-kms-principal", principal)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let cookie = a
        .header("set-cookie")
        .expect("a session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let csrf = a
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a csrf field")
        .to_string();
    (cookie, csrf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_refuses_what_it_must() {
    let stack = Stack::start().await.unwrap();
    let instance = stack.software_instance(ACCOUNT, None).await.unwrap();
    let dev_json = write_dev_json(stack.dir());
    let console = start_console(&stack, "console", &["127.0.0.1"], Some(&dev_json))
        .await
        .unwrap();
    let addr = console.addr;
    let alice = [("x-kms-principal", ALICE)];

    // Every answer carries the strict policy; the session cookie is HttpOnly and SameSite.
    let a = http(addr, "GET", "/keys", &alice, "").await.unwrap();
    assert_eq!(
        a.header("content-security-policy"),
        Some(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
    );
    let set_cookie = a.header("set-cookie").unwrap();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    let (cookie, csrf) = session_of(addr, ALICE).await;

    // A POST without the CSRF token, with another session's, or without the session: 403.
    let create = |csrf: &str| {
        form(&[
            ("csrf", csrf),
            ("kms_instance_id", &instance),
            ("key_type", "symmetric"),
            ("key_spec", "Aliyun_AES_256"),
            ("key_usage", "ENCRYPT/DECRYPT"),
            ("origin", "kms"),
            ("description", "<script>alert(\"pwned\")</script>\"'"),
            ("tag_key", "owner"),
            ("tag_value", "ops"),
        ])
    };
    let (_, other_csrf) = session_of(addr, ALICE).await;
    for (headers, body) in [
        (vec![alice[0], ("cookie", cookie.as_str())], create("")),
        (
            vec![alice[0], ("cookie", cookie.as_str())],
            create(&other_csrf),
        ),
        (vec![alice[0]], create(&csrf)),
    ] {
        let a = http(addr, "POST", "/keys", &headers, &body).await.unwrap();
        assert_eq!(a.status, 403, "{}", a.body);
        assert!(a.body.contains("security token"), "{}", a.body);
    }
    let listed = http(
        addr,
        "GET",
        &format!("/keys?instance={instance}"),
        &alice,
        "",
    )
    .await
    .unwrap();
    assert!(
        listed.body.contains("No keys."),
        "nothing was created: {}",
        listed.body
    );

    // With the token: created; the description renders as text.
    let with_session = [alice[0], ("cookie", cookie.as_str())];
    let a = http(addr, "POST", "/keys", &with_session, &create(&csrf))
        .await
        .unwrap();
    assert_eq!(a.status, 303, "{}", a.body);
    let details = a
        .header("location")
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let page = http(addr, "GET", &details, &alice, "").await.unwrap();
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;&quot;'"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<script>alert"), "{}", page.body);

    // A tag value holding markup: the API refuses it, and its message renders as text.
    let tag = form(&[
        ("csrf", &csrf),
        ("op", "add"),
        ("tag_key", "owner2"),
        ("tag_value", "<script>alert('t')</script>"),
    ]);
    let a = http(
        addr,
        "POST",
        &format!("{details}/tags"),
        &with_session,
        &tag,
    )
    .await
    .unwrap();
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("InvalidParameter.Tag"), "{}", a.body);
    assert!(!a.body.contains("<script>alert"), "{}", a.body);
    assert!(a.body.contains("&lt;script&gt;"), "{}", a.body);

    // A caller without permission sees the API's refusal, reason code and all.
    // Another account's caller is told the key does not exist, as the API tells it, and an
    // account that is no operator is refused creating an instance.
    let mallory = [("x-kms-principal", MALLORY)];
    let a = http(addr, "GET", &details, &mallory, "").await.unwrap();
    assert_eq!(a.status, 404, "{}", a.body);
    assert!(
        a.body.contains("Forbidden.KeyNotFound") && a.body.contains("NOT_FOUND"),
        "{}",
        a.body
    );
    let (m_cookie, m_csrf) = session_of(addr, MALLORY).await;
    let a = http(
        addr,
        "POST",
        "/instances",
        &[mallory[0], ("cookie", m_cookie.as_str())],
        &form(&[
            ("csrf", &m_csrf),
            ("instance_type", "software"),
            ("owner_account_id", PARTNER_ACCOUNT),
            ("key_quota", "5"),
            ("access_management_quota", "1"),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(
        a.body.contains("class=\"reason\"") && a.body.contains("PERMISSION_DENIED"),
        "{}",
        a.body
    );

    // A malformed principal in the header is no identity.
    let a = http(
        addr,
        "GET",
        "/keys",
        &[("x-kms-principal", "not-an-arn")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 403);

    // A console that trusts only another address: the same header from loopback is refused
    // outright, even with a signed-in session of the dev page; without it, sign in.
    let strict = start_console(&stack, "strict", &["10.9.9.9"], Some(&dev_json))
        .await
        .unwrap();
    let a = http(strict.addr, "GET", "/keys", &alice, "").await.unwrap();
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(
        a.body.contains("trusted proxy") && !a.body.contains(&instance),
        "{}",
        a.body
    );
    let a = http(strict.addr, "GET", "/keys", &[], "").await.unwrap();
    assert_eq!(a.status, 303);
    assert_eq!(a.header("location"), Some("/sign-in"));
    let a = http(strict.addr, "GET", "/sign-in", &[], "").await.unwrap();
    assert!(
        a.body.contains("Development sign-in"),
        "the dev banner: {}",
        a.body
    );
    let sign_in_cookie = a
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let sign_in_csrf = a
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    // Only principals of dev.json can be chosen.
    let a = http(
        strict.addr,
        "POST",
        "/sign-in",
        &[("cookie", sign_in_cookie.as_str())],
        &form(&[("csrf", &sign_in_csrf), ("principal", MALLORY)]),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 403);
    let a = http(
        strict.addr,
        "POST",
        "/sign-in",
        &[("cookie", sign_in_cookie.as_str())],
        &form(&[("csrf", &sign_in_csrf), ("principal", ALICE)]),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 303);
    let session = a
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let a = http(
        strict.addr,
        "GET",
        "/keys",
        &[("cookie", session.as_str())],
        "",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    assert!(a.body.contains(&instance) && a.body.contains("Development sign-in"));
    let a = http(
        strict.addr,
        "GET",
        "/keys",
        &[("cookie", session.as_str()), ("x-kms-principal", OPERATOR)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 403, "a forged header wins nothing: {}", a.body);
    // A cookie changed by the browser is no session.
    let forged = format!("{}x", session);
    let a = http(
        strict.addr,
        "GET",
        "/keys",
        &[("cookie", forged.as_str())],
        "",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 303);
}
