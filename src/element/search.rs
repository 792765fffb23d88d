//! The element search path: directories whose subdirectories are elements.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::ElementError;
use super::reads::Reads;

/// One element: its name and directory.
#[derive(Debug, Clone)]
pub struct ElementDir {
    pub name: String,
    pub dir: PathBuf,
    /// The third-party source (a key of `sources`) it comes from, if any.
    pub source: Option<String>,
    /// What has been read of the search path's elements (one memo for all of them).
    pub reads: Arc<Reads>,
}

impl PartialEq for ElementDir {
    fn eq(&self, other: &Self) -> bool {
        // The memo is what was read, not what the element is.
        (&self.name, &self.dir, &self.source) == (&other.name, &other.dir, &other.source)
    }
}

impl Eq for ElementDir {}

/// One directory of the search path, and the source it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchDir {
    pub dir: PathBuf,
    pub source: Option<String>,
}

impl From<PathBuf> for SearchDir {
    fn from(dir: PathBuf) -> Self {
        Self { dir, source: None }
    }
}

/// Every element visible on a search path; earlier path entries override later ones.
#[derive(Debug, Clone, Default)]
pub struct SearchPath {
    pub dirs: Vec<PathBuf>,
    elements: BTreeMap<String, ElementDir>,
}

impl SearchPath {
    /// Lists the elements of each directory. An element found again in a later directory is
    /// overridden by the earlier one, with a warning naming both (as DIB does).
    pub fn scan(dirs: &[SearchDir], warn: &mut dyn FnMut(&str)) -> Result<Self, ElementError> {
        let mut elements: BTreeMap<String, ElementDir> = BTreeMap::new();
        let mut kept = Vec::new();
        let reads = Arc::new(Reads::default());
        for SearchDir { dir, source } in dirs {
            if !dir.is_dir() {
                return Err(ElementError::InvalidElementDir(dir.display().to_string()));
            }
            let rd =
                std::fs::read_dir(dir).map_err(|e| crate::fsutil::FsError::new("list", dir, e))?;
            let mut entries: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect();
            entries.sort();
            for path in entries {
                // Named by the basename of the real path, so symlinked element dirs resolve.
                let real = path.canonicalize().unwrap_or_else(|_| path.clone());
                let Some(name) = real.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                    continue;
                };
                if name.starts_with('.') {
                    continue;
                }
                if let Some(existing) = elements.get(&name) {
                    if existing.dir != real {
                        warn(&format!(
                            "element `{name}` in {} overrides {}",
                            existing.dir.display(),
                            real.display()
                        ));
                    }
                    continue;
                }
                elements.insert(
                    name.clone(),
                    ElementDir {
                        name,
                        dir: real,
                        source: source.clone(),
                        reads: reads.clone(),
                    },
                );
            }
            kept.push(dir.clone());
        }
        Ok(Self {
            dirs: kept,
            elements,
        })
    }

    pub fn get(&self, name: &str) -> Option<&ElementDir> {
        self.elements.get(name)
    }

    /// All elements, sorted by name.
    pub fn elements(&self) -> impl Iterator<Item = &ElementDir> {
        self.elements.values()
    }

    pub fn names(&self) -> Vec<String> {
        self.elements.keys().cloned().collect()
    }
}
