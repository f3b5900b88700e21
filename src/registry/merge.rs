//! Materialising a merged tree: the union of installed trees, later ones
//! overriding earlier ones at the same path, built from hard links.
//!
//! This is how a function's layers become its /opt (and how a function's
//! code is carried into a new revision when only its layers change). The
//! alternative, an overlayfs mount with the layers as lowerdirs, would be
//! assembled in every environment at specialisation, needs an overlay-capable
//! kernel and filesystem under the state dir (overlayfs refuses some upper
//! filesystems and nests badly in user namespaces), and adds mounts to tear
//! down. A merged directory per function revision is built once, at
//! create/update time, outside the sandbox; the environment only binds it
//! read-only at /opt like /var/task, which works the same on every kernel.
//! Hard links cost one inode reference per file, no data: a 250 MB layer is
//! merged in milliseconds. They also give Lambda's deletion semantics for
//! free: deleting a layer version removes its directory, and functions that
//! use it keep their links to the same files.
//!
//! The sources are trees this registry installed (root-owned, modes 0755 or
//! 0644, no special files); nothing is ever followed through a symlink: every
//! path is built from directories this function created, and the last
//! component is inspected with lstat and replaced, never written through.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::package::{self, STAGING_PREFIX};

const DIR_MODE: u32 = 0o755;

/// Builds `dest` (which must not exist; its parent must) as the union of
/// `sources` in order: a later source's entry replaces whatever an earlier
/// one had at the same path (a file over a file, a directory over a file or
/// symlink, a file or symlink over a whole directory), as unzipping the
/// layers in order into /opt would on Lambda. Built in a staging directory
/// and renamed into place, so a failure leaves nothing at `dest`.
pub fn merge_trees(sources: &[&Path], dest: &Path) -> io::Result<()> {
    if fs::symlink_metadata(dest).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{dest:?} already exists"),
        ));
    }
    let parent = dest.parent().unwrap_or(Path::new("/"));
    let staging = tempfile::Builder::new()
        .prefix(STAGING_PREFIX)
        .tempdir_in(parent)?;
    for source in sources {
        merge_one(source, staging.path())?;
    }
    fs::set_permissions(staging.path(), fs::Permissions::from_mode(DIR_MODE))?;
    // Links are metadata: one syncfs(2) makes the whole tree durable before
    // the record that names it is written.
    package::sync_fs(staging.path()).map_err(io::Error::other)?;
    fs::rename(staging.path(), dest)?;
    let _ = staging.keep();
    package::sync_dir(parent)
}

/// Adds the tree at `source` onto `dest`, overriding what is there.
fn merge_one(source: &Path, dest: &Path) -> io::Result<()> {
    // Explicit stack: a deep tree cannot overflow ours.
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(source.join(&rel))? {
            let entry = entry?;
            let rel = rel.join(entry.file_name());
            let from = source.join(&rel);
            let to = dest.join(&rel);
            let meta = fs::symlink_metadata(&from)?;
            let existing = fs::symlink_metadata(&to).ok();
            if meta.is_dir() {
                if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                    if existing.is_some() {
                        remove_any(&to)?;
                    }
                    fs::DirBuilder::new().mode(DIR_MODE).create(&to)?;
                    fs::set_permissions(&to, fs::Permissions::from_mode(DIR_MODE))?;
                }
                stack.push(rel);
                continue;
            }
            if existing.is_some() {
                remove_any(&to)?;
            }
            if meta.is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
            } else if meta.is_file() {
                link_or_copy(&from, &to, meta.permissions().mode())?;
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{from:?} is neither a file, a directory nor a symlink"),
                ));
            }
        }
    }
    Ok(())
}

/// A hard link; a copy when the two are on different filesystems (a state
/// dir whose parts are separate mounts) or the file has as many links as its
/// filesystem allows (EMLINK: 65,000 on ext4, reachable when many function
/// revisions use one layer).
fn link_or_copy(from: &Path, to: &Path, mode: u32) -> io::Result<()> {
    match fs::hard_link(from, to) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EXDEV | libc::EMLINK)) => {
            fs::copy(from, to)?;
            fs::set_permissions(to, fs::Permissions::from_mode(mode & 0o755))
        }
        other => other,
    }
}

fn remove_any(path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path)?.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn write(root: &Path, rel: &str, content: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    #[test]
    fn later_sources_win_and_files_are_links() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        write(&a, "python/lib.py", "A");
        write(&a, "python/only_a.py", "a");
        write(&a, "bin/tool", "tool");
        write(&a, "clash", "file in a");
        write(&b, "python/lib.py", "B");
        write(&b, "clash/inside", "dir in b");
        std::os::unix::fs::symlink("only_a.py", b.join("python/alias.py")).unwrap();
        fs::create_dir_all(b.join("bin")).unwrap();
        std::os::unix::fs::symlink("../python", b.join("bin/tool")).unwrap();
        let dest = tmp.path().join("merged");
        merge_trees(&[&a, &b], &dest).unwrap();

        let read = |rel: &str| fs::read_to_string(dest.join(rel)).unwrap();
        assert_eq!(read("python/lib.py"), "B");
        assert_eq!(read("python/only_a.py"), "a");
        assert_eq!(read("python/alias.py"), "a");
        assert_eq!(read("clash/inside"), "dir in b");
        assert!(fs::symlink_metadata(dest.join("bin/tool"))
            .unwrap()
            .is_symlink());
        // The same inode as the source: no data copied.
        assert_eq!(
            fs::metadata(dest.join("python/only_a.py")).unwrap().ino(),
            fs::metadata(a.join("python/only_a.py")).unwrap().ino()
        );
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        // Removing a source leaves the merged tree whole (a deleted layer
        // version stays usable by the functions that have it).
        fs::remove_dir_all(&a).unwrap();
        assert_eq!(read("python/only_a.py"), "a");
        // No staging directory is left next to it.
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.to_string_lossy().starts_with(STAGING_PREFIX)),
            "{names:?}"
        );
    }

    #[test]
    fn a_file_replaces_a_whole_directory_and_dest_must_not_exist() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        write(&a, "x/deep/f", "f");
        write(&b, "x", "now a file");
        let dest = tmp.path().join("merged");
        merge_trees(&[&a, &b], &dest).unwrap();
        assert_eq!(fs::read_to_string(dest.join("x")).unwrap(), "now a file");
        let err = merge_trees(&[&a], &dest).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    }
}
