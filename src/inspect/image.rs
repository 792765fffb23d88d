//! The virtual disk of an image file: raw as it is, qcow2 through [`Qcow2`] with its backing
//! chain.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ReadAt;
use super::qcow2::{self, Qcow2, Qcow2Error};

/// The container format of an image file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ImageError {
    #[error("cannot open image {}: {source}", path.display())]
    #[diagnostic(code(ccb::image::open))]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {}: {source}", path.display())]
    #[diagnostic(code(ccb::image::qcow2))]
    Qcow2File {
        path: PathBuf,
        #[source]
        source: Qcow2Error,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Qcow2(#[from] Qcow2Error),
}

/// What `src` holds, judged by its first bytes: anything that is not qcow2 is raw, as QEMU
/// would take it among the formats ccb reads.
pub fn detect(src: &dyn ReadAt) -> Format {
    if qcow2::has_magic(src) {
        Format::Qcow2
    } else {
        Format::Raw
    }
}

/// Opens the image file at `path` read-only as its virtual disk. Backing files of a qcow2
/// image are opened relative to the image's directory, as QEMU does.
pub fn open_path(path: &Path) -> Result<Arc<dyn ReadAt>, ImageError> {
    // Only regular files: opening a FIFO would wait for a writer forever.
    let file = crate::fsutil::open_regular(path).map_err(|source| ImageError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let resolve = move |name: &str| -> Result<Arc<dyn ReadAt>, Qcow2Error> {
        let backing = dir.join(name);
        let file =
            crate::fsutil::open_regular(&backing).map_err(|source| Qcow2Error::BackingOpen {
                name: backing.display().to_string(),
                source,
            })?;
        Ok(Arc::new(file))
    };
    open_source(Arc::new(file), &resolve).map_err(|e| match e {
        ImageError::Qcow2(source) => ImageError::Qcow2File {
            path: path.to_path_buf(),
            source,
        },
        other => other,
    })
}

/// Opens an image from any byte source (an HTTP object, say) as its virtual disk;
/// `resolve_backing` opens backing files by their names relative to the image.
pub fn open_source(
    src: Arc<dyn ReadAt>,
    resolve_backing: qcow2::ResolveBacking<'_>,
) -> Result<Arc<dyn ReadAt>, ImageError> {
    match detect(&*src) {
        Format::Raw => Ok(src),
        Format::Qcow2 => Ok(Arc::new(Qcow2::open(src, resolve_backing)?)),
    }
}
