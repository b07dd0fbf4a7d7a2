//! Bring your own key, end to end with independent tooling: OpenSSL makes the material and
//! wraps it under the import public key from GetParametersForImport (RSAES-OAEP for AES keys;
//! OAEP of an ephemeral AES-256 key plus `-id-aes256-wrap-pad` for private keys), the service
//! imports it, and the result is checked outside the service: ring opens ciphertexts the
//! service made with the imported AES key (and the service opens ring's), OpenSSL verifies
//! signatures against the original key's public half. On software and HSM keys. Then every
//! refusal with its exact status, material expiry driven by the test clock, deletion of
//! material, and a scan proving no imported plaintext reached sled or the logs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kms_e2e::{ACCOUNT, ALICE, OPERATOR, Stack, contains, eventually, files_under, reason};
use kms_proto::kms::v1::*;
use tonic::Code;

const CONTEXT: (&str, &str) = ("purpose", "import-test");

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Scratch files for OpenSSL.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn at(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.at(name)).unwrap()
    }

    fn random(&self, name: &str, len: usize) -> Vec<u8> {
        openssl(&["rand", "-out", path(&self.at(name)), &len.to_string()]);
        self.read(name)
    }

    /// `plaintext` RSAES-OAEP-encrypted by OpenSSL to `public_der` with `md` (sha256 or
    /// sha1, MGF1 the same), or with PKCS#1 v1.5 padding when `md` is "pkcs1".
    fn rsa_encrypt(&self, public_der: &[u8], md: &str, plaintext: &[u8]) -> Vec<u8> {
        let public = self.write("import-public.der", public_der);
        let input = self.write("rsa-in.bin", plaintext);
        let out = self.at("rsa-out.bin");
        let mut args = vec![
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-keyform",
            "DER",
            "-inkey",
            path(&public),
            "-in",
            path(&input),
            "-out",
            path(&out),
        ];
        if md == "pkcs1" {
            args.extend(["-pkeyopt", "rsa_padding_mode:pkcs1"]);
        } else {
            let oaep_md = format!("rsa_oaep_md:{md}");
            let mgf_md = format!("rsa_mgf1_md:{md}");
            args.extend(["-pkeyopt", "rsa_padding_mode:oaep"]);
            args.extend(["-pkeyopt", &oaep_md, "-pkeyopt", &mgf_md]);
            openssl(&args);
            std::fs::remove_file(&input).unwrap();
            return std::fs::read(&out).unwrap();
        }
        openssl(&args);
        std::fs::remove_file(&input).unwrap();
        std::fs::read(&out).unwrap()
    }

    /// A private key made by OpenSSL (`genpkey` arguments), as PKCS#8 DER, with its public
    /// key's PEM file. (`genpkey -outform DER` writes the traditional form, PKCS#1 or SEC1,
    /// so `pkcs8 -topk8` converts it.)
    fn private_key(&self, name: &str, genpkey: &[&str]) -> (Vec<u8>, PathBuf) {
        let traditional = self.at(&format!("{name}.der"));
        let der = self.at(&format!("{name}.p8.der"));
        let mut args = vec!["genpkey"];
        args.extend(genpkey);
        args.extend(["-outform", "DER", "-out", path(&traditional)]);
        openssl(&args);
        openssl(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-inform",
            "DER",
            "-in",
            path(&traditional),
            "-outform",
            "DER",
            "-out",
            path(&der),
        ]);
        std::fs::remove_file(&traditional).unwrap();
        let public = self.at(&format!("{name}.pub.pem"));
        openssl(&[
            "pkey",
            "-inform",
            "DER",
            "-in",
            path(&der),
            "-pubout",
            "-out",
            path(&public),
        ]);
        (std::fs::read(&der).unwrap(), public)
    }

    /// `pkcs8` in the RSA_AES_KEY_WRAP_SHA_256 layout for `public_der`, by OpenSSL: a fresh
    /// AES-256 key OAEP-SHA-256-encrypted, then the key wrapped with it (RFC 5649). Returns
    /// the material and the ephemeral key.
    fn rsa_aes_key_wrap(&self, public_der: &[u8], pkcs8: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let aes = self.random("ephemeral.bin", 32);
        let mut material = self.rsa_encrypt(public_der, "sha256", &aes);
        let input = self.write("pkcs8-in.der", pkcs8);
        let out = self.at("kwp.bin");
        openssl(&[
            "enc",
            "-id-aes256-wrap-pad",
            "-K",
            &hex::encode(&aes),
            "-iv",
            "A65959A6",
            "-in",
            path(&input),
            "-out",
            path(&out),
        ]);
        std::fs::remove_file(&input).unwrap();
        std::fs::remove_file(self.at("ephemeral.bin")).unwrap();
        material.extend(std::fs::read(&out).unwrap());
        (material, aes)
    }
}

async fn instance(stack: &Stack, kind: InstanceType) -> String {
    stack
        .instances(Some(OPERATOR))
        .unwrap()
        .create_kms_instance(CreateKmsInstanceRequest {
            instance_type: kind as i32,
            owner_account_id: ACCOUNT.into(),
            key_quota: 100,
            access_management_quota: Some(5),
        })
        .await
        .unwrap()
        .into_inner()
        .kms_instance
        .unwrap()
        .kms_instance_id
}

