//! Key files: the one format, reader and writer for every ed25519 secret
//! gradchain keeps on disk (the keys that sign transactions, and the node's
//! libp2p identity in its data dir).
//!
//! Format: one line holding the 32-byte ed25519 secret seed as 64 hex
//! characters, followed by a newline; surrounding whitespace is ignored when
//! reading, and either case of hex digit is accepted.
//!
//! Rules:
//! - seeds come from the operating system's random number generator;
//! - a new file is created with mode 0600 on Unix (set when the file is
//!   created, so it is never readable by others, not even briefly), and an
//!   existing file is never overwritten;
//! - on Unix a key file readable, writable or executable by group or others
//!   is refused, and the error says which `chmod` fixes it;
//! - the file's text and the seed live in buffers that are wiped when
//!   dropped ([`Zeroizing`]), and [`SigningKey`] wipes itself too.
//!
//! This module must never log or print a secret, and no error it returns
//! holds any byte of one.

use std::fs;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

/// Bytes in an ed25519 secret seed.
pub const SEED_LEN: usize = 32;
/// Hex characters of a seed in a key file.
pub const HEX_LEN: usize = 2 * SEED_LEN;
/// The largest key file read: the 64 hex characters with ample room for
/// surrounding whitespace. Anything longer is not a key file.
pub const MAX_FILE_LEN: usize = 4096;
/// Permission bits a key file may have beyond its owner's (Unix): none.
pub const GROUP_OTHER_BITS: u32 = 0o077;

/// Why a key file could not be generated, read or written. No variant holds
/// any part of a secret.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be opened, read or inspected.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file could not be created or written.
    #[error("cannot write key file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A new key file would replace an existing one.
    #[error(
        "key file {0} already exists, refusing to overwrite it; \
         choose another path, or move the old key away if it is really no longer needed"
    )]
    Exists(PathBuf),
    /// Group or others may read, write or execute the file (Unix).
    #[error(
        "key file {path} is {access} by group or others (mode {mode:04o}); run: chmod 600 {path}",
        access = describe_access(.mode)
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file holds nothing but whitespace.
    #[error("key file {0} is empty, expected {HEX_LEN} hex characters (a 32-byte ed25519 seed)")]
    Empty(PathBuf),
    /// The file is far larger than any key file.
    #[error(
        "key file {0} is larger than {MAX_FILE_LEN} bytes, \
         expected {HEX_LEN} hex characters (a 32-byte ed25519 seed)"
    )]
    TooLarge(PathBuf),
    /// The trimmed text has the wrong length.
    #[error(
        "key file {path} holds {len} characters of text, \
         expected {HEX_LEN} hex characters (a 32-byte ed25519 seed)"
    )]
    WrongLength {
        /// The file.
        path: PathBuf,
        /// Length of the text without surrounding whitespace, in bytes.
        len: usize,
    },
    /// The trimmed text has the right length but holds a character that is
    /// not a hex digit.
    #[error(
        "key file {path} holds a character that is not a hex digit at position {position}, \
         expected {HEX_LEN} hex characters (0-9, a-f)"
    )]
    NotHex {
        /// The file.
        path: PathBuf,
        /// Position (from 0, after leading whitespace) of the first such byte.
        position: usize,
    },
    /// The operating system's random number generator failed.
    #[error("cannot generate a key: the operating system's random number generator failed: {0}")]
    Rng(getrandom::Error),
}

/// Names the kinds of access the group or other bits of `mode` grant.
fn describe_access(mode: &u32) -> &'static str {
    let mode = *mode;
    let read = mode & 0o044 != 0;
    let write = mode & 0o022 != 0;
    match (read, write) {
        (true, true) => "readable and writable",
        (true, false) => "readable",
        (false, true) => "writable",
        (false, false) => "accessible",
    }
}

/// A fresh 32-byte seed from the operating system's random number generator,
/// in a buffer wiped on drop.
pub fn generate() -> Result<Zeroizing<[u8; SEED_LEN]>, KeyFileError> {
    let mut seed = Zeroizing::new([0u8; SEED_LEN]);
    getrandom::getrandom(seed.as_mut_slice()).map_err(KeyFileError::Rng)?;
    Ok(seed)
}

