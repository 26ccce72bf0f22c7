//! Files that hold secrets (signing keys, CA keys, tokens) are their owner's alone.
//!
//! The process's umask makes every file and directory it creates owner-only from the first
//! write, so no window exists in which another local user could open one; a data dir found
//! with looser permissions (made by an older release, or by hand) is tightened, with a warning.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use tracing::warn;

/// Makes every file and directory this process creates from now on owner-only (umask 077).
pub fn owner_only_files() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Creates `dir` (and its parents) owner-only, or makes an existing one and everything in it
/// owner-only: directories 0700, files no more than 0600. Symlinks are left alone.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir);
    }
    tighten(dir)
}

fn tighten(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o777;
    let wanted = if meta.is_dir() { 0o700 } else { mode & 0o600 };
    if mode != wanted && (mode & 0o077 != 0 || meta.is_dir()) {
        warn!(path = %path.display(), mode = format!("{mode:o}"), now = format!("{wanted:o}"), "other users could read this: tightened");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            tighten(&entry?.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn a_loose_data_dir_is_tightened_and_a_new_one_is_private() {
        let root = tempfile::tempdir().expect("tempdir");
        let fresh = root.path().join("a/b");
        private_dir(&fresh).expect("create");
        assert_eq!(mode(&fresh), 0o700);

        let loose = root.path().join("loose");
        std::fs::create_dir_all(loose.join("sub")).expect("dirs");
        std::fs::write(loose.join("meridian.db"), "keys").expect("file");
        std::fs::write(loose.join("sub/raft.db-wal"), "log").expect("file");
        for (p, m) in [
            (loose.clone(), 0o755),
            (loose.join("sub"), 0o775),
            (loose.join("meridian.db"), 0o644),
            (loose.join("sub/raft.db-wal"), 0o666),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).expect("chmod");
        }
        private_dir(&loose).expect("tighten");
        assert_eq!(mode(&loose), 0o700);
        assert_eq!(mode(&loose.join("sub")), 0o700);
        assert_eq!(mode(&loose.join("meridian.db")), 0o600);
        assert_eq!(mode(&loose.join("sub/raft.db-wal")), 0o600);
    }
}
