//! Key files: the ed25519 keys that sign transactions, and the node's
//! libp2p identity kept in its data dir.
//!
//! Format (both kinds): one line holding the 32-byte ed25519 secret seed as
//! 64 lowercase hex characters, followed by a newline; surrounding
//! whitespace is ignored when reading. New files are created with mode 0600
//! on Unix. This module reads and writes key files only; it must never log
//! or print a secret.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use protocol::Address;

/// File name of the libp2p identity inside the data dir.
pub const NODE_KEY_FILE: &str = "node_key";
/// File name of the key a node mines to when `--mine` has no address.
pub const MINER_KEY_FILE: &str = "miner_key";

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The contents are not a hex seed.
    #[error("key file {path} holds {len} characters of text, expected 64 hex characters")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Length of the trimmed contents.
        len: usize,
    },
    /// The file exists and would be overwritten.
    #[error("key file {0} already exists, refusing to overwrite it")]
    Exists(PathBuf),
    /// libp2p refused the seed.
    #[error("libp2p identity: {0}")]
    Identity(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads a 32-byte seed from a key file.
pub fn read_seed(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = fs::read_to_string(path).map_err(io_error(path))?;
    let text = text.trim();
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text, &mut seed).map_err(|_| KeyError::Malformed {
        path: path.to_owned(),
        len: text.len(),
    })?;
    Ok(seed)
}

/// Writes a seed to a new key file.
pub fn write_seed(path: &Path, seed: &[u8; 32]) -> Result<(), KeyError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|err| {
        if err.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists(path.to_owned())
        } else {
            KeyError::Io {
                path: path.to_owned(),
                source: err,
            }
        }
    })?;
    writeln!(file, "{}", hex::encode(seed)).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

/// A fresh random seed.
pub fn random_seed() -> [u8; 32] {
    rand::random()
}

/// Creates a new signing key file and returns its address.
pub fn keygen(path: &Path) -> Result<Address, KeyError> {
    let seed = random_seed();
    write_seed(path, &seed)?;
    Ok(Address::from_verifying_key(
        &SigningKey::from_bytes(&seed).verifying_key(),
    ))
}

/// Loads a signing key file.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    read_seed(path).map(|seed| SigningKey::from_bytes(&seed))
}

/// Loads the node's libp2p identity from the data dir, creating it on first
/// start so the peer id stays the same across restarts.
pub fn node_identity(data_dir: &Path) -> Result<libp2p::identity::Keypair, KeyError> {
    let path = data_dir.join(NODE_KEY_FILE);
    let seed = if path.exists() {
        read_seed(&path)?
    } else {
        let seed = random_seed();
        write_seed(&path, &seed)?;
        seed
    };
    libp2p::identity::Keypair::ed25519_from_bytes(seed)
        .map_err(|e| KeyError::Identity(e.to_string()))
}

/// The address of the miner key in the data dir, created on first use, for
/// `--mine` without `--miner-address`.
pub fn default_miner_address(data_dir: &Path) -> Result<Address, KeyError> {
    fs::create_dir_all(data_dir).map_err(io_error(data_dir))?;
    let path = data_dir.join(MINER_KEY_FILE);
    if path.exists() {
        let key = load_signing_key(&path)?;
        Ok(Address::from_verifying_key(&key.verifying_key()))
    } else {
        keygen(&path)
    }
}

/// The miner key in the data dir, created on first use: the default key
/// that signs and bonds this node's fraud proofs.
pub fn default_miner_key(data_dir: &Path) -> Result<SigningKey, KeyError> {
    default_miner_address(data_dir)?;
    load_signing_key(&data_dir.join(MINER_KEY_FILE))
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
        assert!(matches!(keygen(&path), Err(KeyError::Exists(_))));

        fs::write(&path, "not hex").unwrap();
        let err = load_signing_key(&path).unwrap_err();
        assert!(
            err.to_string().contains("expected 64 hex characters"),
            "{err}"
        );
    }
}
