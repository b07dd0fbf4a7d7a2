//! In-process costs of the Encrypt hot path, each beside its baseline in the same run:
//! ciphertext-blob framing and context canonicalisation against the AES-GCM seal they wrap,
//! and the software backend's seal against calling `ring` directly.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use kms_backend::{Backend, SecretBytes};
use kms_backend_soft::SoftBackend;
use kms_types::blob::{self, CiphertextBlob};
use kms_types::{EncryptionContext, KeySpec, KeyVersionId};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

fn seal(c: &mut Criterion) {
    let soft = SoftBackend::new();
    let key = soft.generate(KeySpec::AliyunAes256).unwrap().material;
    let plaintext = vec![7u8; 256];
    let iv = [1u8; 12];
    let version = KeyVersionId::generate();
    let context = EncryptionContext::new(HashMap::from([
        ("tenant".to_string(), "t-42".to_string()),
        ("purpose".to_string(), "bench".to_string()),
    ]))
    .unwrap();

    let mut g = c.benchmark_group("seal_256B");
    g.bench_function("baseline_ring_direct", |b| {
        let ring_key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.expose()).unwrap());
        b.iter(|| {
            let mut buf = plaintext.clone();
            ring_key
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(iv),
                    Aad::from(b"aad"),
                    &mut buf,
                )
                .unwrap();
            black_box(buf)
        })
    });
    g.bench_function("soft_backend_seal", |b| {
        b.iter(|| black_box(soft.aead_seal(&key, &iv, b"aad", &plaintext).unwrap()))
    });
    g.bench_function("blob_framing_and_context", |b| {
        b.iter(|| {
            let header = blob::header(blob::BlobKind::Plaintext, &version, &iv);
            let aad = blob::aad(&header, &context.canonical_bytes());
            let sealed = soft.aead_seal(&key, &iv, &aad, &plaintext).unwrap();
            black_box(blob::assemble(&header, &sealed))
        })
    });
    g.finish();

    let header = blob::header(blob::BlobKind::Plaintext, &version, &iv);
    let sealed = soft
        .aead_seal(
            &key,
            &iv,
            &blob::aad(&header, &context.canonical_bytes()),
            &plaintext,
        )
        .unwrap();
    let full = blob::assemble(&header, &sealed);
    let mut g = c.benchmark_group("open_256B");
    g.bench_function("baseline_soft_backend_open", |b| {
        let aad = blob::aad(&header, &context.canonical_bytes());
        b.iter(|| black_box(soft.aead_open(&key, &iv, &aad, &sealed).unwrap()))
    });
    g.bench_function("parse_and_open", |b| {
        b.iter(|| {
            let parsed = CiphertextBlob::parse(&full).unwrap();
            let aad = blob::aad(&parsed.header(), &context.canonical_bytes());
            let out: SecretBytes = soft
                .aead_open(&key, &parsed.iv, &aad, parsed.sealed)
                .unwrap();
            black_box(out)
        })
    });
    g.finish();
}

criterion_group!(benches, seal);
criterion_main!(benches);
