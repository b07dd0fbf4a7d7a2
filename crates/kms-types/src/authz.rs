//! The authorization table: for every RPC of every service, who may call it at all, which keys
//! it touches, and the policy action checked on each. The control plane's registry and the data
//! plane's crypto engine take their actions from here and nowhere else, so an RPC cannot be
//! served without a row, and the rows can be reviewed in one place (`docs/SECURITY.md` prints
//! them with the threat model).
//!
//! The decision on one key is [`crate::policy::decide`]; this table only says which keys and
//! which action.

/// Who may call an RPC at all, before any key policy is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callers {
    /// Any authenticated principal; the RPC acts on the caller's own account only (its keys,
    /// its aliases, its default key) or on nothing stored (randomness).
    OwnAccount,
    /// Whoever each touched key's policy allows: the key's account, the account owning its
    /// shared instance, and cross-account grantees for use (never management).
    KeyPolicy,
    /// Like [`Callers::KeyPolicy`], and the key must also belong to the caller's account:
    /// aliases are names in one account for that account's keys.
    KeyPolicyOwnAccount,
    /// Configured operators; accounts see only instances they own or that are shared with
    /// them.
    Operators,
    /// Configured operators only.
    OperatorsOnly,
    /// The other plane's principal, by certificate outside development mode.
    PeerPlane,
    /// The configured HTTP gateway principals only.
    Gateway,
}

/// A key an RPC touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// The key the request names (`key_id`: an id, an alias or an ARN).
    Key,
    /// Each of the keys a batch request names (tags: up to 50), all or nothing.
    EveryKey,
    /// The key that sealed the ciphertext blob in the request.
    BlobKey,
    /// The key an alias points at before the call.
    AliasOldKey,
    /// The key an alias points at after the call.
    AliasNewKey,
    /// `ReEncrypt`'s destination key.
    DestinationKey,
}

/// One policy check: `action` on the key `touch` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    /// Which key.
    pub touch: Touch,
    /// The policy action, `kms:<Name>`.
    pub action: &'static str,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Who may call at all.
    pub callers: Callers,
    /// The checks on touched keys, all of which must pass.
    pub checks: &'static [Check],
}

macro_rules! rpcs {
    ($( $service:literal => { $( $rpc:ident : $callers:ident [ $( $touch:ident $action:literal ),* ] ),* $(,)? } )*) => {
        /// Every RPC of every service, named after its method (method names are unique across
        /// services).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Rpc { $( $( $rpc, )* )* }

        impl Rpc {
            /// Every RPC, in table order.
            pub const ALL: &'static [Rpc] = &[ $( $( Rpc::$rpc, )* )* ];

            /// The RPC's row.
            pub fn rule(self) -> Rule {
                match self {
                    $( $( Rpc::$rpc => Rule {
                        callers: Callers::$callers,
                        checks: &[ $( Check { touch: Touch::$touch, action: $action } ),* ],
                    }, )* )*
                }
            }

            /// The gRPC method path, `/package.Service/Method`.
            pub fn path(self) -> &'static str {
                match self {
                    $( $( Rpc::$rpc => concat!("/", $service, "/", stringify!($rpc)), )* )*
                }
            }
        }
    };
}

