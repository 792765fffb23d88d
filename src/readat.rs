//! A read-only, random-access byte source ([`ReadAt`]): what `ccb inspect` reads images
//! through (a file, an HTTP object, a partition of either) and what the fetcher hashes a
//! ranged download from. Below both, so neither depends on the other.

/// A read-only, random-access byte source. `&self` so that one source can be shared by the
/// layers above it (implementations keep their caches behind a lock).
pub trait ReadAt: Send + Sync {
    /// The size in bytes.
    fn size(&self) -> u64;
    /// Fills all of `buf` from `offset`. A read that extends past [`ReadAt::size`] is an
    /// error (`UnexpectedEof`), never a short read.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
    /// Bytes fetched over the network so far, for a source that reads through it.
    fn fetched_bytes(&self) -> Option<u64> {
        None
    }
}

impl ReadAt for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > ReadAt::size(self))
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("read of {} bytes at {offset} is past the end", buf.len()),
            ));
        }
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for std::sync::Arc<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        (**self).read_at(offset, buf)
    }

    fn fetched_bytes(&self) -> Option<u64> {
        (**self).fetched_bytes()
    }
}

/// A window of another source: a partition of a disk.
pub struct Slice<S> {
    pub inner: S,
    pub offset: u64,
    pub len: u64,
}

impl<S: ReadAt> ReadAt for Slice<S> {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} is past the end of a {}-byte slice",
                    buf.len(),
                    self.len
                ),
            ));
        }
        self.inner.read_at(self.offset + offset, buf)
    }
}
