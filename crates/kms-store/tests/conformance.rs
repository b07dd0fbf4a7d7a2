//! Runs the shared store conformance suite against both engines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;

use kms_store::{MemoryStore, SledStore, conformance};
use tempfile::TempDir;

#[test]
fn memory_store_conforms() {
    conformance::run_all(&MemoryStore::new);
}

#[test]
fn sled_store_conforms() {
    // Each store gets its own directory, kept alive until the suite is done.
    let dirs = Mutex::new(Vec::<TempDir>::new());
    conformance::run_all(&|| {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        dirs.lock().unwrap().push(dir);
        store
    });
}
