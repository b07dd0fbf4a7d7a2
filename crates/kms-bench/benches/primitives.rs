//! Micro-benchmarks of the pieces every data-plane call is made of: the ciphertext-blob codec
//! and encryption-context canonical form at the sizes the API allows, the policy decision
//! (default policy, a stored custom policy parsed per call, and the same policy parsed once),
//! and the software backend's primitives (AES-GCM, signatures, verification, OAEP, randomness)
//! beside `ring` called directly.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kms_backend::{Backend, PublicKeyRef};
use kms_backend_soft::SoftBackend;
use kms_types::blob::{self, BlobKind, CiphertextBlob};
use kms_types::policy::{self, KeyOwnership, PolicyDocument};
use kms_types::{Algorithm, EncryptionContext, KeySpec, KeyVersionId, Principal};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

const SIZES: [usize; 3] = [32, 4096, 6144];

fn blob_codec(c: &mut Criterion) {
    let version = KeyVersionId::generate();
    let iv = [3u8; 12];
    let mut g = c.benchmark_group("blob");
    for size in SIZES {
        let sealed = vec![9u8; size + 16];
        let header = blob::header(BlobKind::Plaintext, &version, &iv);
        let full = blob::assemble(&header, &sealed);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("assemble", size), &sealed, |b, sealed| {
            b.iter(|| {
                let header = blob::header(BlobKind::Plaintext, &version, &iv);
                black_box(blob::assemble(&header, sealed))
            })
        });
        g.bench_with_input(BenchmarkId::new("parse", size), &full, |b, full| {
            b.iter(|| black_box(CiphertextBlob::parse(full).unwrap().sealed.len()))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("encryption_context");
    for pairs in [0usize, 2, 10] {
        let map: HashMap<String, String> = (0..pairs)
            .map(|i| (format!("key-{i}"), format!("value-{i}")))
            .collect();
        g.bench_with_input(
            BenchmarkId::new("new_and_canonical", pairs),
            &map,
            |b, map| {
                b.iter(|| {
                    let ctx = EncryptionContext::new(map.clone()).unwrap();
                    black_box(ctx.canonical_bytes())
                })
            },
        );
    }
    g.finish();
}

fn policy_decision(c: &mut Criterion) {
    let owner = Principal::parse("acs:ram::1234567890123456:root").unwrap();
    let user = Principal::parse("acs:ram::1234567890123456:user/app").unwrap();
    let ownership = KeyOwnership {
        owner: owner.account(),
        instance_owner: None,
    };
    let custom = r#"{"Version":"1","Statement":[
        {"Effect":"Allow","Principal":{"RAM":["acs:ram::1234567890123456:root"]},"Action":["kms:*"],"Resource":["*"]},
        {"Effect":"Allow","Principal":{"RAM":["acs:ram::1234567890123456:user/app","acs:ram::1234567890123456:user/batch"]},"Action":["kms:Encrypt","kms:Decrypt","kms:GenerateDataKey"],"Resource":["*"]},
        {"Effect":"Deny","Principal":{"RAM":["acs:ram::1234567890123456:user/intern"]},"Action":["kms:*"],"Resource":["*"]}
    ]}"#;
    let parsed = PolicyDocument::parse(custom).unwrap();
    let mut g = c.benchmark_group("policy");
    g.bench_function("default_policy", |b| {
        b.iter(|| black_box(policy::decide_stored(&user, ownership, None, "kms:Encrypt").is_ok()))
    });
    g.bench_function("stored_custom_policy_parsed_per_call", |b| {
        b.iter(|| {
            black_box(policy::decide_stored(&user, ownership, Some(custom), "kms:Encrypt").is_ok())
        })
    });
    g.bench_function("custom_policy_parsed_once", |b| {
        b.iter(|| black_box(policy::decide(&user, ownership, Some(&parsed), "kms:Encrypt").is_ok()))
    });
    g.finish();
}

fn backend_primitives(c: &mut Criterion) {
    let soft = SoftBackend::new();
    let aes = soft.generate(KeySpec::AliyunAes256).unwrap().material;
    let aes_handle = soft.load(KeySpec::AliyunAes256, &aes).unwrap();
    let iv = [1u8; 12];
    let mut g = c.benchmark_group("aes_gcm");
    for size in SIZES {
        let plaintext = vec![7u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("ring_direct", size), &plaintext, |b, p| {
            let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, aes.expose()).unwrap());
            b.iter(|| {
                let mut buf = p.clone();
                key.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(iv),
                    Aad::empty(),
                    &mut buf,
                )
                .unwrap();
                black_box(buf)
            })
        });
        g.bench_with_input(
            BenchmarkId::new("soft_backend_handle", size),
            &plaintext,
            |b, p| b.iter(|| black_box(soft.aead_encrypt(&aes_handle, &iv, &[], p).unwrap())),
        );
    }
    g.finish();

    let digest = [0x42u8; 32];
    let mut g = c.benchmark_group("asymmetric");
    g.sample_size(20);
    for (spec, name) in [
        (KeySpec::EcP256, "EC_P256"),
        (KeySpec::EcP256K, "EC_P256K"),
        (KeySpec::Rsa2048, "RSA_2048"),
    ] {
        let material = soft.generate(spec).unwrap().material;
        let handle = soft.load(spec, &material).unwrap();
        let alg = if name.starts_with("RSA") {
            Algorithm::RsaPssSha256
        } else {
            Algorithm::EcdsaSha256
        };
        let signature = soft.sign(&handle, alg, &digest).unwrap();
        g.bench_function(BenchmarkId::new("sign", name), |b| {
            b.iter(|| black_box(soft.sign(&handle, alg, &digest).unwrap()))
        });
        g.bench_function(BenchmarkId::new("verify", name), |b| {
            b.iter(|| {
                black_box(
                    soft.verify(PublicKeyRef::Handle(&handle), alg, &digest, &signature)
                        .unwrap(),
                )
            })
        });
        if name.starts_with("RSA") {
            let ct = soft
                .asym_encrypt(
                    PublicKeyRef::Handle(&handle),
                    Algorithm::RsaesOaepSha256,
                    &[5u8; 32],
                )
                .unwrap();
            g.bench_function(BenchmarkId::new("oaep_decrypt", name), |b| {
                b.iter(|| {
                    black_box(
                        soft.asym_decrypt(&handle, Algorithm::RsaesOaepSha256, &ct)
                            .unwrap(),
                    )
                })
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("random");
    g.bench_function("soft_fill_32", |b| {
        let mut out = [0u8; 32];
        b.iter(|| {
            soft.fill_random(&mut out).unwrap();
            black_box(out)
        })
    });
    g.finish();
}

criterion_group!(benches, blob_codec, policy_decision, backend_primitives);
criterion_main!(benches);
