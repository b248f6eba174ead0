//! The spool's file-system seam: every file operation the spool, its recovery, its cursor and
//! the forwarder's parking make goes through [`Fs`] and [`FsFile`]. [`RealFs`] is the
//! operating system's; the simulator (`spool/sim`, tests only) has one that keeps synced and
//! unsynced bytes apart, crashes, tears writes and injects faults from a seed. The trait is as
//! narrow as the spool's needs, so what the simulator models is exactly what the spool uses.
//!
//! Durability is explicit, as on a real disk: bytes are durable after [`FsFile::sync_data`]
//! (or `sync_all`), and a name (created, renamed, removed) after [`Fs::sync_dir`] of its
//! directory.
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An open file: positional reads and writes, so one handle serves a reader and a writer.
#[allow(clippy::len_without_is_empty)] // a file's length, not a collection's
pub trait FsFile: Send + Sync {
    fn len(&self) -> io::Result<u64>;
    /// Reads at `offset` into `buf`; fewer bytes only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset` (a failure may leave part of it written).
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the file's bytes (and its length) durable.
    fn sync_data(&self) -> io::Result<()>;
    /// `sync_data` and the rest of the file's metadata.
    fn sync_all(&self) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves `len` bytes of zeroes (`fallocate`); best effort, callers go on without it.
    fn allocate(&self, len: u64) -> io::Result<()>;
}

pub trait Fs: Send + Sync + 'static {
    /// Creates `path` for reading and writing; fails with `AlreadyExists` if it exists.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Creates or truncates `path` for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Opens an existing file for reading only (`event-gateway log` on a read-only volume).
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// The entries of `dir` (full paths), in no particular order; `NotFound` if it is absent.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes the names in `dir` durable (entries created, renamed or removed in it).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
    /// Bytes free for this process on the file system holding `dir`.
    fn available(&self, dir: &Path) -> io::Result<u64>;
}

/// Reads `path` whole.
pub fn read_all(fs: &dyn Fs, path: &Path) -> io::Result<Vec<u8>> {
    let file = fs.open_read(path)?;
    let len = file.len()?;
    let mut buf = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
    let mut at = 0;
    while at < buf.len() {
        match file.read_at(&mut buf[at..], at as u64)? {
            0 => break,
            n => at += n,
        }
    }
    buf.truncate(at);
    Ok(buf)
}

/// Creates `dir` if it is absent, and makes its name durable in its parent: every time, since
/// a directory that exists may be one an earlier call made and could not sync (found by the
/// simulator, SEED=18335). Called where a durable write follows, which is rare.
pub fn ensure_dir(fs: &dyn Fs, dir: &Path) -> io::Result<()> {
    fs.create_dir_all(dir)?;
    match dir.parent() {
        // A relative path's parent may be empty: the working directory.
        Some(parent) if parent.as_os_str().is_empty() => fs.sync_dir(Path::new(".")),
        Some(parent) => fs.sync_dir(parent),
        None => Ok(()),
    }
}

/// Writes `bytes` to `path` (created or replaced in place), makes them and the name durable
/// (the directory's own name too, when this created it).
pub fn write_synced(fs: &dyn Fs, dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    ensure_dir(fs, dir)?;
    let file = fs.create(path)?;
    file.write_all_at(bytes, 0)?;
    file.sync_all()?;
    fs.sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default `storage.data_dir` is relative (`data`): its parent is the working
    /// directory, named by an empty path.
    #[test]
    fn a_relative_directory_is_made_and_synced() {
        let dir = tempfile::tempdir().unwrap();
        let back = std::env::current_dir().unwrap();
        std::env::set_current_dir(dir.path()).unwrap();
        let made = ensure_dir(&RealFs, Path::new("data"));
        std::env::set_current_dir(back).unwrap();
        made.unwrap();
        assert!(dir.path().join("data").is_dir());
    }
}

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl RealFs {
    pub fn shared() -> Arc<dyn Fs> {
        Arc::new(RealFs)
    }
}

struct RealFile(File);

impl FsFile for RealFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        // `read_exact_at` would fail at the end of the file; a loop keeps short reads there.
        let mut n = 0;
        while n < buf.len() {
            match self.0.read_at(&mut buf[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        rustix::fs::fallocate(&self.0, rustix::fs::FallocateFlags::empty(), 0, len)
            .map_err(io::Error::from)
    }
}

impl Fs for RealFs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let f = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Box::new(RealFile(f)))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Box::new(RealFile(f)))
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(RealFile(f)))
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(RealFile(File::open(path)?)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect()
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn available(&self, dir: &Path) -> io::Result<u64> {
        let st = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }
}
