//! Checks that a stack came through a test whole: the control plane's store agrees with itself
//! (every index entry is the one its record implies, instance key counts, key events without
//! gaps), both audit logs verify under their planes' keys and checkpoints, no plane logged a
//! panic, and both still answer their health checks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use kms_control::schema;
use kms_store::Entry;

use crate::{OPERATOR, Stack, bin_path};

/// The prefixes of every index entry a key record implies.
const INDEX_PREFIXES: [&str; 9] = ["v/", "a/", "d/", "o/", "ik/", "t/", "sd/", "sr/", "sx/"];

/// Checks every entry of a control plane's store (as [`Stack::store_entries`] reads it): every
/// index entry of a key is the one its record implies and there is no other, each instance
/// counts its keys, and the kept key events run without gaps to the revision and name keys
/// there are. Returns the number of keys.
pub fn check_store(entries: &[Entry]) -> Result<usize> {
    let scan = |prefix: &'static [u8]| {
        entries
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .cloned()
    };
    let records: Vec<kms_types::KeyRecord> = scan(schema::KEY_PREFIX)
        .map(|(_, v)| schema::decode_key(&v))
        .collect::<Result<_, _>>()?;

    let mut want: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for r in &records {
        let id = schema::encode_key_id(&r.id);
        for v in &r.versions {
            want.insert(schema::version(&v.id), id.clone());
        }
        want.insert(schema::version(&r.primary_version), id.clone());
        for a in &r.aliases {
            want.insert(schema::alias(&r.account, a), id.clone());
        }
        if r.is_default() {
            want.insert(schema::default_key(&r.account), id.clone());
        }
        want.insert(schema::owner(&r.account, &r.id), schema::marker());
        if let Some(i) = &r.instance {
            want.insert(schema::instance_key(i, &r.id), schema::marker());
        }
        for t in &r.tags {
            want.insert(
                schema::tag(&r.account, &t.key, &r.id),
                schema::encode_text(&t.value),
            );
        }
        if r.state == kms_types::KeyState::PendingDeletion {
            let at = r
                .delete_date
                .with_context(|| format!("{} is pending deletion without a date", r.id))?;
            want.insert(schema::deletion_queue(at, &r.id), schema::marker());
        }
        if let Some(at) = r.scheduled_rotation() {
            want.insert(schema::rotation_queue(at, &r.id), schema::marker());
        }
        if let Some(at) = r.material_expiry() {
            want.insert(schema::material_expiry_queue(at, &r.id), schema::marker());
        }
    }
    let mut have: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for prefix in INDEX_PREFIXES {
        have.extend(scan(prefix.as_bytes()));
    }
    let show = |k: &Vec<u8>| String::from_utf8_lossy(k).into_owned();
    let missing: Vec<String> = want
        .iter()
        .filter(|(k, v)| have.get(*k) != Some(*v))
        .map(|(k, _)| show(k))
        .collect();
    let extra: Vec<String> = have
        .keys()
        .filter(|k| !want.contains_key(*k))
        .map(show)
        .collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "index entries missing or wrong: {missing:?}; without a record: {extra:?}"
    );

    for (_, value) in scan(b"i/") {
        let instance = schema::decode_instance(&value)?;
        let keys = records
            .iter()
            .filter(|r| r.instance.as_ref() == Some(&instance.id))
            .count();
        ensure!(
            usize::try_from(instance.key_count)? == keys,
            "instance {} counts {} keys, holds {keys}",
            instance.id,
            instance.key_count
        );
    }

    let revision = entries
        .iter()
        .find(|(k, _)| k.as_slice() == schema::REVISION)
        .map(|(_, b)| schema::decode_u64(b))
        .transpose()?
        .unwrap_or(0);
    let events: Vec<kms_types::KeyEvent> = scan(schema::EVENT_PREFIX)
        .map(|(_, v)| schema::decode_event(&v))
        .collect::<Result<_, _>>()?;
    let kept = revision.min(schema::EVENT_RETENTION);
    let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
    let want_revisions: Vec<u64> = (revision - kept + 1..=revision).collect();
    ensure!(
        revisions == want_revisions,
        "kept key events {revisions:?}, expected {want_revisions:?}"
    );
    let ids: BTreeSet<String> = records.iter().map(|r| r.id.to_string()).collect();
    for e in &events {
        let id = e
            .key_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        ensure!(
            ids.contains(&id),
            "event of a key that does not exist: {e:?}"
        );
    }
    Ok(records.len())
}

/// Runs `kmsctl audit verify --plane PLANE` as the operator on `plane`'s audit log of `stack`
/// (both planes running): every line's MAC is checked where the key is, and the log against
/// its latest checkpoint. Returns what kmsctl said.
pub async fn verify_audit_log(stack: &Stack, plane: &str) -> Result<String> {
    let out = tokio::process::Command::new(bin_path("kmsctl")?)
        .args(["audit", "verify", "--plane", plane])
        .arg(stack.audit_log(plane))
        .env(
            "KMS_CONTROL_ADDR",
            format!("http://{}", stack.control_addr()),
        )
        .env("KMS_DATA_ADDR", format!("http://{}", stack.data_addr()))
        .env("KMS_PRINCIPAL", OPERATOR)
        .env_remove("KMS_CA")
        .env_remove("KMS_CERT")
        .env_remove("KMS_KEY")
        .env_remove("KMS_PROFILE")
        .env_remove("KMSCTL_CONFIG")
        .output()
        .await?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "audit verify --plane {plane}: {said}");
    ensure!(
        said.contains(&format!("every MAC matches the {plane} plane's key")),
        "audit verify --plane {plane}: {said}"
    );
    Ok(said)
}

/// Fails if either plane's log shows a panic.
pub fn no_panics(stack: &Stack) -> Result<()> {
    for bin in ["kms-control", "kms-data"] {
        let log = stack.log(bin);
        if let Some(at) = log.find("panicked") {
            let from = log[..at].rfind('\n').map_or(0, |n| n + 1);
            let to = log[at..].find('\n').map_or(log.len(), |n| at + n);
            bail!("{bin} panicked: {}", &log[from..to]);
        }
    }
    Ok(())
}

/// Fails unless both planes answer their health checks as serving within 10 s.
pub async fn both_healthy(stack: &Stack) -> Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    for addr in [stack.control_addr(), stack.data_addr()] {
        let channel = stack.channel(addr, None)?;
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            HealthClient::new(channel).check(HealthCheckRequest {
                service: String::new(),
            }),
        )
        .await
        .with_context(|| format!("{addr} did not answer its health check within 10 s"))??;
        ensure!(
            answer.get_ref().status == ServingStatus::Serving as i32,
            "{addr} is not serving: {:?}",
            answer.get_ref()
        );
    }
    Ok(())
}