rpcs! {
    "kms.v1.KeyManagementService" => {
        CreateKey: OwnAccount [],
        DescribeKey: KeyPolicy [Key "kms:DescribeKey"],
        ListKeys: OwnAccount [],
        EnableKey: KeyPolicy [Key "kms:EnableKey"],
        DisableKey: KeyPolicy [Key "kms:DisableKey"],
        UpdateKeyDescription: KeyPolicy [Key "kms:UpdateKeyDescription"],
        SetDeletionProtection: KeyPolicy [Key "kms:SetDeletionProtection"],
        ScheduleKeyDeletion: KeyPolicy [Key "kms:ScheduleKeyDeletion"],
        CancelKeyDeletion: KeyPolicy [Key "kms:CancelKeyDeletion"],
        UpdateRotationPolicy: KeyPolicy [Key "kms:UpdateRotationPolicy"],
        CreateKeyVersion: KeyPolicy [Key "kms:CreateKeyVersion"],
        DescribeKeyVersion: KeyPolicy [Key "kms:DescribeKeyVersion"],
        ListKeyVersions: KeyPolicy [Key "kms:ListKeyVersions"],
        CreateAlias: KeyPolicyOwnAccount [AliasNewKey "kms:CreateAlias"],
        UpdateAlias: KeyPolicyOwnAccount [AliasOldKey "kms:UpdateAlias", AliasNewKey "kms:UpdateAlias"],
        DeleteAlias: KeyPolicyOwnAccount [AliasOldKey "kms:DeleteAlias"],
        ListAliases: OwnAccount [],
        ListAliasesByKeyId: KeyPolicy [Key "kms:ListAliasesByKeyId"],
        TagResources: KeyPolicy [EveryKey "kms:TagResource"],
        UntagResources: KeyPolicy [EveryKey "kms:UntagResource"],
        ListResourceTags: KeyPolicy [Key "kms:ListResourceTags"],
        SetKeyPolicy: KeyPolicy [Key "kms:SetKeyPolicy"],
        GetKeyPolicy: KeyPolicy [Key "kms:GetKeyPolicy"],
        GetParametersForImport: KeyPolicy [Key "kms:GetParametersForImport"],
        ImportKeyMaterial: KeyPolicy [Key "kms:ImportKeyMaterial"],
        DeleteKeyMaterial: KeyPolicy [Key "kms:DeleteKeyMaterial"],
        CheckKeyAssociation: KeyPolicy [Key "kms:DescribeKey"],
    }
    "kms.v1.KmsInstanceService" => {
        CreateKmsInstance: OperatorsOnly [],
        GetKmsInstance: Operators [],
        ListKmsInstances: Operators [],
        ShareKmsInstance: OperatorsOnly [],
        UnshareKmsInstance: OperatorsOnly [],
        UpdateKmsInstance: OperatorsOnly [],
    }
    "kms.v1.CryptoService" => {
        Encrypt: KeyPolicy [Key "kms:Encrypt"],
        Decrypt: KeyPolicy [BlobKey "kms:Decrypt"],
        ReEncrypt: KeyPolicy [BlobKey "kms:ReEncrypt", DestinationKey "kms:ReEncrypt"],
        GenerateDataKey: KeyPolicy [Key "kms:GenerateDataKey"],
        GenerateDataKeyWithoutPlaintext: KeyPolicy [Key "kms:GenerateDataKeyWithoutPlaintext"],
        GenerateAndExportDataKey: KeyPolicy [Key "kms:GenerateAndExportDataKey"],
        ExportDataKey: KeyPolicy [BlobKey "kms:ExportDataKey"],
        AsymmetricEncrypt: KeyPolicy [Key "kms:AsymmetricEncrypt"],
        AsymmetricDecrypt: KeyPolicy [Key "kms:AsymmetricDecrypt"],
        AsymmetricSign: KeyPolicy [Key "kms:AsymmetricSign"],
        AsymmetricVerify: KeyPolicy [Key "kms:AsymmetricVerify"],
        GetPublicKey: KeyPolicy [Key "kms:GetPublicKey"],
        GenerateRandom: OwnAccount [],
        GetRandomPassword: OwnAccount [],
    }
    "kms.v1.AuditService" => {
        GetAuditCheckpoint: OperatorsOnly [],
        VerifyAuditMacs: OperatorsOnly [],
    }
    "kms.v1.AdminService" => {
        Backup: OperatorsOnly [],
    }
    "kms.v1.AccessKeyService" => {
        CreateAccessKey: OperatorsOnly [],
        ListAccessKeys: OperatorsOnly [],
        DisableAccessKey: OperatorsOnly [],
        DeleteAccessKey: OperatorsOnly [],
    }
    "kms.v1.AccessKeyResolver" => {
        ResolveAccessKey: Gateway [],
    }
    "kms.internal.v1.KeyDirectory" => {
        GetKey: PeerPlane [],
        WatchKeys: PeerPlane [],
        ReportUsage: PeerPlane [],
        ReportAuditCheckpoint: PeerPlane [],
        GetAccessKey: PeerPlane [],
    }
    "kms.internal.v1.KeyMaterial" => {
        Generate: PeerPlane [],
        CreateImportKey: PeerPlane [],
        ImportMaterial: PeerPlane [],
        GetAuditKey: PeerPlane [],
        VerifyPlaneAuditMacs: PeerPlane [],
        GenerateAccessKeySecret: PeerPlane [],
    }
}