async fn external_key(
    stack: &Stack,
    instance: &str,
    spec: KeySpec,
    usage: KeyUsage,
) -> KeyMetadata {
    let meta = stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest {
            kms_instance_id: instance.into(),
            key_spec: spec as i32,
            key_usage: usage as i32,
            origin: KeyOrigin::External as i32,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create external {spec:?}: {e}"))
        .into_inner()
        .key_metadata
        .unwrap();
    assert_eq!(meta.key_state, KeyState::PendingImport as i32);
    assert_eq!(meta.origin, KeyOrigin::External as i32);
    meta
}

async fn describe(stack: &Stack, key_id: &str) -> KeyMetadata {
    stack
        .keys(Some(ALICE))
        .unwrap()
        .describe_key(DescribeKeyRequest {
            key_id: key_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
}

async fn params(
    stack: &Stack,
    key_id: &str,
    algorithm: Algorithm,
) -> Result<GetParametersForImportResponse, tonic::Status> {
    stack
        .keys(Some(ALICE))
        .unwrap()
        .get_parameters_for_import(GetParametersForImportRequest {
            key_id: key_id.into(),
            wrapping_algorithm: algorithm as i32,
            wrapping_key_spec: KeySpec::Rsa2048 as i32,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn import(
    stack: &Stack,
    key_id: &str,
    token: &str,
    material: Vec<u8>,
    expire: Option<prost_types::Timestamp>,
) -> Result<(), tonic::Status> {
    stack
        .keys(Some(ALICE))
        .unwrap()
        .import_key_material(ImportKeyMaterialRequest {
            key_id: key_id.into(),
            import_token: token.into(),
            encrypted_key_material: material,
            key_material_expire_time: expire,
        })
        .await
        .map(|_| ())
}

fn context() -> std::collections::HashMap<String, String> {
    [(CONTEXT.0.to_string(), CONTEXT.1.to_string())].into()
}

/// The canonical encryption context of DESIGN.md: per entry, the key's and the value's length
/// (4 bytes, big-endian), each followed by its bytes.
fn canonical_context() -> Vec<u8> {
    let mut out = Vec::new();
    for part in [CONTEXT.0, CONTEXT.1] {
        out.extend((part.len() as u32).to_be_bytes());
        out.extend(part.as_bytes());
    }
    out
}

fn ring_key(aes: &[u8]) -> ring::aead::LessSafeKey {
    let alg = match aes.len() {
        16 => &ring::aead::AES_128_GCM,
        32 => &ring::aead::AES_256_GCM,
        n => panic!("ring has no AES-GCM with {n}-byte keys"),
    };
    ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(alg, aes).unwrap())
}

/// Opens a ciphertext blob (`KMS1 | version | IV | ciphertext | tag`, AAD = header ‖
/// canonical context) with `aes`, outside the service.
fn open_outside(aes: &[u8], blob: &[u8]) -> Vec<u8> {
    assert_eq!(&blob[..4], b"KMS1");
    let (header, sealed) = blob.split_at(32);
    let nonce = ring::aead::Nonce::try_assume_unique_for_key(&header[20..32]).unwrap();
    let aad = [header, &canonical_context()].concat();
    let mut buf = sealed.to_vec();
    let plain = ring_key(aes)
        .open_in_place(nonce, ring::aead::Aad::from(aad), &mut buf)
        .expect("the service's ciphertext opens with the imported key");
    plain.to_vec()
}

/// Seals `plaintext` outside the service as a blob of `version`, with `aes`.
fn seal_outside(aes: &[u8], version: &str, plaintext: &[u8]) -> Vec<u8> {
    let mut header = b"KMS1".to_vec();
    header.extend(hex::decode(version.replace('-', "")).unwrap());
    let iv = [7u8; 12];
    header.extend(iv);
    let aad = [header.as_slice(), &canonical_context()].concat();
    let mut buf = plaintext.to_vec();
    ring_key(aes)
        .seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(iv),
            ring::aead::Aad::from(aad),
            &mut buf,
        )
        .unwrap();
    [header, buf].concat()
}

async fn encrypt(
    stack: &Stack,
    key_id: &str,
    plaintext: &[u8],
) -> Result<EncryptResponse, tonic::Status> {
    stack
        .crypto(Some(ALICE))
        .unwrap()
        .encrypt(EncryptRequest {
            key_id: key_id.into(),
            plaintext: plaintext.to_vec(),
            encryption_context: context(),
            dry_run: false,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn decrypt(stack: &Stack, blob: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    stack
        .crypto(Some(ALICE))
        .unwrap()
        .decrypt(DecryptRequest {
            ciphertext_blob: blob.to_vec(),
            encryption_context: context(),
            dry_run: false,
        })
        .await
        .map(|r| r.into_inner().plaintext)
}

/// `blob` opened, once the data plane has heard that its key's material is back: a data
/// plane that refused the key keeps it cached as it was until its watch stream brings the
/// change, as for every change (API.md, CryptoService).
async fn decrypt_once_imported(stack: &Stack, blob: &[u8]) -> Vec<u8> {
    eventually(
        Duration::from_secs(5),
        "material imported again",
        || async { decrypt(stack, blob).await.ok() },
    )
    .await
    .unwrap()
}

/// Now by the control plane's clock, which the test can move.
fn control_now(stack: &Stack) -> SystemTime {
    let offset = stack.clock_offset_ms().unwrap();
    let now = SystemTime::now();
    if offset >= 0 {
        now + Duration::from_millis(offset as u64)
    } else {
        now - Duration::from_millis(offset.unsigned_abs())
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn expect_status(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, why: &str) {
    let err = r.expect_err(why);
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (code, why),
        "{}",
        err.message()
    );
}

/// Every secret that must never be at rest: sled files and both planes' logs.
fn assert_nowhere_at_rest(stack: &Stack, secrets: &[(String, Vec<u8>)]) {
    let mut scanned = 0;
    for file in files_under(&stack.sled_dir())
        .unwrap()
        .into_iter()
        .chain(files_under(&stack.dir().join("logs")).unwrap())
    {
        let bytes = std::fs::read(&file).unwrap();
        scanned += bytes.len();
        for (what, secret) in secrets {
            for needle in [secret.clone(), hex::encode(secret).into_bytes()] {
                assert!(
                    !contains(&bytes, &needle),
                    "{what} found in {}",
                    file.display()
                );
            }
        }
    }
    assert!(scanned > 0, "nothing was scanned");
}

/// The private number in `openssl pkey -text` output: `priv:` (EC) or `privateExponent:`
/// (RSA), hex octets over indented lines, without a leading zero octet.
fn private_number(text: &str) -> Vec<u8> {
    let mut lines = text.lines();
    lines
        .by_ref()
        .find(|l| l.starts_with("priv:") || l.starts_with("privateExponent:"))
        .expect("openssl prints the private number");
    let hex_digits: String = lines
        .take_while(|l| l.starts_with(' '))
        .flat_map(|l| l.trim().split(':'))
        .filter(|octet| !octet.is_empty())
        .collect();
    let mut bytes = hex::decode(hex_digits).unwrap();
    if bytes.first() == Some(&0) {
        bytes.remove(0);
    }
    bytes
}

#[tokio::test]
async fn aes_material_imported_on_software_and_hsm_keys() {
    let stack = Stack::start().await.unwrap();
    let files = Files::new();
    let software = instance(&stack, InstanceType::Software).await;
    let hardware = instance(&stack, InstanceType::Hardware).await;
    let mut secrets = Vec::new();
    for (inst, spec, len, wrapping, md) in [
        (
            &software,
            KeySpec::AliyunAes256,
            32,
            Algorithm::RsaesOaepSha256,
            "sha256",
        ),
        (
            &software,
            KeySpec::AliyunAes256,
            32,
            Algorithm::RsaesOaepSha1,
            "sha1",
        ),
        (
            &hardware,
            KeySpec::AliyunAes256,
            32,
            Algorithm::RsaesOaepSha1,
            "sha1",
        ),
        (
            &hardware,
            KeySpec::AliyunAes128,
            16,
            Algorithm::RsaesOaepSha256,
            "sha256",
        ),
        (
            &hardware,
            KeySpec::AliyunAes192,
            24,
            Algorithm::RsaesOaepSha256,
            "sha256",
        ),
    ] {
        let name = format!("{spec:?} {wrapping:?} in {inst}");
        let key = external_key(&stack, inst, spec, KeyUsage::EncryptDecrypt).await;
        expect_status(
            encrypt(&stack, &key.key_id, b"too early").await,
            Code::FailedPrecondition,
            "Rejected.PendingImport",
        );

        let before = SystemTime::now();
        let p = params(&stack, &key.key_id, wrapping).await.unwrap();
        assert_eq!(p.key_id, key.key_id);
        assert!(p.import_token.starts_with("itk-"), "{}", p.import_token);
        let expires = p.token_expire_time.unwrap().seconds;
        let day = before.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 + 86_400;
        assert!(
            (day - 5..=day + 60).contains(&expires),
            "{name}: token expires at {expires}"
        );
        // The import key is an RSA_2048 public key OpenSSL reads.
        let public = files.write("check.der", &p.public_key);
        let text = String::from_utf8(openssl(&[
            "pkey",
            "-pubin",
            "-inform",
            "DER",
            "-in",
            path(&public),
            "-noout",
            "-text",
        ]))
        .unwrap();
        assert!(text.contains("2048 bit"), "{text}");

        let aes = files.random("aes.bin", len);
        std::fs::remove_file(files.at("aes.bin")).unwrap();
        let wrapped = files.rsa_encrypt(&p.public_key, md, &aes);
        import(&stack, &key.key_id, &p.import_token, wrapped, None)
            .await
            .unwrap_or_else(|e| panic!("{name}: import: {e}"));
        let meta = describe(&stack, &key.key_id).await;
        assert_eq!(meta.key_state, KeyState::Enabled as i32, "{name}");
        assert_eq!(meta.material_expire_time, None);

        // The service's ciphertext opens outside with the imported key, and the other way.
        // (The data plane refused the key above; it takes the import once it hears of it.)
        let sealed = eventually(Duration::from_secs(5), "imported key usable", || async {
            encrypt(&stack, &key.key_id, b"imported secret").await.ok()
        })
        .await
        .unwrap();
        assert_eq!(sealed.key_version_id, meta.primary_key_version_id);
        if len != 24 {
            assert_eq!(
                open_outside(&aes, &sealed.ciphertext_blob),
                b"imported secret"
            );
            let outside = seal_outside(&aes, &sealed.key_version_id, b"sealed by ring");
            assert_eq!(
                decrypt(&stack, &outside).await.unwrap(),
                b"sealed by ring",
                "{name}"
            );
        }
        assert_eq!(
            decrypt(&stack, &sealed.ciphertext_blob).await.unwrap(),
            b"imported secret"
        );
        secrets.push((format!("{name}: AES key"), aes));
    }
    assert_nowhere_at_rest(&stack, &secrets);
}

#[tokio::test]
async fn private_keys_imported_sign_and_decrypt_like_the_originals() {
    let stack = Stack::start().await.unwrap();
    let files = Files::new();
    let software = instance(&stack, InstanceType::Software).await;
    let hardware = instance(&stack, InstanceType::Hardware).await;
    let mut secrets = Vec::new();
    for (inst, spec, usage, genpkey, algorithm) in [
        (
            &software,
            KeySpec::Rsa2048,
            KeyUsage::SignVerify,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
            Algorithm::RsaPssSha256,
        ),
        (
            &software,
            KeySpec::Rsa2048,
            KeyUsage::EncryptDecrypt,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
            Algorithm::RsaesOaepSha256,
        ),
        (
            &software,
            KeySpec::EcP256,
            KeyUsage::SignVerify,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
            Algorithm::EcdsaSha256,
        ),
        (
            &software,
            KeySpec::EcP256k,
            KeyUsage::SignVerify,
            &[
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:secp256k1",
            ][..],
            Algorithm::EcdsaSha256,
        ),
        (
            &hardware,
            KeySpec::EcP256,
            KeyUsage::SignVerify,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
            Algorithm::EcdsaSha256,
        ),
        (
            &hardware,
            KeySpec::Rsa2048,
            KeyUsage::SignVerify,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
            Algorithm::RsaPkcs1Sha256,
        ),
    ] {
        let name = format!("{spec:?} {usage:?} in {inst}");
        let key = external_key(&stack, inst, spec, usage).await;
        let (pkcs8, public_pem) = files.private_key("original", genpkey);
        let p = params(&stack, &key.key_id, Algorithm::RsaAesKeyWrapSha256)
            .await
            .unwrap();
        let (material, ephemeral) = files.rsa_aes_key_wrap(&p.public_key, &pkcs8);
        import(&stack, &key.key_id, &p.import_token, material, None)
            .await
            .unwrap_or_else(|e| panic!("{name}: import: {e}"));
        assert_eq!(
            describe(&stack, &key.key_id).await.key_state,
            KeyState::Enabled as i32
        );

        // GetPublicKey gives the original's public half.
        let pem = stack
            .crypto(Some(ALICE))
            .unwrap()
            .get_public_key(GetPublicKeyRequest {
                key_id: key.key_id.clone(),
                key_version_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .public_key;
        let served = files.write("served.pem", pem.as_bytes());
        let der = |p: &Path| openssl(&["pkey", "-pubin", "-in", path(p), "-outform", "DER"]);
        assert_eq!(der(&served), der(&public_pem), "{name}: public key");

        let mut crypto = stack.crypto(Some(ALICE)).unwrap();
        if usage == KeyUsage::SignVerify {
            let message = files.write("message.bin", name.as_bytes());
            let digest = openssl(&["dgst", "-sha256", "-binary", path(&message)]);
            let signature = crypto
                .asymmetric_sign(AsymmetricSignRequest {
                    key_id: key.key_id.clone(),
                    algorithm: algorithm as i32,
                    digest,
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("{name}: sign: {e}"))
                .into_inner()
                .value;
            let sig = files.write("signature.bin", &signature);
            let mut args = vec![
                "dgst",
                "-sha256",
                "-verify",
                path(&public_pem),
                "-signature",
                path(&sig),
            ];
            if algorithm == Algorithm::RsaPssSha256 {
                args.extend([
                    "-sigopt",
                    "rsa_padding_mode:pss",
                    "-sigopt",
                    "rsa_pss_saltlen:32",
                ]);
            }
            args.push(path(&message));
            let out = String::from_utf8(openssl(&args)).unwrap();
            assert!(out.contains("Verified OK"), "{name}: {out}");
        } else {
            let wrapped = {
                let public = files.write("pub-for-oaep.der", &der(&public_pem));
                let input = files.write("oaep-in.bin", b"to the imported key");
                let out = files.at("oaep-out.bin");
                openssl(&[
                    "pkeyutl",
                    "-encrypt",
                    "-pubin",
                    "-keyform",
                    "DER",
                    "-inkey",
                    path(&public),
                    "-pkeyopt",
                    "rsa_padding_mode:oaep",
                    "-pkeyopt",
                    "rsa_oaep_md:sha256",
                    "-pkeyopt",
                    "rsa_mgf1_md:sha256",
                    "-in",
                    path(&input),
                    "-out",
                    path(&out),
                ]);
                std::fs::read(&out).unwrap()
            };
            let plain = crypto
                .asymmetric_decrypt(AsymmetricDecryptRequest {
                    key_id: key.key_id.clone(),
                    algorithm: algorithm as i32,
                    ciphertext_blob: wrapped,
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("{name}: decrypt: {e}"))
                .into_inner()
                .plaintext;
            assert_eq!(plain, b"to the imported key");
        }
        // What identifies the private key: its PKCS#8 and its secret number as OpenSSL
        // prints it (the EC private scalar, the RSA private exponent).
        let text = String::from_utf8(openssl(&[
            "pkey",
            "-inform",
            "DER",
            "-in",
            path(&files.at("original.p8.der")),
            "-text",
            "-noout",
        ]))
        .unwrap();
        let secret = private_number(&text);
        assert!(secret.len() >= 24, "{name}: {text}");
        secrets.push((format!("{name}: PKCS#8"), pkcs8.clone()));
        secrets.push((format!("{name}: private number"), secret[..16].to_vec()));
        secrets.push((format!("{name}: ephemeral key"), ephemeral));
        std::fs::remove_file(files.at("original.p8.der")).unwrap();
    }
    assert_nowhere_at_rest(&stack, &secrets);
}

#[tokio::test]
async fn refusals_have_exact_statuses() {
    let stack = Stack::start().await.unwrap();
    let files = Files::new();
    let software = instance(&stack, InstanceType::Software).await;
    let hardware = instance(&stack, InstanceType::Hardware).await;
    let aes_key = external_key(
        &stack,
        &software,
        KeySpec::AliyunAes256,
        KeyUsage::EncryptDecrypt,
    )
    .await;
    let other = external_key(
        &stack,
        &hardware,
        KeySpec::AliyunAes256,
        KeyUsage::EncryptDecrypt,
    )
    .await;
    let ec_key = external_key(&stack, &software, KeySpec::EcP256k, KeyUsage::SignVerify).await;
    let aes = files.random("aes.bin", 32);

    // Wrapping that does not fit the key.
    expect_status(
        params(&stack, &aes_key.key_id, Algorithm::RsaAesKeyWrapSha256).await,
        Code::InvalidArgument,
        "InvalidParameter.WrappingAlgorithm",
    );
    expect_status(
        params(&stack, &ec_key.key_id, Algorithm::RsaesOaepSha256).await,
        Code::InvalidArgument,
        "InvalidParameter.WrappingAlgorithm",
    );
    expect_status(
        params(&stack, &aes_key.key_id, Algorithm::RsaPssSha256).await,
        Code::InvalidArgument,
        "InvalidParameter.WrappingAlgorithm",
    );
    let mut keys = stack.keys(Some(ALICE)).unwrap();
    for (algorithm, spec, why) in [
        (
            Algorithm::Unspecified as i32,
            KeySpec::Rsa2048 as i32,
            "InvalidParameter.WrappingAlgorithm",
        ),
        (
            Algorithm::RsaesOaepSha256 as i32,
            KeySpec::Rsa3072 as i32,
            "InvalidParameter.WrappingKeySpec",
        ),
        (
            Algorithm::RsaesOaepSha256 as i32,
            KeySpec::Unspecified as i32,
            "InvalidParameter.WrappingKeySpec",
        ),
    ] {
        expect_status(
            keys.get_parameters_for_import(GetParametersForImportRequest {
                key_id: aes_key.key_id.clone(),
                wrapping_algorithm: algorithm,
                wrapping_key_spec: spec,
            })
            .await,
            Code::InvalidArgument,
            why,
        );
    }
    // Keys whose material the service made take no import.
    let generated = keys
        .create_key(CreateKeyRequest {
            kms_instance_id: software.clone(),
            key_spec: KeySpec::AliyunAes256 as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap();
    expect_status(
        params(&stack, &generated.key_id, Algorithm::RsaesOaepSha256).await,
        Code::InvalidArgument,
        "InvalidParameter.Origin",
    );
    expect_status(
        keys.delete_key_material(DeleteKeyMaterialRequest {
            key_id: generated.key_id.clone(),
        })
        .await,
        Code::InvalidArgument,
        "InvalidParameter.Origin",
    );

    let p = params(&stack, &aes_key.key_id, Algorithm::RsaesOaepSha256)
        .await
        .unwrap();
    let p_other = params(&stack, &other.key_id, Algorithm::RsaesOaepSha256)
        .await
        .unwrap();
    let good = files.rsa_encrypt(&p.public_key, "sha256", &aes);

    // Tokens: unknown, malformed, another key's.
    expect_status(
        import(
            &stack,
            &aes_key.key_id,
            "itk-00000000000000000000000000000000",
            good.clone(),
            None,
        )
        .await,
        Code::InvalidArgument,
        "InvalidParameter.ImportToken",
    );
    expect_status(
        import(&stack, &aes_key.key_id, "not a token", good.clone(), None).await,
        Code::InvalidArgument,
        "InvalidParameter.ImportToken",
    );
    expect_status(
        import(&stack, &other.key_id, &p.import_token, good.clone(), None).await,
        Code::InvalidArgument,
        "InvalidParameter.ImportTokenKeyMismatch",
    );
    // Material: wrapped under another import key, with SHA-1 for a SHA-256 token, with
    // PKCS#1 v1.5 (refused on purpose), of the wrong length, or garbage.
    for (material, why) in [
        (
            files.rsa_encrypt(&p_other.public_key, "sha256", &aes),
            "another import key",
        ),
        (
            files.rsa_encrypt(&p.public_key, "sha1", &aes),
            "sha-1 for a sha-256 token",
        ),
        (
            files.rsa_encrypt(&p.public_key, "pkcs1", &aes),
            "pkcs#1 v1.5",
        ),
        (vec![0x42; 256], "garbage"),
        (vec![0x42; 17], "short"),
    ] {
        let r = import(&stack, &aes_key.key_id, &p.import_token, material, None).await;
        let err = r.expect_err(why);
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (
                Code::InvalidArgument,
                "InvalidParameter.EncryptedKeyMaterial"
            ),
            "{why}: {}",
            err.message()
        );
    }
    expect_status(
        import(&stack, &aes_key.key_id, &p.import_token, Vec::new(), None).await,
        Code::InvalidArgument,
        "InvalidParameter.EncryptedKeyMaterial",
    );
    let short_key = files.random("short.bin", 16);
    expect_status(
        import(
            &stack,
            &aes_key.key_id,
            &p.import_token,
            files.rsa_encrypt(&p.public_key, "sha256", &short_key),
            None,
        )
        .await,
        Code::InvalidArgument,
        "InvalidParameter.KeyMaterial",
    );
    expect_status(
        import(
            &stack,
            &aes_key.key_id,
            &p.import_token,
            good.clone(),
            Some(timestamp(control_now(&stack) - Duration::from_secs(1))),
        )
        .await,
        Code::InvalidArgument,
        "InvalidParameter.KeyMaterialExpireTime",
    );
    // A private key of another curve.
    let (p256, _) = files.private_key(
        "p256",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let p_ec = params(&stack, &ec_key.key_id, Algorithm::RsaAesKeyWrapSha256)
        .await
        .unwrap();
    let (wrong_curve, _) = files.rsa_aes_key_wrap(&p_ec.public_key, &p256);
    expect_status(
        import(
            &stack,
            &ec_key.key_id,
            &p_ec.import_token,
            wrong_curve,
            None,
        )
        .await,
        Code::InvalidArgument,
        "InvalidParameter.KeyMaterial",
    );

    // A private key of the right curve, but not PKCS#8 (OpenSSL's traditional SEC1 form).
    let sec1 = files.at("sec1.der");
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:secp256k1",
        "-outform",
        "DER",
        "-out",
        path(&sec1),
    ]);
    let (not_pkcs8, _) = files.rsa_aes_key_wrap(&p_ec.public_key, &std::fs::read(&sec1).unwrap());
    expect_status(
        import(&stack, &ec_key.key_id, &p_ec.import_token, not_pkcs8, None).await,
        Code::InvalidArgument,
        "InvalidParameter.KeyMaterial",
    );

    // None of the refusals spent the token: it still imports, once.
    import(&stack, &aes_key.key_id, &p.import_token, good.clone(), None)
        .await
        .unwrap();
    let sealed = encrypt(&stack, &aes_key.key_id, b"before deletion")
        .await
        .unwrap();
    expect_status(
        import(&stack, &aes_key.key_id, &p.import_token, good.clone(), None).await,
        Code::FailedPrecondition,
        "Rejected.Enabled",
    );
    keys.delete_key_material(DeleteKeyMaterialRequest {
        key_id: aes_key.key_id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        describe(&stack, &aes_key.key_id).await.key_state,
        KeyState::PendingImport as i32
    );
    eventually(
        Duration::from_secs(5),
        "deleted material refused",
        || async {
            encrypt(&stack, &aes_key.key_id, b"x")
                .await
                .err()
                .filter(|e| reason(e) == "Rejected.PendingImport")
        },
    )
    .await
    .unwrap();
    expect_status(
        decrypt(&stack, &sealed.ciphertext_blob).await,
        Code::FailedPrecondition,
        "Rejected.PendingImport",
    );
    expect_status(
        import(&stack, &aes_key.key_id, &p.import_token, good.clone(), None).await,
        Code::FailedPrecondition,
        "Rejected.UsedImportToken",
    );

    // Only the same material comes back, and with it the old ciphertexts.
    let again = params(&stack, &aes_key.key_id, Algorithm::RsaesOaepSha1)
        .await
        .unwrap();
    let different = files.random("different.bin", 32);
    expect_status(
        import(
            &stack,
            &aes_key.key_id,
            &again.import_token,
            files.rsa_encrypt(&again.public_key, "sha1", &different),
            None,
        )
        .await,
        Code::InvalidArgument,
        "InvalidParameter.KeyMaterialMismatch",
    );
    import(
        &stack,
        &aes_key.key_id,
        &again.import_token,
        files.rsa_encrypt(&again.public_key, "sha1", &aes),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        decrypt_once_imported(&stack, &sealed.ciphertext_blob).await,
        b"before deletion"
    );

    // A token expires 24 hours after issue, by the control plane's clock.
    let p_other_material = files.rsa_encrypt(&p_other.public_key, "sha256", &aes);
    stack.advance_clock(Duration::from_secs(86_400)).unwrap();
    expect_status(
        import(
            &stack,
            &other.key_id,
            &p_other.import_token,
            p_other_material,
            None,
        )
        .await,
        Code::FailedPrecondition,
        "Rejected.ExpiredImportToken",
    );
}

/// Decrypt, ReEncrypt and ExportDataKey find the key from the blob's version; whatever state
/// the key is in, that state is the answer (FAILED_PRECONDITION `Rejected.<State>`), also
/// when the key's material was deleted and the version has none: a ciphertext of the key is
/// never called invalid because the key cannot use it now.
#[tokio::test]
async fn blobs_of_an_unusable_key_answer_its_state() {
    let stack = Stack::start().await.unwrap();
    let files = Files::new();
    let software = instance(&stack, InstanceType::Software).await;
    let key = external_key(
        &stack,
        &software,
        KeySpec::AliyunAes256,
        KeyUsage::EncryptDecrypt,
    )
    .await;
    let aes = files.random("aes.bin", 32);
    let p = params(&stack, &key.key_id, Algorithm::RsaesOaepSha256)
        .await
        .unwrap();
    import(
        &stack,
        &key.key_id,
        &p.import_token,
        files.rsa_encrypt(&p.public_key, "sha256", &aes),
        None,
    )
    .await
    .unwrap();
    let destination = stack
        .keys(Some(ALICE))
        .unwrap()
        .create_key(CreateKeyRequest {
            kms_instance_id: software.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    let mut crypto = stack.crypto(Some(ALICE)).unwrap();
    let sealed = encrypt(&stack, &key.key_id, b"kept").await.unwrap();
    let data_key = crypto
        .generate_data_key(GenerateDataKeyRequest {
            key_id: key.key_id.clone(),
            encryption_context: context(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Any RSA-2048 public key will do to export to; the import key is one.
    let export_to = p.public_key.clone();

    let refusals = |want: &'static str| {
        let (stack, sealed, data_key) = (&stack, &sealed, &data_key);
        let (destination, export_to) = (&destination, &export_to);
        async move {
            let mut crypto = stack.crypto(Some(ALICE)).unwrap();
            let answers = [
                (
                    "Decrypt",
                    decrypt(stack, &sealed.ciphertext_blob).await.map(|_| ()),
                ),
                (
                    "ReEncrypt",
                    crypto
                        .re_encrypt(ReEncryptRequest {
                            ciphertext_blob: sealed.ciphertext_blob.clone(),
                            source_encryption_context: context(),
                            destination_key_id: destination.clone(),
                            ..Default::default()
                        })
                        .await
                        .map(|_| ()),
                ),
                (
                    "ExportDataKey",
                    crypto
                        .export_data_key(ExportDataKeyRequest {
                            ciphertext_blob: data_key.ciphertext_blob.clone(),
                            encryption_context: context(),
                            public_key: export_to.clone(),
                            wrapping_algorithm: Algorithm::RsaesOaepSha256 as i32,
                            wrapping_key_spec: KeySpec::Rsa2048 as i32,
                            ..Default::default()
                        })
                        .await
                        .map(|_| ()),
                ),
            ];
            answers
                .into_iter()
                .map(|(rpc, r)| match r {
                    Ok(()) => format!("{rpc}: ok"),
                    Err(e) => format!("{rpc}: {:?} {}", e.code(), reason(&e)),
                })
                .collect::<Vec<_>>()
                .join("; ")
                .eq(&["Decrypt", "ReEncrypt", "ExportDataKey"]
                    .map(|rpc| format!("{rpc}: FailedPrecondition {want}"))
                    .join("; "))
                .then_some(())
        }
    };
    let mut keys = stack.keys(Some(ALICE)).unwrap();
    keys.disable_key(DisableKeyRequest {
        key_id: key.key_id.clone(),
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(5), "Rejected.Disabled", || {
        refusals("Rejected.Disabled")
    })
    .await
    .unwrap();
    keys.enable_key(EnableKeyRequest {
        key_id: key.key_id.clone(),
    })
    .await
    .unwrap();
    keys.delete_key_material(DeleteKeyMaterialRequest {
        key_id: key.key_id.clone(),
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(5), "Rejected.PendingImport", || {
        refusals("Rejected.PendingImport")
    })
    .await
    .unwrap();
    keys.schedule_key_deletion(ScheduleKeyDeletionRequest {
        key_id: key.key_id.clone(),
        pending_window_in_days: 7,
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(5), "Rejected.PendingDeletion", || {
        refusals("Rejected.PendingDeletion")
    })
    .await
    .unwrap();
    // A caller the key's policy does not name still learns nothing about the key.
    let stranger = stack
        .crypto(Some(kms_e2e::MALLORY))
        .unwrap()
        .decrypt(DecryptRequest {
            ciphertext_blob: sealed.ciphertext_blob.clone(),
            encryption_context: context(),
            dry_run: false,
        })
        .await
        .unwrap_err();
    assert_eq!(stranger.code(), Code::NotFound, "{stranger:?}");
}

/// A key with imported material gets new versions only by import: automatic rotation is
/// refused at CreateKey and UpdateRotationPolicy with the reason, is not on by default in a
/// software instance, shows as Disabled without interval or date, and never happens.
#[tokio::test]
async fn keys_with_imported_material_do_not_rotate_automatically() {
    let stack = Stack::start().await.unwrap();
    let files = Files::new();
    let software = instance(&stack, InstanceType::Software).await;
    let mut keys = stack.keys(Some(ALICE)).unwrap();
    for (enable, interval, want) in [
        (Some(true), None, "InvalidParameter.EnableAutomaticRotation"),
        (
            None,
            Some(prost_types::Duration {
                seconds: 30 * 86_400,
                nanos: 0,
            }),
            "InvalidParameter.RotationInterval",
        ),
    ] {
        let refused = keys
            .create_key(CreateKeyRequest {
                kms_instance_id: software.clone(),
                origin: KeyOrigin::External as i32,
                enable_automatic_rotation: enable,
                rotation_interval: interval,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (refused.code(), reason(&refused).as_str()),
            (Code::InvalidArgument, want),
            "{refused:?}"
        );
        assert!(
            refused
                .message()
                .contains("only comes by importing material"),
            "{}",
            refused.message()
        );
    }

    let key = external_key(
        &stack,
        &software,
        KeySpec::AliyunAes256,
        KeyUsage::EncryptDecrypt,
    )
    .await;
    let not_rotating = |m: &KeyMetadata| {
        (
            m.rotation_status,
            m.rotation_interval.is_none(),
            m.next_rotation_date.is_none(),
        ) == (RotationStatus::Disabled as i32, true, true)
    };
    assert!(not_rotating(&key), "{key:?}");
    let aes = files.random("aes.bin", 32);
    let p = params(&stack, &key.key_id, Algorithm::RsaesOaepSha256)
        .await
        .unwrap();
    import(
        &stack,
        &key.key_id,
        &p.import_token,
        files.rsa_encrypt(&p.public_key, "sha256", &aes),
        None,
    )
    .await
    .unwrap();
    let imported = describe(&stack, &key.key_id).await;
    assert!(not_rotating(&imported), "{imported:?}");
    let refused = keys
        .update_rotation_policy(UpdateRotationPolicyRequest {
            key_id: key.key_id.clone(),
            enable_automatic_rotation: Some(true),
            rotation_interval: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        reason(&refused),
        "InvalidParameter.EnableAutomaticRotation",
        "{refused:?}"
    );
    let off = keys
        .update_rotation_policy(UpdateRotationPolicyRequest {
            key_id: key.key_id.clone(),
            enable_automatic_rotation: Some(false),
            rotation_interval: None,
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap();
    assert!(not_rotating(&off), "{off:?}");

    // A year and more later a generated key beside it has rotated; it still has the one
    // imported version.
    let generated = keys
        .create_key(CreateKeyRequest {
            kms_instance_id: software.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    let versions = |key_id: String| {
        let mut keys = stack.keys(Some(ALICE)).unwrap();
        async move {
            keys.list_key_versions(ListKeyVersionsRequest {
                key_id,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .key_versions
            .len()
        }
    };
    stack
        .advance_clock(Duration::from_secs(400 * 86_400))
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the generated key rotated",
        || async { (versions(generated.clone()).await > 1).then_some(()) },
    )
    .await
    .unwrap();
    assert_eq!(versions(key.key_id.clone()).await, 1);
}

#[tokio::test]
async fn material_expires_on_the_control_plane_clock() {
    let stack = Stack::start().await.unwrap();
    let files = Files::new();
    let hardware = instance(&stack, InstanceType::Hardware).await;
    let key = external_key(
        &stack,
        &hardware,
        KeySpec::AliyunAes256,
        KeyUsage::EncryptDecrypt,
    )
    .await;
    let aes = files.random("aes.bin", 32);
    let p = params(&stack, &key.key_id, Algorithm::RsaesOaepSha256)
        .await
        .unwrap();
    let expire = timestamp(control_now(&stack) + Duration::from_secs(3_600));
    import(
        &stack,
        &key.key_id,
        &p.import_token,
        files.rsa_encrypt(&p.public_key, "sha256", &aes),
        Some(expire),
    )
    .await
    .unwrap();
    let meta = describe(&stack, &key.key_id).await;
    assert_eq!(meta.key_state, KeyState::Enabled as i32);
    assert_eq!(
        meta.material_expire_time.map(|t| t.seconds),
        Some(expire.seconds)
    );
    let sealed = encrypt(&stack, &key.key_id, b"short-lived").await.unwrap();
    // A second key, its material expiring first: once it has expired, the expiry pass has
    // seen the clock that does not yet expire the first.
    let witness = external_key(
        &stack,
        &hardware,
        KeySpec::AliyunAes256,
        KeyUsage::EncryptDecrypt,
    )
    .await;
    let p = params(&stack, &witness.key_id, Algorithm::RsaesOaepSha256)
        .await
        .unwrap();
    import(
        &stack,
        &witness.key_id,
        &p.import_token,
        files.rsa_encrypt(&p.public_key, "sha256", &aes),
        Some(timestamp(control_now(&stack) + Duration::from_secs(1_700))),
    )
    .await
    .unwrap();

    stack.advance_clock(Duration::from_secs(1_800)).unwrap();
    eventually(Duration::from_secs(10), "the witness expired", || async {
        (describe(&stack, &witness.key_id).await.key_state == KeyState::PendingImport as i32)
            .then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        describe(&stack, &key.key_id).await.key_state,
        KeyState::Enabled as i32,
        "not yet expired"
    );
    stack.advance_clock(Duration::from_secs(1_801)).unwrap();
    eventually(Duration::from_secs(10), "material expired", || async {
        let meta = describe(&stack, &key.key_id).await;
        (meta.key_state == KeyState::PendingImport as i32).then_some(meta)
    })
    .await
    .unwrap();
    eventually(
        Duration::from_secs(5),
        "expired material refused",
        || async {
            decrypt(&stack, &sealed.ciphertext_blob)
                .await
                .err()
                .filter(|e| reason(e) == "Rejected.PendingImport")
        },
    )
    .await
    .unwrap();
    expect_status(
        encrypt(&stack, &key.key_id, b"x").await,
        Code::FailedPrecondition,
        "Rejected.PendingImport",
    );
    // The same material imports again, for good this time.
    let p = params(&stack, &key.key_id, Algorithm::RsaesOaepSha256)
        .await
        .unwrap();
    import(
        &stack,
        &key.key_id,
        &p.import_token,
        files.rsa_encrypt(&p.public_key, "sha256", &aes),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        decrypt_once_imported(&stack, &sealed.ciphertext_blob).await,
        b"short-lived"
    );
    assert_nowhere_at_rest(&stack, &[("AES key".into(), aes)]);
}

#[tokio::test]
async fn kmsctl_walks_the_import() {
    let stack = Stack::start().await.unwrap();
    let files = Files::new();
    let hardware = instance(&stack, InstanceType::Hardware).await;
    let key = external_key(
        &stack,
        &hardware,
        KeySpec::AliyunAes256,
        KeyUsage::EncryptDecrypt,
    )
    .await;
    let kmsctl = |args: &[&str]| {
        let out = Command::new(kms_e2e::bin_path("kmsctl").unwrap())
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
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kmsctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let public = files.at("import.der");
    let out: serde_json::Value = serde_json::from_str(&kmsctl(&[
        "get-parameters-for-import",
        &key.key_id,
        "--wrapping-algorithm",
        "RSAES_OAEP_SHA_256",
        "--public-key-out",
        path(&public),
        "--json",
    ]))
    .unwrap();
    let token = out["import_token"].as_str().unwrap().to_string();
    let aes = files.random("aes.bin", 32);
    let wrapped = files.write(
        "wrapped.bin",
        &files.rsa_encrypt(&std::fs::read(&public).unwrap(), "sha256", &aes),
    );
    let text = kmsctl(&[
        "import-key-material",
        &key.key_id,
        "--token",
        &token,
        "--in",
        path(&wrapped),
        "--expire",
        "2999-01-01T00:00:00Z",
    ]);
    assert!(text.contains("Imported"), "{text}");
    let meta = describe(&stack, &key.key_id).await;
    assert_eq!(meta.key_state, KeyState::Enabled as i32);
    assert_eq!(
        meta.material_expire_time.map(|t| t.seconds),
        Some(32_472_144_000)
    );
    let sealed = encrypt(&stack, &key.key_id, b"via kmsctl").await.unwrap();
    assert_eq!(open_outside(&aes, &sealed.ciphertext_blob), b"via kmsctl");
    kmsctl(&["delete-key-material", &key.key_id]);
    assert_eq!(
        describe(&stack, &key.key_id).await.key_state,
        KeyState::PendingImport as i32
    );
}