/// Writes `seed` to a new key file at `path`, created with mode 0600 on
/// Unix. Refuses to replace an existing file ([`KeyFileError::Exists`]); if
/// writing fails part-way, the partial file is removed.
pub fn write_new(path: &Path, seed: &[u8; SEED_LEN]) -> Result<(), KeyFileError> {
    let mut line = Zeroizing::new([0u8; HEX_LEN + 1]);
    let (hex_part, newline) = line.split_at_mut(HEX_LEN);
    newline.fill(b'\n');
    hex::encode_to_slice(seed, hex_part).map_err(|e| KeyFileError::Write {
        path: path.to_owned(),
        source: std::io::Error::other(format!("encoding the seed as hex: {e}")),
    })?;

    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists(path.to_owned())
        } else {
            KeyFileError::Write {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    let written = file
        .write_all(line.as_slice())
        .and_then(|()| file.sync_all());
    if let Err(source) = written {
        drop(file);
        // The partial file is useless, and leaving it would make the next
        // attempt fail with `Exists`; a failure to remove it changes nothing
        // about the error reported.
        let _ = fs::remove_file(path);
        return Err(KeyFileError::Write {
            path: path.to_owned(),
            source,
        });
    }
    Ok(())
}

/// Reads the 32-byte seed of the key file at `path`, refusing (on Unix) a
/// file that group or others may access.
pub fn read_seed(path: &Path) -> Result<Zeroizing<[u8; SEED_LEN]>, KeyFileError> {
    let read_error = |source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::File::open(path).map_err(read_error)?;
    // The mode of the file actually opened, not of whatever the path names
    // a moment later.
    let metadata = file.metadata().map_err(read_error)?;
    check_mode(path, &metadata)?;
    if metadata.len() > u64::try_from(MAX_FILE_LEN).unwrap_or(u64::MAX) {
        return Err(KeyFileError::TooLarge(path.to_owned()));
    }

    // A fixed buffer read in place: `read_to_end` would grow a vector and
    // leave unwiped copies of the text behind in freed memory.
    let mut text = Zeroizing::new([0u8; MAX_FILE_LEN]);
    let mut len = 0;
    while let Some(rest) = text.get_mut(len..).filter(|rest| !rest.is_empty()) {
        match file.read(rest) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        }
    }
    if len == MAX_FILE_LEN {
        // The file grew after its size was checked.
        let mut probe = Zeroizing::new([0u8; 1]);
        if file.read(probe.as_mut_slice()).map_err(read_error)? != 0 {
            return Err(KeyFileError::TooLarge(path.to_owned()));
        }
    }
    parse(path, text.get(..len).unwrap_or_default())
}

/// Loads the signing key of the key file at `path`, refusing (on Unix) a
/// file that group or others may access.
pub fn read(path: &Path) -> Result<SigningKey, KeyFileError> {
    read_seed(path).map(|seed| SigningKey::from_bytes(&seed))
}

/// On Unix, refuses a file whose mode grants group or others any access.
#[cfg(unix)]
fn check_mode(path: &Path, metadata: &fs::Metadata) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Elsewhere file modes do not exist; access is the platform's business.
#[cfg(not(unix))]
fn check_mode(_path: &Path, _metadata: &fs::Metadata) -> Result<(), KeyFileError> {
    Ok(())
}

