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

use std::fs::{self, File, OpenOptions};
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
        tokio::task::spawn_blocking(work).await.map_err(|e| StoreError::Transient {
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
        && version_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(StoreError::Permanent { operation: op.name(), detail: format!("invalid version id {version_id:?}") })
    }
}

fn io_error(op: StoreOp, path: &Path, error: io::Error) -> StoreError {
    StoreError::Transient { operation: op.name(), detail: format!("{}: {error}", path.display()) }
}

fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `contents` to `path` through a temporary file in the same directory and a rename.
fn write_atomically(path: &Path, contents: &str) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&temp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
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

    fn read_current(&self) -> io::Result<Option<StoredVersion>> {
        let Some(id) = read_optional(&self.current())? else { return Ok(None) };
        let id = id.trim().to_owned();
        self.read_version(&id)
    }

    fn read_version(&self, version_id: &str) -> io::Result<Option<StoredVersion>> {
        Ok(read_optional(&self.version(version_id))?
            .map(|value| StoredVersion { version_id: version_id.to_owned(), value: SecretString::from(value) }))
    }

    /// Takes the secret's exclusive lock (blocking); released when the file is dropped.
    fn lock(&self) -> io::Result<File> {
        fs::create_dir_all(self.dir.join("versions"))?;
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(self.dir.join("lock"))?;
        file.lock()?;
        Ok(file)
    }
}

#[async_trait]
impl SecretStore for FileStore {
    async fn read_current(&self, secret_id: &str) -> Result<Option<StoredVersion>, StoreError> {
        let files = SecretFiles { dir: self.secret_dir(secret_id) };
        self.blocking(StoreOp::ReadCurrent, move || {
            files.read_current().map_err(|e| io_error(StoreOp::ReadCurrent, &files.dir, e))
        })
        .await
    }

    async fn read_version(&self, secret_id: &str, version_id: &str) -> Result<Option<StoredVersion>, StoreError> {
        check_version_id(StoreOp::ReadVersion, version_id)?;
        let files = SecretFiles { dir: self.secret_dir(secret_id) };
        let version_id = version_id.to_owned();
        self.blocking(StoreOp::ReadVersion, move || {
            files.read_version(&version_id).map_err(|e| io_error(StoreOp::ReadVersion, &files.dir, e))
        })
        .await
    }

    async fn put_version(&self, secret_id: &str, version_id: &str, value: &SecretString) -> Result<PutOutcome, StoreError> {
        check_version_id(StoreOp::Put, version_id)?;
        let files = SecretFiles { dir: self.secret_dir(secret_id) };
        let version_id = version_id.to_owned();
        let value = value.clone();
        self.blocking(StoreOp::Put, move || {
            let put = || -> io::Result<PutOutcome> {
                let _lock = files.lock()?;
                let path = files.version(&version_id);
                if let Some(existing) = read_optional(&path)? {
                    return Ok(if existing == value.expose_secret() { PutOutcome::AlreadyExists } else { PutOutcome::Conflict });
                }
                write_atomically(&path, value.expose_secret())?;
                if read_optional(&files.current())?.is_none() {
                    write_atomically(&files.current(), &version_id)?;
                }
                Ok(PutOutcome::Created)
            };
            put().map_err(|e| io_error(StoreOp::Put, &files.dir, e))
        })
        .await
    }

    async fn swap_current(&self, secret_id: &str, from: &str, to: &str) -> Result<SwapOutcome, StoreError> {
        check_version_id(StoreOp::Swap, to)?;
        let files = SecretFiles { dir: self.secret_dir(secret_id) };
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
