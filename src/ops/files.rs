//! `inspect ls` and `inspect cat`: a directory or a file of an image, read from the image's
//! file system without mounting it (like virt-ls and virt-cat).

use base64::Engine;
use serde::Serialize;

use super::CommandError;
use crate::inspect::fs::{FileKind, Filesystem};

/// A path inside an image (made absolute: `etc` is `/etc`).
#[derive(Debug, Clone)]
pub struct FileRequest {
    /// An image file or a target (see [`super::inspect::open_file`] and
    /// [`super::inspect::open_one`]).
    pub image: String,
    pub path: String,
}

impl FileRequest {
    pub fn absolute_path(&self) -> String {
        if self.path.starts_with('/') {
            self.path.clone()
        } else {
            format!("/{}", self.path)
        }
    }
}

/// One entry of a directory listing. The metadata is absent when the entry cannot be read
/// (a damaged inode): the listing goes on.
#[derive(Debug, Clone, Serialize)]
pub struct LsEntry {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<FileKind>,
    /// Permission bits with setuid, setgid and sticky.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// A symlink's target, as stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LsReport {
    pub version: u32,
    pub image: String,
    pub path: String,
    /// By name.
    pub entries: Vec<LsEntry>,
}

/// Lists a directory of an image, sorted by name.
pub fn ls(fs: &dyn Filesystem, req: &FileRequest) -> Result<LsReport, CommandError> {
    let path = req.absolute_path();
    let mut names = fs.read_dir(&path).map_err(CommandError::from_diag)?;
    names.sort_by(|x, y| x.name.cmp(&y.name));
    let entries = names
        .into_iter()
        .map(|e| {
            let child = format!("{}/{}", path.trim_end_matches('/'), e.name);
            let meta = fs.symlink_metadata(&child).ok();
            let link = meta
                .as_ref()
                .filter(|m| m.kind == FileKind::Symlink)
                .and_then(|_| fs.read_link(&child).ok());
            LsEntry {
                name: e.name,
                kind: meta.as_ref().map(|m| m.kind),
                mode: meta.as_ref().map(|m| m.mode),
                uid: meta.as_ref().map(|m| m.uid),
                gid: meta.as_ref().map(|m| m.gid),
                size: meta.as_ref().map(|m| m.size),
                link,
            }
        })
        .collect();
    Ok(LsReport {
        version: 1,
        image: req.image.clone(),
        path,
        entries,
    })
}

/// A file of an image: its bytes, and in JSON its text (UTF-8) or else its base64.
#[derive(Debug, Clone, Serialize)]
pub struct CatReport {
    pub version: u32,
    pub image: String,
    pub path: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    #[serde(skip)]
    pub data: Vec<u8>,
}

/// Reads a file of an image (following symlinks inside it).
pub fn cat(fs: &dyn Filesystem, req: &FileRequest) -> Result<CatReport, CommandError> {
    let path = req.absolute_path();
    let data = fs.read(&path).map_err(CommandError::from_diag)?;
    let text = std::str::from_utf8(&data).ok().map(str::to_string);
    let base64 = text
        .is_none()
        .then(|| base64::engine::general_purpose::STANDARD.encode(&data));
    Ok(CatReport {
        version: 1,
        image: req.image.clone(),
        path,
        size: data.len() as u64,
        text,
        base64,
        data,
    })
}
