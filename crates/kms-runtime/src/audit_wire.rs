//! Wire forms of the audit-chain types (`kms.v1.AuditCheckpoint`, `AuditMacCheck`,
//! `VerifyAuditMacsResponse`, log identities) for the services that pass checkpoints and MAC checks between
//! the planes and to `kmsctl`. Conversions from the wire fail closed.

use kms_proto::kms::v1::{AuditCheckpoint, AuditMacCheck, VerifyAuditMacsResponse};
use kms_types::DomainError;

use crate::audit::{Checkpoint, MAC_LEN, MacCheck, Plane};

/// Most MAC checks in one `VerifyAuditMacs` call.
pub const MAX_MAC_CHECKS: usize = 1000;

/// The plane a wire field names.
pub fn plane(name: &str) -> Result<Plane, DomainError> {
    Plane::parse(name).map_err(|e| DomainError::invalid("Plane", e))
}

/// A log identity from a wire field: empty (the plane's checkpoint from before logs had one)
/// or 64 lowercase hex digits, so it is safe in a store key.
pub fn log_id(text: &str) -> Result<String, DomainError> {
    if text.is_empty() {
        Ok(String::new())
    } else {
        hex64("Log", text)
    }
}

fn hex64(field: &'static str, text: &str) -> Result<String, DomainError> {
    if text.len() == 2 * MAC_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(text.to_string())
    } else {
        Err(DomainError::invalid(
            field,
            format!("{} must be 64 lowercase hex digits", field.to_lowercase()),
        ))
    }
}

/// A checkpoint on the wire.
pub fn checkpoint_to_wire(cp: &Checkpoint) -> AuditCheckpoint {
    AuditCheckpoint {
        plane: cp.plane.as_str().to_string(),
        seq: cp.seq,
        head: cp.head.clone(),
        time: cp.time.clone(),
        mac: cp.mac.clone(),
        log: cp.log.clone(),
    }
}

/// A checkpoint from the wire; a missing one, an unknown plane or a malformed head, MAC or
/// log identity is refused.
pub fn checkpoint_from_wire(cp: Option<&AuditCheckpoint>) -> Result<Checkpoint, DomainError> {
    let cp = cp.ok_or_else(|| DomainError::invalid("Checkpoint", "checkpoint is required"))?;
    Ok(Checkpoint {
        plane: plane(&cp.plane)?,
        log: log_id(&cp.log)?,
        seq: cp.seq,
        head: hex64("Head", &cp.head)?,
        time: cp.time.clone(),
        mac: hex64("Mac", &cp.mac)?,
    })
}

/// MAC checks on the wire.
pub fn checks_to_wire(checks: &[MacCheck]) -> Vec<AuditMacCheck> {
    checks
        .iter()
        .map(|c| AuditMacCheck {
            digest: c.digest.to_vec(),
            mac: c.mac.to_vec(),
        })
        .collect()
}

/// MAC checks from the wire: at most [`MAX_MAC_CHECKS`], each digest and MAC 32 bytes.
pub fn checks_from_wire(checks: &[AuditMacCheck]) -> Result<Vec<MacCheck>, DomainError> {
    if checks.len() > MAX_MAC_CHECKS {
        return Err(DomainError::invalid(
            "Checks",
            format!("at most {MAX_MAC_CHECKS} checks per call"),
        ));
    }
    checks
        .iter()
        .map(|c| {
            let digest = c.digest.as_slice().try_into();
            let mac = c.mac.as_slice().try_into();
            match (digest, mac) {
                (Ok(digest), Ok(mac)) => Ok(MacCheck { digest, mac }),
                _ => Err(DomainError::invalid(
                    "Checks",
                    format!("each digest and mac has {MAC_LEN} bytes"),
                )),
            }
        })
        .collect()
}

/// The answer to a `VerifyAuditMacs` call.
pub fn answer(first_mismatch: Option<usize>) -> VerifyAuditMacsResponse {
    match first_mismatch {
        None => VerifyAuditMacsResponse {
            all_match: true,
            first_mismatch: 0,
        },
        Some(i) => VerifyAuditMacsResponse {
            all_match: false,
            first_mismatch: u32::try_from(i).unwrap_or(u32::MAX),
        },
    }
}

/// The index of the first mismatch an answer names, if any.
pub fn first_mismatch(answer: &VerifyAuditMacsResponse) -> Option<usize> {
    (!answer.all_match).then(|| usize::try_from(answer.first_mismatch).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::audit::AuditKey;

    #[test]
    fn round_trips_and_refusals() {
        let key = AuditKey::from_bytes(&[1u8; MAC_LEN]).unwrap();
        for log in [String::new(), "cd".repeat(32)] {
            let cp = Checkpoint::sign(
                &key,
                Plane::Data,
                &log,
                7,
                &"ab".repeat(32),
                std::time::UNIX_EPOCH,
            );
            let wire = checkpoint_to_wire(&cp);
            assert_eq!(wire.log, log);
            assert_eq!(checkpoint_from_wire(Some(&wire)), Ok(cp));
        }
        let cp = Checkpoint::sign(
            &key,
            Plane::Data,
            &"cd".repeat(32),
            7,
            &"ab".repeat(32),
            std::time::UNIX_EPOCH,
        );
        let wire = checkpoint_to_wire(&cp);
        assert!(checkpoint_from_wire(None).is_err());
        for bad in [
            AuditCheckpoint {
                plane: "Data".into(),
                ..wire.clone()
            },
            AuditCheckpoint {
                head: "AB".repeat(32),
                ..wire.clone()
            },
            AuditCheckpoint {
                mac: "00".into(),
                ..wire.clone()
            },
            AuditCheckpoint {
                log: "../control".into(),
                ..wire.clone()
            },
            AuditCheckpoint {
                log: "CD".repeat(32),
                ..wire.clone()
            },
        ] {
            assert!(checkpoint_from_wire(Some(&bad)).is_err(), "{bad:?}");
        }

        let check = MacCheck {
            digest: [2u8; MAC_LEN],
            mac: [3u8; MAC_LEN],
        };
        assert_eq!(checks_from_wire(&checks_to_wire(&[check])), Ok(vec![check]));
        let short = AuditMacCheck {
            digest: vec![2u8; 31],
            mac: vec![3u8; MAC_LEN],
        };
        assert!(checks_from_wire(&[short]).is_err());
        assert!(checks_from_wire(&checks_to_wire(&vec![check; MAX_MAC_CHECKS + 1])).is_err());
        assert_eq!(log_id(""), Ok(String::new()));
        assert_eq!(log_id(&"0f".repeat(32)), Ok("0f".repeat(32)));
        for bad in ["0f", "/", &"0g".repeat(32), &"0f".repeat(33)] {
            assert!(log_id(bad).is_err(), "{bad}");
        }
        for first in [None, Some(0), Some(41)] {
            assert_eq!(first_mismatch(&answer(first)), first);
        }
    }
}
