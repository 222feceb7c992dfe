//! Key files: the ed25519 keys that sign transactions, and the node's
//! libp2p identity kept in its data dir.
//!
//! Both kinds use the one key-file format of [`trainer::keyfile`] (64 hex
//! characters of a 32-byte seed, created with mode 0600 on Unix, seeds from
//! the operating system's random number generator, wiped after use); this
//! module only adds where the node keeps its own keys.
//!
//! Access rules on Unix:
//! - a key file the user names (`--key`, `--audit-key`, `address --key`)
//!   is refused if group or others may access it, and the error gives the
//!   `chmod 600` that fixes it: the node never changes the mode of a file
//!   it was merely pointed at;
//! - the node's own keys in its data dir ([`NODE_KEY_FILE`],
//!   [`MINER_KEY_FILE`]), which the node created itself, are tightened to
//!   0600 on start with an info log if an older version left them open to
//!   group or others.
//!
//! This module must never log or print a secret.

use std::fs;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use protocol::Address;
pub use trainer::keyfile::KeyFileError;
use zeroize::Zeroizing;

/// File name of the libp2p identity inside the data dir.
pub const NODE_KEY_FILE: &str = "node_key";
/// File name of the key a node mines to when `--mine` has no address.
pub const MINER_KEY_FILE: &str = "miner_key";

/// Why a key could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file itself: unreadable, malformed, open to others, or in
    /// the way of a new one.
    #[error(transparent)]
    File(#[from] KeyFileError),
    /// The data dir that holds the node's own keys could not be created.
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        /// The data dir.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// One of the node's own key files is open to group or others and its
    /// mode could not be restricted.
    #[error(
        "key file {path} is open to group or others (mode {mode:04o}) and could not be \
         restricted to its owner: {source}; run: chmod 600 {path}"
    )]
    Tighten {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The error.
        source: std::io::Error,
    },
    /// libp2p refused the seed.
    #[error("libp2p identity: {0}")]
    Identity(String),
}

/// Reads a 32-byte seed from a key file the user named, refusing one open
/// to group or others.
pub fn read_seed(path: &Path) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    Ok(trainer::keyfile::read_seed(path)?)
}

/// Writes a seed to a new key file (mode 0600 on Unix, never overwriting).
pub fn write_seed(path: &Path, seed: &[u8; 32]) -> Result<(), KeyError> {
    Ok(trainer::keyfile::write_new(path, seed)?)
}

/// A fresh seed from the operating system's random number generator.
pub fn random_seed() -> Result<Zeroizing<[u8; 32]>, KeyError> {
    Ok(trainer::keyfile::generate()?)
}

/// Creates a new signing key file and returns its address.
pub fn keygen(path: &Path) -> Result<Address, KeyError> {
    let seed = random_seed()?;
    write_seed(path, &seed)?;
    Ok(Address::from_verifying_key(
        &SigningKey::from_bytes(&seed).verifying_key(),
    ))
}

/// Loads a signing key file the user named, refusing one open to group or
/// others.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    Ok(trainer::keyfile::read(path)?)
}

