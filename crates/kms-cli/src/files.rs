//! Files kmsctl writes. Each is written to a new file beside its target (created with its
//! final mode, never through an existing name) and renamed over the target, so a secret is
//! never readable by others, not even for a moment, whatever mode a file already at the target
//! had, and a symbolic link at the target is refused rather than followed.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;

/// Who may read a file kmsctl writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Plaintext, data keys, random bytes: mode 0600.
    Secret,
    /// Ciphertext, signatures, public keys: mode 0644.
    Public,
}

impl Access {
    fn mode(self) -> u32 {
        match self {
            Access::Secret => 0o600,
            Access::Public => 0o644,
        }
    }
}

/// Writes `bytes` to `path` with the mode `access` asks for.
pub(crate) fn write(path: &Path, bytes: &[u8], access: Access) -> anyhow::Result<()> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        anyhow::bail!(
            "refusing to write {}: it is a symbolic link; remove it or choose another path",
            path.display()
        );
    }
    let tmp = sibling(path)?;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(access.mode())
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .with_context(|| format!("cannot write {}", path.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A file written piece by piece beside its target, with the mode `access` asks for:
/// [`NewFile::commit`] syncs it and renames it over the target; dropped before that, it is
/// removed, so the target never holds part of it.
#[derive(Debug)]
pub(crate) struct NewFile {
    file: std::fs::File,
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl NewFile {
    /// Starts the file that will become `path`.
    pub(crate) fn create(path: &Path, access: Access) -> anyhow::Result<Self> {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            anyhow::bail!(
                "refusing to write {}: it is a symbolic link; remove it or choose another path",
                path.display()
            );
        }
        let tmp = sibling(path)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(access.mode())
            .open(&tmp)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self {
            file,
            tmp,
            target: path.to_path_buf(),
            committed: false,
        })
    }

    /// Appends `bytes`.
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.file
            .write_all(bytes)
            .with_context(|| format!("cannot write {}", self.target.display()))
    }

    /// Where the bytes written so far are, to read them back before committing.
    pub(crate) fn written(&self) -> &Path {
        &self.tmp
    }

    /// Makes the file durable and puts it in place of the target.
    pub(crate) fn commit(mut self) -> anyhow::Result<()> {
        self.file
            .sync_all()
            .and_then(|()| std::fs::rename(&self.tmp, &self.target))
            .with_context(|| format!("cannot write {}", self.target.display()))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A name beside `path` that no other write of this process uses.
fn sibling(path: &Path) -> anyhow::Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = path
        .file_name()
        .with_context(|| format!("{} does not name a file", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".kmsctl-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(path.with_file_name(tmp_name))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn modes_whatever_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        write(&path, b"secret", Access::Secret).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
        assert_eq!(mode(&path), 0o600);
        write(&path, b"public", Access::Public).unwrap();
        assert_eq!(mode(&path), 0o644);
        // Nothing left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn symlinks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = write(&link, b"secret", Access::Secret).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        // A dangling link too: nothing is created where it points.
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(write(&dangling, b"secret", Access::Secret).is_err());
        assert!(!dir.path().join("nowhere").exists());
    }

    #[test]
    fn a_new_file_appears_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup");
        std::fs::write(&path, b"previous").unwrap();
        let mut file = NewFile::create(&path, Access::Secret).unwrap();
        file.write_all(b"part").unwrap();
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), b"previous");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let mut file = NewFile::create(&path, Access::Secret).unwrap();
        file.write_all(b"one ").unwrap();
        file.write_all(b"two").unwrap();
        file.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one two");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        // A directory at the target: the rename fails and the temporary file goes.
        assert!(write(&sub, b"x", Access::Secret).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
