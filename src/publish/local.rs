//! A local site: the same layout as a Swift container, in a directory. Every write is a
//! temporary file renamed into place; "create only" is a hard link, which fails if the name
//! exists, so on a local site it is truly atomic. Object metadata (the SHA-256) lives in a
//! `.<file>.meta.json` beside each object.
//!
//! A version's marker object (`<scope>/versions/<version>`) has the name of a directory other
//! objects live in: a directory cannot also be a file, so such an object is the file
//! [`SELF`] inside its directory, and listings show it under the directory's name.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::{ObjectInfo, ObjectStore, PublishError, PutOutcome};
use crate::ui::progress::Transfer;

/// The file holding the object named like the directory it sits in.
pub const SELF: &str = ".ccb-self";

pub struct LocalSite {
    root: PathBuf,
}

impl LocalSite {
    /// A directory site. The directory is created by the first write (unlike a Swift
    /// container, it needs no one's permission: this is what makes `ccb publish` work on a
    /// laptop); reading one that does not exist yet finds it empty, so a listing or a dry run
    /// leaves nothing behind.
    pub fn new(root: PathBuf) -> Result<Self, PublishError> {
        Ok(Self { root })
    }

    fn path(&self, name: &str) -> Result<PathBuf, PublishError> {
        if name
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(PublishError::InvalidName {
                name: name.to_string(),
            });
        }
        Ok(self.root.join(name))
    }

    /// The file of an object: its path, or [`SELF`] in it when the path is a directory.
    fn file_of(&self, name: &str) -> Result<PathBuf, PublishError> {
        let path = self.path(name)?;
        Ok(if path.is_dir() { path.join(SELF) } else { path })
    }

    fn put_bytes_at(
        path: &Path,
        data: &[u8],
        create_only: bool,
    ) -> Result<PutOutcome, PublishError> {
        let mut tmp = Self::temp_beside(path)?;
        tmp.write_all(data).map_err(Self::io("write", tmp.path()))?;
        tmp.as_file()
            .sync_all()
            .map_err(Self::io("sync", tmp.path()))?;
        if create_only {
            // link(2) fails with EEXIST when the name exists: an atomic create-if-absent.
            match std::fs::hard_link(tmp.path(), path) {
                Ok(()) => Ok(PutOutcome::Written),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(PutOutcome::Exists),
                Err(e) => Err(Self::io("create", path)(e)),
            }
        } else {
            tmp.persist(path)
                .map_err(|e| Self::io("rename onto", path)(e.error))?;
            Ok(PutOutcome::Written)
        }
    }

    fn meta_path(path: &Path) -> PathBuf {
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
        path.with_file_name(format!(".{}.meta.json", file.unwrap_or_default()))
    }

    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PublishError {
        let path = path.to_path_buf();
        move |source| PublishError::Io { what, path, source }
    }

    fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile, PublishError> {
        let dir = path.parent().expect("object paths have a parent");
        std::fs::create_dir_all(dir).map_err(Self::io("create", dir))?;
        tempfile::Builder::new()
            .prefix(".ccb-publish-")
            .tempfile_in(dir)
            .map_err(Self::io("create a temporary file in", dir))
    }

    fn write_meta(path: &Path, sha256: Option<&str>) -> Result<(), PublishError> {
        let meta = Self::meta_path(path);
        match sha256 {
            Some(d) => crate::fsutil::write_atomic(
                &meta,
                serde_json::json!({"sha256": d}).to_string().as_bytes(),
            )
            .map_err(PublishError::from),
            None => {
                let _ = std::fs::remove_file(&meta);
                Ok(())
            }
        }
    }
}

