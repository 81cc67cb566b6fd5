//! A [`SecretStore`] in a directory, the local default (`KEAP_STORE=file`). Safe across
//! processes:
//!
//! ```text
//! <root>/<secret id, percent-encoded>/versions/<version id>   one immutable file per version
//! <root>/<secret id, percent-encoded>/current                 the id of the current version
//! <root>/<secret id, percent-encoded>/lock                    held (flock) by every put and swap
//! ```
//!
//! Files are written to a temporary name and renamed into place, so a reader sees either the
//! old or the new file, never a partial one. Puts and swaps run under an exclusive OS lock on
//! `lock`, which makes "create if absent" and "move if current is still X" atomic. Reads take
//! no lock: versions never change once written, and `current` is replaced by rename.
//!
//! Durability: file contents are synced before the rename, and the directory after it, so a
//! write that returned survives a crash. Tokens are private: files are created 0600 and
//! directories 0700 (on Unix; other platforms keep their defaults).
//!
//! A crash between a secret's first version file and its `current` file leaves a version file
//! and no `current` (or a `current` naming a version that never made it to disk). Nothing was
//! ever current then, so such version files are debris of an unfinished first write, not
//! versions anyone saw: a put while the secret has no current version replaces a version file
//! with another value and makes it current. While `current` names an existing version, the
//! Secrets Manager rules hold (a version's value never changes, a put never moves `current`).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use super::{PutOutcome, SecretStore, StoreError, StoreOp, StoredVersion, SwapOutcome};

#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Version ids of a secret (unordered); for tests and benches.
    pub fn version_ids(&self, secret_id: &str) -> Result<Vec<String>, StoreError> {
        let dir = self.secret_dir(secret_id).join("versions");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(StoreOp::ReadVersion, &dir, e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let name = entry.map_err(|e| io_error(StoreOp::ReadVersion, &dir, e))?.file_name();
            let name = name.to_string_lossy();
            if !name.starts_with('.') {
                ids.push(name.into_owned());
            }
        }
        Ok(ids)
    }

    fn secret_dir(&self, secret_id: &str) -> PathBuf {
        self.root.join(encode_secret_id(secret_id))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: StoreOp,
        work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| StoreError::Transient {
                operation: op.name(),
                detail: format!("file store worker failed: {e}"),
            })?
    }
}

/// Secret ids may hold `/` (as in `keap-relay/token`): keep `[A-Za-z0-9._-]`, percent-encode
/// everything else, and never produce `.` or `..`.
fn encode_secret_id(secret_id: &str) -> String {
    let mut encoded = String::with_capacity(secret_id.len());
    for byte in secret_id.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' || (byte == b'.' && !encoded.is_empty()) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Version ids become file names: the Secrets Manager alphabet for tokens we use (UUIDs).
fn check_version_id(op: StoreOp, version_id: &str) -> Result<(), StoreError> {
    let valid = !version_id.is_empty()
        && version_id.len() <= 64
        && version_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(StoreError::Permanent {
            operation: op.name(),
            detail: format!("invalid version id {version_id:?}"),
        })
    }
}

fn io_error(op: StoreOp, path: &Path, error: io::Error) -> StoreError {
    StoreError::Transient {
        operation: op.name(),
        detail: format!("{}: {error}", path.display()),
    }
}

fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Options for a file only the owner may read or write (0600 on Unix).
fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Creates `path` and any missing parents, each 0700 on Unix, and syncs the parent of every
/// directory it creates so that the new entries survive a crash.
fn create_private_dirs(path: &Path) -> io::Result<()> {
    if path.as_os_str().is_empty() || path.is_dir() {
        return Ok(());
    }
    let parent = path.parent().filter(|parent| !parent.as_os_str().is_empty());
    if let Some(parent) = parent {
        create_private_dirs(parent)?;
    }
    let mut builder = DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(path) {
        Ok(()) => sync_dir(parent.unwrap_or(Path::new("."))),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes the entries of `dir` (a rename into it, a new subdirectory) durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened as files everywhere; elsewhere the rename is left to the OS.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Writes `contents` to `path` through a temporary file in the same directory, a rename and a
/// sync of the directory (without it a crash after the return could still lose the rename).
fn write_atomically(path: &Path, contents: &str) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    let result = (|| {
        let mut file = private_file().write(true).create_new(true).open(&temp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result?;
    sync_dir(dir)
}

/// Paths of one secret; every method runs on a blocking thread.
struct SecretFiles {
    dir: PathBuf,
}

impl SecretFiles {
    fn current(&self) -> PathBuf {
        self.dir.join("current")
    }

    fn version(&self, version_id: &str) -> PathBuf {
        self.dir.join("versions").join(version_id)
    }

    /// The current version; `None` also when `current` names a version file that is missing.
    fn read_current(&self) -> io::Result<Option<StoredVersion>> {
        let Some(id) = read_optional(&self.current())? else {
            return Ok(None);
        };
        let id = id.trim().to_owned();
        self.read_version(&id)
    }

    /// Whether `current` names a version that exists (see the module docs on an unfinished
    /// first write).
    fn has_current(&self) -> io::Result<bool> {
        let Some(id) = read_optional(&self.current())? else {
            return Ok(false);
        };
        let id = id.trim();
        Ok(check_version_id(StoreOp::ReadCurrent, id).is_ok() && self.version(id).is_file())
    }

    fn read_version(&self, version_id: &str) -> io::Result<Option<StoredVersion>> {
        Ok(read_optional(&self.version(version_id))?.map(|value| StoredVersion {
            version_id: version_id.to_owned(),
            value: SecretString::from(value),
        }))
    }

    /// Takes the secret's exclusive lock (blocking); released when the file is dropped.
    fn lock(&self) -> io::Result<File> {
        create_private_dirs(&self.dir.join("versions"))?;
        let file = private_file()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.dir.join("lock"))?;
        file.lock()?;
        Ok(file)
    }
}

#[async_trait]
impl SecretStore for FileStore {
    async fn read_current(&self, secret_id: &str) -> Result<Option<StoredVersion>, StoreError> {
        let files = SecretFiles {
            dir: self.secret_dir(secret_id),
        };
        self.blocking(StoreOp::ReadCurrent, move || {
            files
                .read_current()
                .map_err(|e| io_error(StoreOp::ReadCurrent, &files.dir, e))
        })
        .await
    }

    async fn read_version(&self, secret_id: &str, version_id: &str) -> Result<Option<StoredVersion>, StoreError> {
        check_version_id(StoreOp::ReadVersion, version_id)?;
        let files = SecretFiles {
            dir: self.secret_dir(secret_id),
        };
        let version_id = version_id.to_owned();
        self.blocking(StoreOp::ReadVersion, move || {
            files
                .read_version(&version_id)
                .map_err(|e| io_error(StoreOp::ReadVersion, &files.dir, e))
        })
        .await
    }

    async fn put_version(
        &self,
        secret_id: &str,
        version_id: &str,
        value: &SecretString,
    ) -> Result<PutOutcome, StoreError> {
        check_version_id(StoreOp::Put, version_id)?;
        let files = SecretFiles {
            dir: self.secret_dir(secret_id),
        };
        let version_id = version_id.to_owned();
        let value = value.clone();
        self.blocking(StoreOp::Put, move || {
            let put = || -> io::Result<PutOutcome> {
                let _lock = files.lock()?;
                let path = files.version(&version_id);
                let has_current = files.has_current()?;
                let mut outcome = PutOutcome::Created;
                match read_optional(&path)? {
                    Some(existing) if existing == value.expose_secret() => outcome = PutOutcome::AlreadyExists,
                    Some(_) if has_current => return Ok(PutOutcome::Conflict),
                    // Without a current version, an existing file is debris of a first write
                    // that crashed before `current` (see the module docs): nobody saw it.
                    Some(_) | None => write_atomically(&path, value.expose_secret())?,
                }
                if !has_current {
                    write_atomically(&files.current(), &version_id)?;
                }
                Ok(outcome)
            };
            put().map_err(|e| io_error(StoreOp::Put, &files.dir, e))
        })
        .await
    }

    async fn swap_current(&self, secret_id: &str, from: &str, to: &str) -> Result<SwapOutcome, StoreError> {
        check_version_id(StoreOp::Swap, to)?;
        let files = SecretFiles {
            dir: self.secret_dir(secret_id),
        };
        let (from, to, secret_id) = (from.to_owned(), to.to_owned(), secret_id.to_owned());
        self.blocking(StoreOp::Swap, move || {
            if !files.dir.exists() {
                return Err(StoreError::NotFound { secret_id });
            }
            let swap = || -> io::Result<Result<SwapOutcome, StoreError>> {
                let _lock = files.lock()?;
                if !files.version(&to).exists() {
                    return Ok(Err(StoreError::Permanent {
                        operation: StoreOp::Swap.name(),
                        detail: format!("version {to} does not exist"),
                    }));
                }
                let current = read_optional(&files.current())?;
                if current.as_deref().map(str::trim) != Some(from.as_str()) {
                    return Ok(Ok(SwapOutcome::Stale));
                }
                write_atomically(&files.current(), &to)?;
                Ok(Ok(SwapOutcome::Swapped))
            };
            swap().map_err(|e| io_error(StoreOp::Swap, &files.dir, e))?
        })
        .await
    }
}