/// Decodes a key file's text: 64 hex characters with surrounding whitespace.
fn parse(path: &Path, text: &[u8]) -> Result<Zeroizing<[u8; SEED_LEN]>, KeyFileError> {
    let hex_text = text.trim_ascii();
    if hex_text.is_empty() {
        return Err(KeyFileError::Empty(path.to_owned()));
    }
    if hex_text.len() != HEX_LEN {
        return Err(KeyFileError::WrongLength {
            path: path.to_owned(),
            len: hex_text.len(),
        });
    }
    if let Some(position) = hex_text.iter().position(|b| !b.is_ascii_hexdigit()) {
        return Err(KeyFileError::NotHex {
            path: path.to_owned(),
            position,
        });
    }
    let mut seed = Zeroizing::new([0u8; SEED_LEN]);
    hex::decode_to_slice(hex_text, seed.as_mut_slice()).map_err(|_| KeyFileError::NotHex {
        path: path.to_owned(),
        position: 0,
    })?;
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "gradchain-keyfile-{name}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Writes `text` to `path` with mode 0600 (on Unix).
    fn write_private(path: &Path, text: &str) {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        options
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    #[test]
    fn generated_seeds_differ_and_are_not_all_zero() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(*a, *b);
        assert_ne!(*a, [0u8; SEED_LEN]);
        assert_ne!(*b, [0u8; SEED_LEN]);
    }

    #[test]
    fn a_written_key_reads_back_and_is_never_overwritten() {
        let dir = TempDir::new("roundtrip");
        let path = dir.join("wallet.key");
        let seed = generate().unwrap();
        write_new(&path, &seed).unwrap();
        assert_eq!(*read_seed(&path).unwrap(), *seed);
        assert_eq!(
            read(&path).unwrap().to_bytes(),
            SigningKey::from_bytes(&seed).to_bytes()
        );
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", hex::encode(*seed)));

        let other = generate().unwrap();
        let err = write_new(&path, &other).unwrap_err();
        assert!(
            matches!(&err, KeyFileError::Exists(p) if p == &path),
            "{err}"
        );
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
        assert_eq!(*read_seed(&path).unwrap(), *seed, "the old key is intact");
    }

    #[cfg(unix)]
    #[test]
    fn a_new_key_file_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = TempDir::new("mode");
        let path = dir.join("wallet.key");
        write_new(&path, &generate().unwrap()).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_open_to_group_or_others_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = TempDir::new("loose");
        let path = dir.join("wallet.key");
        write_private(&path, &format!("{}\n", "ab".repeat(32)));
        assert!(read(&path).is_ok(), "0600 loads");

        for (mode, word) in [
            (0o644, "readable"),
            (0o640, "readable"),
            (0o604, "readable"),
            (0o620, "writable"),
            (0o666, "readable and writable"),
            (0o610, "accessible"),
        ] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = read(&path).unwrap_err();
            assert!(
                matches!(&err, KeyFileError::TooOpen { path: p, mode: m } if p == &path && *m == mode),
                "{err}"
            );
            let shown = path.display();
            assert_eq!(
                err.to_string(),
                format!(
                    "key file {shown} is {word} by group or others (mode {mode:04o}); \
                     run: chmod 600 {shown}"
                )
            );
        }

        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(read(&path).is_ok(), "0400 loads");
    }

    #[test]
    fn whitespace_around_the_hex_and_upper_case_are_accepted() {
        let dir = TempDir::new("whitespace");
        let path = dir.join("wallet.key");
        write_private(&path, &format!("\n  {}\t\r\n\n", "AB".repeat(32)));
        assert_eq!(*read_seed(&path).unwrap(), [0xab; SEED_LEN]);
    }

    #[test]
    fn malformed_contents_name_the_file_and_what_was_expected() {
        let dir = TempDir::new("malformed");
        let expected = "expected 64 hex characters";

        let short = dir.join("short.key");
        write_private(&short, &format!("{}\n", "a".repeat(63)));
        let err = read(&short).unwrap_err();
        assert!(
            matches!(&err, KeyFileError::WrongLength { path, len: 63 } if path == &short),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.contains(&short.display().to_string()), "{message}");
        assert!(message.contains("63 characters"), "{message}");
        assert!(message.contains(expected), "{message}");

        let not_hex = dir.join("not-hex.key");
        write_private(&not_hex, &format!("{}zz\n", "a".repeat(62)));
        let err = read(&not_hex).unwrap_err();
        assert!(
            matches!(&err, KeyFileError::NotHex { path, position: 62 } if path == &not_hex),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&not_hex.display().to_string()),
            "{message}"
        );
        assert!(message.contains("position 62"), "{message}");
        assert!(message.contains(expected), "{message}");

        let empty = dir.join("empty.key");
        write_private(&empty, " \n");
        let err = read(&empty).unwrap_err();
        assert!(
            matches!(&err, KeyFileError::Empty(path) if path == &empty),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.contains(&empty.display().to_string()), "{message}");
        assert!(message.contains(expected), "{message}");

        let large = dir.join("large.key");
        write_private(&large, &" ".repeat(MAX_FILE_LEN + 1));
        let err = read(&large).unwrap_err();
        assert!(
            matches!(&err, KeyFileError::TooLarge(path) if path == &large),
            "{err}"
        );

        let missing = dir.join("missing.key");
        let err = read(&missing).unwrap_err();
        assert!(
            matches!(&err, KeyFileError::Read { path, .. } if path == &missing),
            "{err}"
        );
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
    }
}