impl ObjectStore for LocalSite {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, PublishError> {
        let path = self.file_of(name)?;
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io("read", &path)(e)),
        }
    }

    fn head(&self, name: &str) -> Result<Option<ObjectInfo>, PublishError> {
        let path = self.file_of(name)?;
        let meta = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::io("stat", &path)(e)),
        };
        let sha256 = std::fs::read(Self::meta_path(&path))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["sha256"].as_str().map(str::to_string));
        Ok(Some(ObjectInfo {
            name: name.to_string(),
            bytes: meta.len(),
            sha256,
        }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, PublishError> {
        // Walk the deepest directory the prefix names, then filter by the full prefix.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path(dir_part)?
        };
        let rel_of = |path: &Path| {
            path.strip_prefix(&self.root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        // Hidden names are this site's own (temp files, metadata), but a directory's `SELF`
        // file, which stands for an object named like the directory.
        let walk = walkdir::WalkDir::new(&start)
            .min_depth(1)
            .into_iter()
            .filter_entry(|e| {
                e.file_name() == SELF || !e.file_name().as_encoded_bytes().starts_with(b".")
            });
        let mut out = Vec::new();
        for entry in walk {
            let entry = match entry {
                Ok(e) => e,
                // A prefix that names no directory (or one removed meanwhile) lists nothing.
                Err(e)
                    if e.io_error().map(std::io::Error::kind)
                        == Some(std::io::ErrorKind::NotFound) =>
                {
                    continue;
                }
                Err(e) => {
                    let path = e.path().unwrap_or(&start).to_path_buf();
                    return Err(Self::io("list", &path)(e.into()));
                }
            };
            let rel = if entry.file_name() == SELF {
                entry.path().parent().map(rel_of).unwrap_or_default()
            } else if entry.file_type().is_file() {
                rel_of(entry.path())
            } else {
                continue;
            };
            if !rel.is_empty()
                && rel.starts_with(prefix)
                && let Some(info) = self.head(&rel)?
            {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn put_bytes(
        &self,
        name: &str,
        data: &[u8],
        _content_type: &str,
        create_only: bool,
    ) -> Result<PutOutcome, PublishError> {
        Self::put_bytes_at(&self.file_of(name)?, data, create_only)
    }

    fn put_file(
        &self,
        name: &str,
        file: &Path,
        size: u64,
        sha256: &str,
        progress: &Transfer,
    ) -> Result<(), PublishError> {
        let path = self.path(name)?;
        let mut tmp = Self::temp_beside(&path)?;
        let mut src = std::fs::File::open(file).map_err(Self::io("open", file))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            if crate::interrupt::requested() {
                return Err(Self::io("copy to", &path)(crate::interrupt::io_error()));
            }
            let n = src.read(&mut buf).map_err(Self::io("read", file))?;
            if n == 0 {
                break;
            }
            tmp.write_all(&buf[..n])
                .map_err(Self::io("write", tmp.path()))?;
            crate::fault::point("local.copy");
            progress.add(n as u64);
        }
        tmp.as_file()
            .sync_all()
            .map_err(Self::io("sync", tmp.path()))?;
        let written = tmp.as_file().metadata().map(|m| m.len()).unwrap_or(0);
        if written != size {
            return Err(PublishError::Changed {
                path: file.to_path_buf(),
                written,
                expected: size,
            });
        }
        Self::write_meta(&path, Some(sha256))?;
        tmp.persist(&path)
            .map_err(|e| Self::io("rename onto", &path)(e.error))?;
        Ok(())
    }

    fn copy(&self, from: &str, to: &str) -> Result<(), PublishError> {
        let src = self.path(from)?;
        let dst = self.path(to)?;
        let tmp = Self::temp_beside(&dst)?;
        let tmp_path = tmp.into_temp_path();
        std::fs::copy(&src, &tmp_path).map_err(Self::io("copy", &src))?;
        let sha = self.head(from)?.and_then(|i| i.sha256);
        Self::write_meta(&dst, sha.as_deref())?;
        tmp_path
            .persist(&dst)
            .map_err(|e| Self::io("rename onto", &dst)(e.error))?;
        Ok(())
    }

    fn open_read(
        &self,
        name: &str,
    ) -> Result<std::sync::Arc<dyn crate::readat::ReadAt>, PublishError> {
        let path = self.path(name)?;
        let f = std::fs::File::open(&path).map_err(Self::io("open", &path))?;
        Ok(std::sync::Arc::new(f))
    }

    fn delete(&self, name: &str) -> Result<(), PublishError> {
        let path = self.file_of(name)?;
        let _ = std::fs::remove_file(Self::meta_path(&path));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Self::io("remove", &path)(e));
            }
            _ => {}
        }
        if path.file_name().is_some_and(|f| f == SELF)
            && let Some(dir) = path.parent()
        {
            // Gone with its marker when nothing else is in it; kept (quietly) otherwise.
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }

    fn put_marker(&self, name: &str) -> Result<(), PublishError> {
        let dir = self.path(name)?;
        std::fs::create_dir_all(&dir).map_err(Self::io("create", &dir))?;
        Self::put_bytes_at(&dir.join(SELF), b"", true).map(|_| ())
    }

    fn create_only_is_atomic(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_in_chain(err: &PublishError) -> Option<&std::io::Error> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return Some(io);
            }
            cur = e.source();
        }
        None
    }

    #[test]
    fn a_failed_write_keeps_its_io_error_in_the_source_chain_and_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        // The site's root is a file: no directory can be made under it.
        let root = dir.path().join("not-a-directory");
        std::fs::write(&root, b"").unwrap();
        let site = LocalSite::new(root.clone()).unwrap();
        let err = site
            .put_bytes("scope/current.json", b"{}", "application/json", false)
            .unwrap_err();
        let io = io_in_chain(&err).expect("the io::Error stays the source");
        assert_eq!(io.kind(), std::io::ErrorKind::NotADirectory, "{err}");
        assert!(
            err.to_string()
                .contains(&root.join("scope").display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn an_object_name_that_would_leave_the_site_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let site = LocalSite::new(dir.path().to_path_buf()).unwrap();
        let err = site.get("scope/../../etc/passwd").unwrap_err();
        assert!(
            matches!(&err, PublishError::InvalidName { name } if name == "scope/../../etc/passwd"),
            "{err}"
        );
    }
}
