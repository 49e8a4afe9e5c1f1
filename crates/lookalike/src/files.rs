//! Files the way a service must treat them: reads that only take regular files and stop at a size
//! cap (a catalogue may name `/dev/zero` or a FIFO), and writes that are whole or absent.

use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::Path;

use anyhow::{Context, Result};

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a regular file")]
    NotRegular,
    #[error("file is larger than {limit} bytes")]
    TooLarge { limit: u64 },
}

/// Reads `path` whole if it is a regular file of at most `limit` bytes. Opening never blocks (a
/// FIFO with no writer would), and the type is checked on the opened handle, so a file swapped
/// for something else between a check and the open is still refused.
pub fn read_regular_file(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(ReadError::NotRegular);
    }
    if metadata.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    // The file may grow after the check: read one byte past the limit to notice.
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(bytes)
}

/// How long a temporary file of [`write_atomically`] must have been left untouched before it counts
/// as the remains of a killed process: a live writer touches it all the time.
pub const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Deletes the temporary files of [`write_atomically`] in `dir` that a killed process left
/// (untouched for [`ABANDONED_AFTER`]); returns how many. For folders of big, rare writes (the
/// search graph), where each kill would otherwise leave a copy of the file behind.
pub fn sweep_abandoned_writes(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut deleted = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX)) {
            continue;
        }
        let abandoned = entry
            .metadata()
            .ok()
            .filter(std::fs::Metadata::is_file)
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ABANDONED_AFTER);
        if abandoned && std::fs::remove_file(entry.path()).is_ok() {
            deleted += 1;
        }
    }
    deleted
}

/// The folder `path` is in (`.` for a bare file name), where its temporary files go.
pub fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

const TEMP_PREFIX: &str = ".lookalike-";
const TEMP_SUFFIX: &str = ".part";

/// Writes into a new temporary file beside `path` and renames it over `path` once complete and
/// synced, so a crash never leaves a half-written file and concurrent writers never share one.
pub fn write_atomically(path: &Path, write: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<()> {
    let dir = folder_of(path);
    let temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(TEMP_SUFFIX)
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    let (file, temp_path) = temp.into_parts();
    let mut out = BufWriter::new(file);
    write(&mut out)?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    temp_path
        .persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_under_the_cap_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.bin");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_regular_file(&file, 5).unwrap(), b"12345");
        assert!(matches!(
            read_regular_file(&file, 4),
            Err(ReadError::TooLarge { limit: 4 })
        ));
        assert!(matches!(read_regular_file(dir.path(), 10), Err(ReadError::NotRegular)));
        #[cfg(target_os = "linux")]
        assert!(matches!(
            read_regular_file(Path::new("/dev/zero"), 10),
            Err(ReadError::NotRegular)
        ));
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.jpg");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        assert!(matches!(read_regular_file(&fifo, 10), Err(ReadError::NotRegular)));
    }

    #[test]
    fn atomic_writes_replace_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        write_atomically(&path, |out| Ok(std::io::Write::write_all(out, b"one")?)).unwrap();
        write_atomically(&path, |out| Ok(std::io::Write::write_all(out, b"two")?)).unwrap();
        let failed = write_atomically(&path, |_| anyhow::bail!("no"));
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn only_abandoned_temporary_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, age_s: u64| {
            let path = dir.path().join(name);
            let f = File::create(&path).unwrap();
            f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(age_s))
                .unwrap();
            path
        };
        let old = file(".lookalike-abc.part", 2 * ABANDONED_AFTER.as_secs());
        let live = file(".lookalike-def.part", 5);
        let other = file("catalogue.db.index", 2 * ABANDONED_AFTER.as_secs());
        assert_eq!(sweep_abandoned_writes(dir.path()), 1);
        assert!(!old.exists() && live.exists() && other.exists());
    }
}