impl Rpc {
    /// The action this RPC checks on the key `touch` names. Asking for a key the row does not
    /// touch is a programming error, answered with an action no policy can grant.
    pub fn action(self, touch: Touch) -> &'static str {
        self.rule()
            .checks
            .iter()
            .find(|c| c.touch == touch)
            .map_or(NO_ACTION, |c| c.action)
    }

    /// The RPC whose method path is `path`.
    pub fn from_path(path: &str) -> Option<Rpc> {
        Rpc::ALL.iter().copied().find(|r| r.path() == path)
    }

    /// The method name, the last segment of the path.
    pub fn name(self) -> &'static str {
        let path = self.path();
        path.rsplit('/').next().unwrap_or(path)
    }
}

impl Callers {
    /// How `docs/SECURITY.md` names it.
    pub fn describe(self) -> &'static str {
        match self {
            Callers::OwnAccount => "any principal, in its own account",
            Callers::KeyPolicy => "the key policy",
            Callers::KeyPolicyOwnAccount => "the key policy, keys of the caller's account only",
            Callers::Operators => "operators; accounts see their own and shared instances",
            Callers::OperatorsOnly => "operators only",
            Callers::PeerPlane => "the other plane only (certificate outside dev mode)",
            Callers::Gateway => "the configured gateway principals only",
        }
    }
}

impl Touch {
    /// How `docs/SECURITY.md` names it.
    pub fn describe(self) -> &'static str {
        match self {
            Touch::Key => "key",
            Touch::EveryKey => "every key",
            Touch::BlobKey => "key of the blob",
            Touch::AliasOldKey => "alias's current key",
            Touch::AliasNewKey => "alias's new key",
            Touch::DestinationKey => "destination key",
        }
    }
}

/// The table as Markdown rows (`| RPC | who may call | checks |`), as `docs/SECURITY.md`
/// prints it.
pub fn markdown_rows() -> Vec<String> {
    Rpc::ALL
        .iter()
        .map(|rpc| {
            let rule = rpc.rule();
            let checks = rule
                .checks
                .iter()
                .map(|c| format!("{}: `{}`", c.touch.describe(), c.action))
                .collect::<Vec<_>>()
                .join("; ");
            let path = rpc.path().trim_start_matches('/');
            let checks = if checks.is_empty() {
                "—".to_string()
            } else {
                checks
            };
            format!("| `{path}` | {} | {checks} |", rule.callers.describe())
        })
        .collect()
}

/// An action that no policy statement can match (statements' actions are `kms:` names).
const NO_ACTION: &str = "!unlisted";

/// Every action some RPC checks, sorted and without repeats: what a policy statement can name.
pub fn known_actions() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = Rpc::ALL
        .iter()
        .flat_map(|r| r.rule().checks.iter().map(|c| c.action))
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for rpc in Rpc::ALL {
            assert!(seen.insert(rpc.path()), "{} twice", rpc.path());
            assert_eq!(Rpc::from_path(rpc.path()), Some(*rpc));
            assert!(rpc.path().ends_with(&format!("/{}", rpc.name())));
        }
        assert_eq!(Rpc::from_path("/kms.v1.CryptoService/Nope"), None);
    }

    #[test]
    fn rows_are_consistent() {
        for rpc in Rpc::ALL {
            let rule = rpc.rule();
            let key_scoped = matches!(
                rule.callers,
                Callers::KeyPolicy | Callers::KeyPolicyOwnAccount
            );
            assert_eq!(
                key_scoped,
                !rule.checks.is_empty(),
                "{rpc:?}: key-policy rows check keys, the others none"
            );
            for check in rule.checks {
                assert!(check.action.starts_with("kms:"), "{rpc:?}");
                assert_eq!(rpc.action(check.touch), check.action);
            }
        }
        assert_eq!(Rpc::Encrypt.action(Touch::DestinationKey), NO_ACTION);
        assert_eq!(
            Rpc::UpdateAlias.action(Touch::AliasOldKey),
            "kms:UpdateAlias"
        );
    }

    /// `docs/SECURITY.md` prints the table as it is.
    #[test]
    fn the_security_notes_print_this_table() {
        let doc = include_str!("../../../docs/SECURITY.md");
        let missing: Vec<String> = markdown_rows()
            .into_iter()
            .filter(|row| !doc.lines().any(|l| l == row))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/SECURITY.md lacks these rows of the authorization table:\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn known_actions_cover_the_role_lists() {
        let known = known_actions();
        for action in crate::policy::USER_ACTIONS
            .iter()
            .chain(crate::policy::CROSS_ACCOUNT_ACTIONS)
        {
            assert!(known.contains(action), "{action}");
        }
    }
}
