//! The file store after a crash mid-write, and the privacy of what it writes (issue 11, finding 6).

use std::fs;
use std::path::Path;

use keap_relay::store::file::FileStore;
use keap_relay::store::{PutOutcome, SecretStore, SwapOutcome};
use keap_relay::{ExposeSecret, SecretString};
use test_support::temp::TempDir;

/// Secret ids that need no encoding, so the tests can lay out their directories by hand.
const ID: &str = "token";
const OTHER: &str = "other-token";

fn secret(text: &str) -> SecretString {
    SecretString::from(text.to_owned())
}

/// What a crash between the first version file and `current` left behind: a version file,
/// a stray temporary file, and no `current`.
fn crashed_first_write(root: &Path, secret_id: &str, version_id: &str, value: &str) {
    let versions = root.join(secret_id).join("versions");
    fs::create_dir_all(&versions).unwrap();
    fs::write(versions.join(version_id), value).unwrap();
    fs::write(versions.join(".tmp-left-over"), "partial").unwrap();
    fs::write(root.join(secret_id).join("lock"), "").unwrap();
}

/// A file store in a fresh directory where a first write of `ID` crashed (`crashed_first_write`).
fn store_after_a_crashed_first_write(value: &str) -> (TempDir, FileStore) {
    let dir = TempDir::new("recovery");
    crashed_first_write(dir.path(), ID, "v-1", value);
    let store = FileStore::new(dir.path());
    (dir, store)
}

async fn current(store: &FileStore) -> Option<(String, String)> {
    current_of(store, ID).await
}

async fn current_of(store: &FileStore, secret_id: &str) -> Option<(String, String)> {
    let version = store.read_current(secret_id).await.unwrap()?;
    Some((version.version_id, version.value.expose_secret().to_owned()))
}

#[tokio::test]
async fn a_first_write_after_a_crash_before_current_replaces_the_debris_and_becomes_current() {
    let (dir, store) = store_after_a_crashed_first_write("authorization lost in the crash");
    assert_eq!(current(&store).await, None, "nothing was ever current");

    assert_eq!(
        store
            .put_version(ID, "v-1", &secret("new authorization"))
            .await
            .unwrap(),
        PutOutcome::Created
    );
    assert_eq!(current(&store).await, Some(("v-1".into(), "new authorization".into())));
    let version = store.read_version(ID, "v-1").await.unwrap().unwrap();
    assert_eq!(version.value.expose_secret(), "new authorization");

    // Once current exists, the usual rules hold again.
    assert_eq!(
        store.put_version(ID, "v-1", &secret("yet another")).await.unwrap(),
        PutOutcome::Conflict
    );
    assert_eq!(
        store
            .put_version(ID, "v-1", &secret("new authorization"))
            .await
            .unwrap(),
        PutOutcome::AlreadyExists
    );
    assert_eq!(
        store.put_version(ID, "v-2", &secret("two")).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        current(&store).await,
        Some(("v-1".into(), "new authorization".into())),
        "a put never moves current"
    );
    assert_eq!(
        store.swap_current(ID, "v-1", "v-2").await.unwrap(),
        SwapOutcome::Swapped
    );
    assert_eq!(current(&store).await, Some(("v-2".into(), "two".into())));

    // A first write of another version id over the debris becomes current as well.
    crashed_first_write(dir.path(), OTHER, "v-1", "debris");
    assert_eq!(
        store.put_version(OTHER, "v-9", &secret("nine")).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(current_of(&store, OTHER).await, Some(("v-9".into(), "nine".into())));
}

#[tokio::test]
async fn a_retried_first_write_with_the_same_value_after_a_crash_becomes_current() {
    let (_dir, store) = store_after_a_crashed_first_write("one");
    assert_eq!(
        store.put_version(ID, "v-1", &secret("one")).await.unwrap(),
        PutOutcome::AlreadyExists
    );
    assert_eq!(current(&store).await, Some(("v-1".into(), "one".into())));
}

#[tokio::test]
async fn a_current_naming_a_missing_version_counts_as_no_current() {
    let (temp, store) = store_after_a_crashed_first_write("debris");
    let dir = temp.path();
    fs::write(dir.join(ID).join("current"), "v-gone").unwrap();
    assert_eq!(current(&store).await, None);

    assert_eq!(
        store.put_version(ID, "v-1", &secret("one")).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(current(&store).await, Some(("v-1".into(), "one".into())));
    assert_eq!(
        store.put_version(ID, "v-2", &secret("two")).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        current(&store).await,
        Some(("v-1".into(), "one".into())),
        "a put never moves current"
    );

    // A put of the very version that `current` names, but that never reached the disk.
    fs::create_dir_all(dir.join(OTHER).join("versions")).unwrap();
    fs::write(dir.join(OTHER).join("current"), "v-1\n").unwrap();
    assert_eq!(
        store.put_version(OTHER, "v-1", &secret("one")).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(current_of(&store, OTHER).await, Some(("v-1".into(), "one".into())));
}

#[cfg(unix)]
#[tokio::test]
async fn files_are_private_to_the_owner() {
    use std::os::unix::fs::PermissionsExt;

    let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let dir = TempDir::new("recovery");
    let root = dir.path().join("store"); // created by the store
    let store = FileStore::new(&root);
    assert_eq!(
        store.put_version(ID, "v-1", &secret("one")).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        store.put_version(ID, "v-2", &secret("two")).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        store.swap_current(ID, "v-1", "v-2").await.unwrap(),
        SwapOutcome::Swapped
    );

    let secret_dir = root.join(ID);
    for path in [root.clone(), secret_dir.clone(), secret_dir.join("versions")] {
        assert_eq!(mode(&path), 0o700, "{}", path.display());
    }
    for path in [
        secret_dir.join("versions/v-1"),
        secret_dir.join("versions/v-2"),
        secret_dir.join("current"),
        secret_dir.join("lock"),
    ] {
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
}
