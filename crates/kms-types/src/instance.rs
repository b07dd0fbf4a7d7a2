//! KMS instances: containers of keys with a key quota, owned by one account and shareable with
//! others, and the rules about who sees them and who may create keys in them.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::ids::{AccountId, InstanceId};
use crate::spec::InstanceType;
use crate::time::UnixMillis;

/// Largest key quota an instance may have.
pub const MAX_KEY_QUOTA: i32 = 100_000;
/// Largest access-management quota (accounts an instance may be shared with).
pub const MAX_ACCESS_MANAGEMENT_QUOTA: i32 = 1_000;
/// Access-management quota of an instance created without one: room for one other account,
/// so a new instance can be shared.
pub const DEFAULT_ACCESS_MANAGEMENT_QUOTA: i32 = 1;

/// Everything the control plane knows about an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The instance id.
    pub id: InstanceId,
    /// Software or hardware.
    pub instance_type: InstanceType,
    /// The owning account.
    pub owner: AccountId,
    /// Most keys the instance may hold.
    pub key_quota: u32,
    /// Keys it holds now, pending deletion included.
    pub key_count: u32,
    /// Most accounts it may be shared with.
    pub access_management_quota: u32,
    /// Accounts besides the owner that may list it and create keys in it, sorted.
    pub shared_with: Vec<AccountId>,
    /// Creation time.
    pub created: UnixMillis,
}

/// A request to create an instance, as it comes off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInstance {
    /// Software or hardware.
    pub instance_type: InstanceType,
    /// The account that will own it.
    pub owner: AccountId,
    /// 1–100,000.
    pub key_quota: i32,
    /// 0–1,000; `None` means [`DEFAULT_ACCESS_MANAGEMENT_QUOTA`].
    pub access_management_quota: Option<i32>,
}

/// `key_quota` checked against its range.
fn key_quota(n: i32) -> Result<u32, DomainError> {
    if !(1..=MAX_KEY_QUOTA).contains(&n) {
        return Err(DomainError::invalid(
            "KeyQuota",
            format!("key_quota must be 1 to {MAX_KEY_QUOTA}, got {n}"),
        ));
    }
    Ok(n.unsigned_abs())
}

/// `access_management_quota` checked against its range.
fn access_management_quota(n: i32) -> Result<u32, DomainError> {
    if !(0..=MAX_ACCESS_MANAGEMENT_QUOTA).contains(&n) {
        return Err(DomainError::invalid(
            "AccessManagementQuota",
            format!("access_management_quota must be 0 to {MAX_ACCESS_MANAGEMENT_QUOTA}, got {n}"),
        ));
    }
    Ok(n.unsigned_abs())
}

impl NewInstance {
    /// Checks the quotas and builds the record of a new, empty, unshared instance.
    pub fn into_record(
        self,
        id: InstanceId,
        now: UnixMillis,
    ) -> Result<InstanceRecord, DomainError> {
        let key_quota = key_quota(self.key_quota)?;
        let access_management_quota = access_management_quota(
            self.access_management_quota
                .unwrap_or(DEFAULT_ACCESS_MANAGEMENT_QUOTA),
        )?;
        Ok(InstanceRecord {
            id,
            instance_type: self.instance_type,
            owner: self.owner,
            key_quota,
            key_count: 0,
            access_management_quota,
            shared_with: Vec::new(),
            created: now,
        })
    }
}

/// A change of an instance's quotas (`UpdateKmsInstance`); unset fields stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaChange {
    /// New key quota, 1–100,000.
    pub key_quota: Option<i32>,
    /// New access-management quota, 0–1,000.
    pub access_management_quota: Option<i32>,
}

impl InstanceRecord {
    /// Whether `account` may see the instance and create keys in it: the owner and the
    /// accounts it is shared with.
    pub fn is_visible_to(&self, account: &AccountId) -> bool {
        self.owner == *account || self.shared_with.contains(account)
    }

    /// Checks there is room for one more key: `Rejected.LimitExceeded` otherwise.
    pub fn check_room_for_key(&self) -> Result<(), DomainError> {
        if self.key_count >= self.key_quota {
            return Err(DomainError::LimitExceeded(format!(
                "the kms instance {} holds {} keys, its key quota",
                self.id, self.key_count
            )));
        }
        Ok(())
    }

    /// Shares the instance with `account`. Sharing again is a no-op; sharing with the owner is
    /// `InvalidParameter.AccountId`; beyond the access-management quota is
    /// `Rejected.LimitExceeded`. The quota counts every other account using the instance:
    /// those it is shared with and `granted`, those its key policies grant (see
    /// [`InstanceRecord::check_access_quota`]).
    pub fn share_with(
        &mut self,
        account: AccountId,
        granted: &BTreeSet<String>,
    ) -> Result<(), DomainError> {
        if account == self.owner {
            return Err(DomainError::invalid(
                "AccountId",
                format!("account {account} owns the instance; share it with another account"),
            ));
        }
        if self.shared_with.contains(&account) {
            return Ok(());
        }
        let mut shared = self.clone();
        shared.shared_with.push(account);
        shared.shared_with.sort();
        shared.check_access_quota(granted)?;
        *self = shared;
        Ok(())
    }