/// Restricts one of the node's own key files to its owner (0600) if an
/// older version left it open to group or others. Only for files the node
/// created in its own data dir; user-named files are refused instead.
#[cfg(unix)]
fn tighten_own_key(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt as _;
    let metadata = fs::metadata(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & trainer::keyfile::GROUP_OTHER_BITS == 0 {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|source| {
        KeyError::Tighten {
            path: path.to_owned(),
            mode,
            source,
        }
    })?;
    tracing::info!(
        path = %path.display(),
        was = %format_args!("{mode:04o}"),
        "key file was open to group or others; restricted it to its owner (0600)"
    );
    Ok(())
}

/// File modes do not exist off Unix.
#[cfg(not(unix))]
fn tighten_own_key(_path: &Path) -> Result<(), KeyError> {
    Ok(())
}

/// The seed of one of the node's own key files in its data dir, created on
/// first use and tightened to 0600 if it is open to group or others.
fn own_seed(data_dir: &Path, name: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    fs::create_dir_all(data_dir).map_err(|source| KeyError::DataDir {
        path: data_dir.to_owned(),
        source,
    })?;
    let path = data_dir.join(name);
    if path.exists() {
        tighten_own_key(&path)?;
        return read_seed(&path);
    }
    let seed = random_seed()?;
    match write_seed(&path, &seed) {
        Ok(()) => Ok(seed),
        // Created by someone else since the check: use theirs.
        Err(KeyError::File(KeyFileError::Exists(_))) => {
            tighten_own_key(&path)?;
            read_seed(&path)
        }
        Err(e) => Err(e),
    }
}

/// Loads the node's libp2p identity from the data dir, creating it on first
/// start so the peer id stays the same across restarts.
pub fn node_identity(data_dir: &Path) -> Result<libp2p::identity::Keypair, KeyError> {
    let mut seed = own_seed(data_dir, NODE_KEY_FILE)?;
    // libp2p wipes the bytes it is given; `seed` wipes itself on drop too.
    libp2p::identity::Keypair::ed25519_from_bytes(seed.as_mut_slice())
        .map_err(|e| KeyError::Identity(e.to_string()))
}

/// The address of the miner key in the data dir, created on first use, for
/// `--mine` without `--miner-address`.
pub fn default_miner_address(data_dir: &Path) -> Result<Address, KeyError> {
    let key = default_miner_key(data_dir)?;
    Ok(Address::from_verifying_key(&key.verifying_key()))
}

/// The miner key in the data dir, created on first use: the default key
/// that signs and bonds this node's fraud proofs.
pub fn default_miner_key(data_dir: &Path) -> Result<SigningKey, KeyError> {
    let seed = own_seed(data_dir, MINER_KEY_FILE)?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_identity_is_stable_and_key_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let first = node_identity(dir.path()).unwrap().public().to_peer_id();
        let second = node_identity(dir.path()).unwrap().public().to_peer_id();
        assert_eq!(first, second);

        let path = dir.path().join("wallet.key");
        let address = keygen(&path).unwrap();
        let key = load_signing_key(&path).unwrap();
        assert_eq!(Address::from_verifying_key(&key.verifying_key()), address);
        let err = keygen(&path).unwrap_err();
        assert!(
            matches!(&err, KeyError::File(KeyFileError::Exists(p)) if p == &path),
            "{err}"
        );
        assert_eq!(
            load_signing_key(&path).unwrap().to_bytes(),
            key.to_bytes(),
            "the refused keygen left the old key in place"
        );

        fs::remove_file(&path).unwrap();
        write_seed(&path, &[7u8; 32]).unwrap();
        fs::write(&path, "not hex").unwrap();
        let err = load_signing_key(&path).unwrap_err();
        assert!(
            matches!(
                &err,
                KeyError::File(KeyFileError::WrongLength { len: 7, .. })
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("expected 64 hex characters"),
            "{err}"
        );
    }

    #[test]
    fn the_default_miner_key_is_created_once_and_matches_its_address() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let address = default_miner_address(&data_dir).unwrap();
        let key = default_miner_key(&data_dir).unwrap();
        assert_eq!(Address::from_verifying_key(&key.verifying_key()), address);
        assert_eq!(default_miner_address(&data_dir).unwrap(), address);
        let seed = read_seed(&data_dir.join(MINER_KEY_FILE)).unwrap();
        assert_eq!(*seed, key.to_bytes());
    }

    #[test]
    fn random_seeds_differ_and_are_not_all_zero() {
        let a = random_seed().unwrap();
        let b = random_seed().unwrap();
        assert_ne!(*a, *b);
        assert_ne!(*a, [0u8; 32]);
    }

    #[cfg(unix)]
    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    #[test]
    fn keygen_writes_a_file_only_its_owner_can_access() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wallet.key");
        keygen(&path).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        node_identity(dir.path()).unwrap();
        assert_eq!(mode_of(&dir.path().join(NODE_KEY_FILE)), 0o600);
        default_miner_key(dir.path()).unwrap();
        assert_eq!(mode_of(&dir.path().join(MINER_KEY_FILE)), 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn a_user_named_key_file_open_to_others_is_refused_and_left_alone() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wallet.key");
        keygen(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_signing_key(&path).unwrap_err();
        assert!(
            matches!(
                &err,
                KeyError::File(KeyFileError::TooOpen { mode: 0o644, .. })
            ),
            "{err}"
        );
        let shown = path.display();
        assert_eq!(
            err.to_string(),
            format!(
                "key file {shown} is readable by group or others (mode 0644); run: chmod 600 {shown}"
            )
        );
        assert_eq!(mode_of(&path), 0o644, "a user's file keeps its mode");
    }

    #[cfg(unix)]
    #[test]
    fn the_nodes_own_keys_left_open_by_an_older_version_are_tightened() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let peer = node_identity(dir.path()).unwrap().public().to_peer_id();
        let miner = default_miner_address(dir.path()).unwrap();
        for name in [NODE_KEY_FILE, MINER_KEY_FILE] {
            let path = dir.path().join(name);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            assert!(
                load_signing_key(&path).is_err(),
                "{name} is refused as given"
            );
        }

        assert_eq!(
            node_identity(dir.path()).unwrap().public().to_peer_id(),
            peer
        );
        assert_eq!(mode_of(&dir.path().join(NODE_KEY_FILE)), 0o600);
        assert_eq!(default_miner_address(dir.path()).unwrap(), miner);
        assert_eq!(mode_of(&dir.path().join(MINER_KEY_FILE)), 0o600);
    }
}
