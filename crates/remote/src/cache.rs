//! Local copies of remote objects, each named by its URL and version.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use crate::{Error, Object};

/// A directory of local copies of remote objects.
///
/// A copy is named by its object's URL and version (a strong ETag, else
/// `Last-Modified`, and the size), so a name always holds the same bytes:
/// an object replaced remotely has another name, and its old copy is
/// never used. A copy is written under a temporary name, synced, and
/// renamed once whole, with `<name>.meta` beside it recording the URL,
/// ETag, `Last-Modified` and size; a copy is used only when both are
/// there, the record is the one expected and the size is the object's. A
/// partial copy (a failed fetch, a crash) keeps its temporary name and is
/// never used. Objects without a version (neither a strong ETag nor
/// `Last-Modified`) are not kept: nothing would show them replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The bytes one fetching thread asks for, and holds, at a time.
    pub const FETCH_CHUNK: u64 = 8 << 20;

    /// Copies kept in `dir` (created when first written to).
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The name of `object`'s copy and the record beside it, or `None`
    /// when it has no version to tell its copies apart.
    fn entry(&self, object: &Object) -> Option<(PathBuf, String)> {
        let v = object.version();
        let etag = v.etag.as_deref().filter(|e| !e.starts_with("W/"));
        if etag.is_none() && v.last_modified.is_none() {
            return None;
        }
        let url = object.location().to_string();
        // The same bucket and key through two endpoints are two objects.
        let from = object.request_url();
        let record = format!(
            "url={url}\nfrom={from}\netag={}\nlast-modified={}\nsize={}\n",
            etag.unwrap_or(""),
            v.last_modified.as_deref().unwrap_or(""),
            v.size
        );
        let base = url
            .rsplit('/')
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
            .take(64)
            .collect::<String>();
        let name = format!(
            "{}-{}-{base}",
            digest(from.as_bytes()),
            digest(record.as_bytes())
        );
        Some((self.dir.join(name), record))
    }

    /// The copy of `object` at the version opened, when the cache holds a
    /// whole one: open, its record and size checked.
    pub fn find(&self, object: &Object) -> Option<File> {
        let (path, record) = self.entry(object)?;
        let mut found = String::new();
        File::open(meta_path(&path))
            .ok()?
            .take(64 << 10)
            .read_to_string(&mut found)
            .ok()?;
        if found != record {
            return None;
        }
        let file = File::open(&path).ok()?;
        (file.metadata().ok()?.len() == object.size()).then_some(file)
    }

    /// A local copy of each object at the version opened: found in the
    /// cache, or fetched whole into it (ranged reads of 8 MiB on `threads`
    /// threads, each checked against that version) and then opened.
    /// `None` for an object without a version. Copies of other versions
    /// of the same URLs are removed.
    pub fn fill(
        &self,
        objects: &[Arc<Object>],
        threads: usize,
    ) -> Result<Vec<Option<File>>, Error> {
        let mut out: Vec<Option<File>> = Vec::with_capacity(objects.len());
        let mut missing = Vec::new();
        for (i, o) in objects.iter().enumerate() {
            out.push(self.find(o));
            if out[i].is_none() && self.entry(o).is_some() {
                missing.push(i);
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| self.failed(&self.dir, e))?;
        let mut parts = Vec::with_capacity(missing.len());
        for &i in &missing {
            let (path, _) = self.entry(&objects[i]).expect("versioned");
            let temp = temp_path(&path);
            match File::create_new(&temp) {
                Ok(f) => parts.push((i, path, temp, f)),
                Err(e) => {
                    remove_all(parts.iter().map(|p| &p.2));
                    return Err(self.failed(&temp, e));
                }
            }
        }
        let fetched = self.fetch(objects, &parts, threads);
        let finished = fetched.and_then(|()| {
            for (i, path, temp, file) in &parts {
                let (_, record) = self.entry(&objects[*i]).expect("versioned");
                file.sync_all().map_err(|e| self.failed(temp, e))?;
                write_synced(&meta_path(path), record.as_bytes())
                    .map_err(|e| self.failed(&meta_path(path), e))?;
                std::fs::rename(temp, path).map_err(|e| self.failed(path, e))?;
            }
            Ok(())
        });
        if let Err(e) = finished {
            remove_all(parts.iter().map(|p| &p.2));
            return Err(e);
        }
        for (i, path, ..) in parts {
            self.remove_others(&path);
            out[i] = Some(File::open(&path).map_err(|e| self.failed(&path, e))?);
        }
        Ok(out)
    }

    /// Read every object of `parts` whole into its file, `threads` ranges
    /// at a time; the first error stops the others.
    fn fetch(
        &self,
        objects: &[Arc<Object>],
        parts: &[(usize, PathBuf, PathBuf, File)],
        threads: usize,
    ) -> Result<(), Error> {
        let jobs: Vec<(usize, u64)> = parts
            .iter()
            .enumerate()
            .flat_map(|(p, (i, ..))| {
                (0..objects[*i].size().div_ceil(Self::FETCH_CHUNK))
                    .map(move |c| (p, c * Self::FETCH_CHUNK))
            })
            .collect();
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let first: Mutex<Option<Error>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..threads.clamp(1, 64).min(jobs.len()) {
                s.spawn(|| {
                    let mut buf = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let Some(&(p, offset)) = jobs.get(next.fetch_add(1, Ordering::Relaxed))
                        else {
                            return;
                        };
                        let (i, _, temp, file) = &parts[p];
                        let object = &objects[*i];
                        let len = (object.size() - offset).min(Self::FETCH_CHUNK) as usize;
                        buf.resize(len, 0);
                        let done = match object.read_at(&mut buf, offset) {
                            Ok(n) if n == len => file
                                .write_all_at(&buf, offset)
                                .map_err(|e| self.failed(temp, e)),
                            Ok(n) => Err(Error::Changed {
                                url: object.location().to_string(),
                                what: if n < len { "size" } else { "length" },
                            }),
                            Err(e) => Err(e),
                        };
                        if let Err(e) = done {
                            stop.store(true, Ordering::Relaxed);
                            first
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                            return;
                        }
                    }
                });
            }
        });
        match first.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Remove the copies of other versions of the object copied at `path`
    /// (temporary files of fetches under way are left alone).
    fn remove_others(&self, path: &Path) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        let url_part = &name[..name.find('-').map_or(0, |i| i + 1)];
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let other = e.file_name();
            let Some(other) = other.to_str() else {
                continue;
            };
            let ours = other == name || other == format!("{name}.meta");
            if other.starts_with(url_part) && !ours && !other.contains(".part-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    fn failed(&self, path: &Path, source: io::Error) -> Error {
        Error::Cache {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn meta_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".meta");
    PathBuf::from(p)
}

/// A name of its own beside `path`, for a copy being written.
fn temp_path(path: &Path) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut p = path.as_os_str().to_owned();
    p.push(format!(
        ".part-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    PathBuf::from(p)
}

/// Write `path` whole and synced, by a rename, so a reader never sees part
/// of it.
fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = temp_path(path);
    let written = File::create_new(&temp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&temp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}

fn remove_all<'a>(paths: impl Iterator<Item = &'a PathBuf>) {
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}