    /// Checks that the other accounts using the instance fit its access-management quota:
    /// the accounts it is shared with and `granted`, those its key policies grant, each
    /// account once however many keys or statements name it. `Rejected.LimitExceeded`
    /// otherwise.
    pub fn check_access_quota(&self, granted: &BTreeSet<String>) -> Result<(), DomainError> {
        let in_use = self.accounts_in_use(granted);
        let quota = self.access_management_quota as usize;
        if in_use > quota {
            return Err(DomainError::LimitExceeded(format!(
                "the kms instance {} would be used by {in_use} other accounts (shared with it or \
                 granted by its key policies), more than its access management quota of {quota}",
                self.id
            )));
        }
        Ok(())
    }

    /// How many other accounts use the instance: those it is shared with and `granted`.
    pub fn accounts_in_use(&self, granted: &BTreeSet<String>) -> usize {
        let mut in_use: BTreeSet<&str> = granted.iter().map(String::as_str).collect();
        in_use.extend(self.shared_with.iter().map(AccountId::as_str));
        in_use.len()
    }

    /// `UpdateKmsInstance`: sets the quotas `change` names, never below what is in use: the
    /// keys the instance holds, and `accounts_in_use`, the other accounts using it (those it is
    /// shared with and those key policies in it grant). Below is `InvalidParameter.<Quota>`
    /// naming the count in use.
    pub fn update_quotas(
        &mut self,
        change: QuotaChange,
        accounts_in_use: usize,
    ) -> Result<(), DomainError> {
        let keys = change.key_quota.map(key_quota).transpose()?;
        let access = change
            .access_management_quota
            .map(access_management_quota)
            .transpose()?;
        if let Some(n) = keys
            && n < self.key_count
        {
            return Err(DomainError::invalid(
                "KeyQuota",
                format!(
                    "key_quota {n} is below the {} keys the kms instance {} holds (keys pending \
                     deletion included); delete keys first or choose at least {}",
                    self.key_count, self.id, self.key_count
                ),
            ));
        }
        if let Some(n) = access
            && (n as usize) < accounts_in_use
        {
            return Err(DomainError::invalid(
                "AccessManagementQuota",
                format!(
                    "access_management_quota {n} is below the {accounts_in_use} other accounts \
                     using the kms instance {} (accounts it is shared with and accounts its key \
                     policies grant); withdraw shares or grants first or choose at least \
                     {accounts_in_use}",
                    self.id
                ),
            ));
        }
        if let Some(n) = keys {
            self.key_quota = n;
        }
        if let Some(n) = access {
            self.access_management_quota = n;
        }
        Ok(())
    }

