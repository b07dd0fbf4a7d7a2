//! sled-specific behaviour: durability across reopen, and the directory lock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kms_store::{SledStore, Store, StoreError, TxError, decode_record, encode_record};

#[test]
fn flushed_transaction_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        store
            .transaction::<_, ()>(|txn| {
                txn.put(b"key/1", &encode_record(1, b"record"))?;
                txn.put(b"alias/acct/main", b"key/1")?;
                Ok(())
            })
            .unwrap();
        store.flush().unwrap();
    }

    let store = SledStore::open(dir.path()).unwrap();
    let record = store.get(b"key/1").unwrap().unwrap();
    assert_eq!(decode_record(&record).unwrap(), (1, &b"record"[..]));
    assert_eq!(
        store.get(b"alias/acct/main").unwrap(),
        Some(b"key/1".to_vec())
    );
    let all = store.scan_prefix(b"", None, 10).unwrap();
    assert_eq!(all.len(), 2);
}

#[test]
fn aborted_transaction_is_not_there_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        let result = store.transaction::<(), _>(|txn| {
            txn.put(b"key/1", b"x")?;
            kms_store::abort("changed my mind")
        });
        assert!(matches!(result, Err(TxError::Aborted("changed my mind"))));
        store.flush().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.get(b"key/1").unwrap(), None);
}

#[test]
fn second_open_of_the_same_directory_fails_with_io() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SledStore::open(dir.path()).unwrap();
    let second = SledStore::open(dir.path());
    assert!(matches!(second, Err(StoreError::Io(_))), "{second:?}");
}

#[test]
fn opening_a_regular_file_fails_without_panicking() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let result = SledStore::open(file.path());
    assert!(result.is_err(), "{result:?}");
}
