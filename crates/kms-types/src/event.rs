//! Key change events: what the control plane's directory tells data-plane caches, numbered by
//! a directory revision that grows by one with every event.

use serde::{Deserialize, Serialize};

use crate::ids::KeyId;

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyEventKind {
    /// The key changed: refetch it.
    Changed,
    /// The key was deleted: drop it.
    Deleted,
    /// Changes cannot be replayed one by one: drop every cached key.
    Resync,
}

/// One change, or a resync marker carrying the current revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEvent {
    /// Directory revision of the change.
    pub revision: u64,
    /// The key; `None` for [`KeyEventKind::Resync`].
    pub key_id: Option<KeyId>,
    /// What happened.
    pub kind: KeyEventKind,
}

impl KeyEvent {
    /// A resync marker at `revision`.
    pub fn resync(revision: u64) -> Self {
        Self {
            revision,
            key_id: None,
            kind: KeyEventKind::Resync,
        }
    }
}