    /// Withdraws a share; withdrawing one that does not exist is a no-op. Keys the account
    /// already made in the instance stay; it just cannot make new ones.
    pub fn unshare_with(&mut self, account: &AccountId) {
        self.shared_with.retain(|a| a != account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(s: &str) -> AccountId {
        AccountId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn new(key_quota: i32, amq: i32) -> Result<InstanceRecord, DomainError> {
        NewInstance {
            instance_type: InstanceType::Software,
            owner: acct("1"),
            key_quota,
            access_management_quota: Some(amq),
        }
        .into_record(InstanceId::generate(), UnixMillis(5))
    }

    fn reason(r: Result<impl Sized, DomainError>) -> Option<String> {
        r.err().map(|e| e.reason_code())
    }

    #[test]
    fn quotas_are_checked() {
        let cases = [
            (1, 0, None),
            (MAX_KEY_QUOTA, MAX_ACCESS_MANAGEMENT_QUOTA, None),
            (0, 0, Some("InvalidParameter.KeyQuota")),
            (-1, 0, Some("InvalidParameter.KeyQuota")),
            (MAX_KEY_QUOTA + 1, 0, Some("InvalidParameter.KeyQuota")),
            (1, -1, Some("InvalidParameter.AccessManagementQuota")),
            (
                1,
                MAX_ACCESS_MANAGEMENT_QUOTA + 1,
                Some("InvalidParameter.AccessManagementQuota"),
            ),
        ];
        for (kq, amq, want) in cases {
            assert_eq!(reason(new(kq, amq)).as_deref(), want, "{kq} {amq}");
        }
    }

    #[test]
    fn key_quota_is_enforced() {
        let mut i = new(2, 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(i.check_room_for_key(), Ok(()));
        i.key_count = 2;
        assert_eq!(
            reason(i.check_room_for_key()).as_deref(),
            Some("Rejected.LimitExceeded")
        );
    }

    #[test]
    fn sharing_rules() {
        let none = BTreeSet::new();
        let mut i = new(10, 2).unwrap_or_else(|e| panic!("{e}"));
        assert!(i.is_visible_to(&acct("1")));
        assert!(!i.is_visible_to(&acct("2")));
        assert_eq!(
            reason(i.share_with(acct("1"), &none)).as_deref(),
            Some("InvalidParameter.AccountId")
        );
        assert_eq!(i.share_with(acct("3"), &none), Ok(()));
        assert_eq!(i.share_with(acct("2"), &none), Ok(()));
        assert_eq!(
            i.share_with(acct("2"), &none),
            Ok(()),
            "sharing again is a no-op"
        );
        assert_eq!(i.shared_with, vec![acct("2"), acct("3")]);
        assert!(i.is_visible_to(&acct("2")));
        assert_eq!(
            reason(i.share_with(acct("4"), &none)).as_deref(),
            Some("Rejected.LimitExceeded")
        );
        i.unshare_with(&acct("2"));
        i.unshare_with(&acct("9"));
        assert_eq!(i.shared_with, vec![acct("3")]);
        assert!(!i.is_visible_to(&acct("2")));
    }

    /// Shares and the accounts key policies grant share one quota, each account once.
    #[test]
    fn shares_and_grants_count_together() {
        let granted: BTreeSet<String> = ["7".to_string(), "8".to_string()].into();
        let mut i = new(10, 3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(i.check_access_quota(&granted), Ok(()));
        assert_eq!(
            i.share_with(acct("7"), &granted),
            Ok(()),
            "7 is counted already"
        );
        assert_eq!(i.share_with(acct("9"), &granted), Ok(()));
        assert_eq!(i.accounts_in_use(&granted), 3);
        assert_eq!(
            reason(i.share_with(acct("10"), &granted)).as_deref(),
            Some("Rejected.LimitExceeded")
        );
        assert_eq!(
            i.shared_with,
            vec![acct("7"), acct("9")],
            "a refused share changes nothing"
        );
        let more: BTreeSet<String> = ["7".to_string(), "8".to_string(), "11".to_string()].into();
        assert_eq!(
            reason(i.check_access_quota(&more)).as_deref(),
            Some("Rejected.LimitExceeded")
        );
    }

    #[test]
    fn an_unset_access_management_quota_leaves_room_to_share_once() {
        let mut i = NewInstance {
            instance_type: InstanceType::Software,
            owner: acct("1"),
            key_quota: 10,
            access_management_quota: None,
        }
        .into_record(InstanceId::generate(), UnixMillis(5))
        .unwrap_or_else(|e| panic!("{e}"));
        let none = BTreeSet::new();
        assert_eq!(i.access_management_quota, 1);
        assert_eq!(i.share_with(acct("2"), &none), Ok(()));
        assert_eq!(
            reason(i.share_with(acct("3"), &none)).as_deref(),
            Some("Rejected.LimitExceeded")
        );
    }

    #[test]
    fn quotas_change_within_range_and_never_below_use() {
        let mut i = new(10, 5).unwrap_or_else(|e| panic!("{e}"));
        i.key_count = 4;
        let change = |kq: Option<i32>, amq: Option<i32>| QuotaChange {
            key_quota: kq,
            access_management_quota: amq,
        };
        for (c, in_use, want) in [
            (change(Some(0), None), 0, "InvalidParameter.KeyQuota"),
            (
                change(Some(MAX_KEY_QUOTA + 1), None),
                0,
                "InvalidParameter.KeyQuota",
            ),
            (change(Some(3), None), 0, "InvalidParameter.KeyQuota"),
            (
                change(None, Some(-1)),
                0,
                "InvalidParameter.AccessManagementQuota",
            ),
            (
                change(None, Some(1)),
                2,
                "InvalidParameter.AccessManagementQuota",
            ),
            (change(Some(3), Some(9)), 0, "InvalidParameter.KeyQuota"),
        ] {
            let before = i.clone();
            assert_eq!(
                reason(i.update_quotas(c, in_use)).as_deref(),
                Some(want),
                "{c:?}"
            );
            assert_eq!(i, before, "a refused change changes nothing");
        }
        let below = i.update_quotas(change(Some(3), None), 0).err();
        assert!(
            below.is_some_and(|e| e.to_string().contains("below the 4 keys")),
            "names the count in use"
        );
        let below = i.update_quotas(change(None, Some(1)), 2).err();
        assert!(
            below.is_some_and(|e| e.to_string().contains("below the 2 other accounts")),
            "names the count in use"
        );
        assert_eq!(i.update_quotas(change(Some(4), Some(2)), 2), Ok(()));
        assert_eq!((i.key_quota, i.access_management_quota), (4, 2));
        assert_eq!(i.update_quotas(change(None, Some(0)), 0), Ok(()));
        assert_eq!((i.key_quota, i.access_management_quota), (4, 0));
        assert_eq!(i.update_quotas(QuotaChange::default(), 0), Ok(()));
        assert_eq!((i.key_quota, i.access_management_quota), (4, 0));
    }
}
