//! Writes staged over something readable until a transaction body is done with them: the
//! memory engine stages a transaction over its map, the sled engine over the database (then
//! applies the writes as one atomic batch), and a [`crate::CommitQueue`] batch stages each body
//! over the shared transaction, so a body that aborts leaves nothing.

use std::collections::BTreeMap;

use crate::{TxStoreError, Txn};

/// What staged writes are read through when they do not hold the key.
pub(crate) trait Base {
    fn read(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, TxStoreError>;
}

impl Base for &BTreeMap<Vec<u8>, Vec<u8>> {
    fn read(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, TxStoreError> {
        Ok(self.get(key).cloned())
    }
}

impl Base for &mut (dyn Txn + '_) {
    fn read(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, TxStoreError> {
        self.get(key)
    }
}

/// A [`Txn`] whose writes stay in `writes` (`None` marks a delete) and whose reads see them
/// first, then `base`.
pub(crate) struct Staged<B> {
    pub(crate) base: B,
    pub(crate) writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<B: Base> Staged<B> {
    pub(crate) fn over(base: B) -> Self {
        Self {
            base,
            writes: BTreeMap::new(),
        }
    }
}

impl<B: Base> Txn for Staged<B> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, TxStoreError> {
        match self.writes.get(key) {
            Some(staged) => Ok(staged.clone()),
            None => self.base.read(key),
        }
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), TxStoreError> {
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), TxStoreError> {
        self.writes.insert(key.to_vec(), None);
        Ok(())
    }
}
