//! What the engines that live in one process share: their change feed (a list of prefixes
//! and the callbacks to run after a commit that wrote under one of them), and their claims.

use std::fmt;
use std::sync::{Mutex, PoisonError};

use crate::{Notify, Store, StoreError};

/// [`Store::lead`] for an engine only one process can open: the claim always succeeds, and
/// the key is written only when it names another holder.
pub(crate) fn claim_alone<S: Store>(
    store: &S,
    key: &[u8],
    holder: &[u8],
) -> Result<bool, StoreError> {
    if store.get(key)?.as_deref() != Some(holder) {
        store.put(key, holder)?;
    }
    Ok(true)
}

/// Subscriptions of [`crate::Store::subscribe`] for an engine that sees every commit itself.
#[derive(Default)]
pub struct Subscribers {
    list: Mutex<Vec<(Vec<u8>, Notify)>>,
}

impl fmt::Debug for Subscribers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self
            .list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("Subscribers")
            .field("count", &count)
            .finish()
    }
}

impl Subscribers {
    /// Adds a subscription.
    pub fn add(&self, prefix: &[u8], notify: Notify) {
        self.list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((prefix.to_vec(), notify));
    }

    /// Runs, once each, the callbacks whose prefix starts one of `written`.
    pub fn committed<'a>(&self, written: impl IntoIterator<Item = &'a [u8]> + Clone) {
        let due: Vec<Notify> = {
            let list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
            list.iter()
                .filter(|(prefix, _)| written.clone().into_iter().any(|k| k.starts_with(prefix)))
                .map(|(_, notify)| notify.clone())
                .collect()
        };
        // Called outside the lock, so a callback that subscribes cannot deadlock.
        for notify in due {
            notify();
        }
    }
}
