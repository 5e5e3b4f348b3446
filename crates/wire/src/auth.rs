//! Bearer tokens: the broker's token file and the client's token file.
//!
//! Both files hold secrets, so both are refused when their mode lets the
//! group or others in (`mode & 0o077 != 0`). Tokens are never printed: not
//! in errors, not in `Debug`.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cs_protocol::ClientId;
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Shortest accepted token, in characters.
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest accepted token (it travels in an HTTP header).
pub const MAX_TOKEN_LEN: usize = 4096;
/// Largest token file read.
const MAX_FILE_BYTES: u64 = 16 << 20;

/// Why a token file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read token file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "token file {path} has mode {mode:04o}, which lets the group or others read it; fix with `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("token file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("token file {path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("token file {path}, line {line}: {problem}")]
    Line { path: PathBuf, line: usize, problem: String },
    #[error("token file {path}: {problem}")]
    Content { path: PathBuf, problem: String },
}

/// The broker's table of client tokens.
///
/// Only a digest of each token is kept; [`TokenStore::authenticate`]
/// compares digests in constant time over all entries.
#[derive(Clone)]
pub struct TokenStore {
    entries: Vec<(ClientId, [u8; 32])>,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStore")
            .field("clients", &self.entries.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>())
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// Checks a token's form; the message never contains the token.
fn check_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("the token is empty".into());
    }
    if token.chars().count() < MIN_TOKEN_LEN {
        return Err(format!(
            "the token is {} characters long; use at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 32`)",
            token.chars().count()
        ));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(format!("the token is longer than {MAX_TOKEN_LEN} bytes"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token has characters other than printable ASCII".into());
    }
    Ok(())
}

/// Opens `path`, refuses it unless it is a regular file without group or
/// other permissions, and reads it.
fn read_secret_file(path: &Path) -> Result<String, TokenFileError> {
    let io = |source| TokenFileError::Io { path: path.to_owned(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    // Check the file that was opened, not the name (no race with a rename).
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(TokenFileError::NotAFile { path: path.to_owned() });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TokenFileError::Permissions { path: path.to_owned(), mode });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(TokenFileError::TooLarge { path: path.to_owned() });
    }
    let mut text = String::new();
    file.by_ref().take(MAX_FILE_BYTES + 1).read_to_string(&mut text).map_err(io)?;
    Ok(text)
}

impl TokenStore {
    /// Loads the broker's token file: one `CLIENT-ID TOKEN` per line,
    /// separated by whitespace; blank lines and lines starting with `#` are
    /// ignored. Refused: a file the group or others may access, an invalid
    /// client id, a token shorter than [`MIN_TOKEN_LEN`], a repeated client
    /// id or token, a line without exactly two fields (the line is named).
    pub fn load(path: &Path) -> Result<TokenStore, TokenFileError> {
        let text = read_secret_file(path)?;
        let mut lines = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let bad = |problem: String| TokenFileError::Line { path: path.to_owned(), line: line_no, problem };
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = trimmed.split_whitespace().collect();
            let (id, token) = match fields[..] {
                [id, token] => (id, token),
                [_] => return Err(bad("expected `CLIENT-ID TOKEN`, found only one field".into())),
                _ => return Err(bad(format!("expected `CLIENT-ID TOKEN`, found {} fields", fields.len()))),
            };
            let id = ClientId::new(id).map_err(|e| bad(e.to_string()))?;
            check_token(token).map_err(bad)?;
            lines.push((line_no, id, token));
        }
        Self::build(lines).map_err(|(line, problem)| match line {
            Some(line) => TokenFileError::Line { path: path.to_owned(), line, problem },
            None => TokenFileError::Content { path: path.to_owned(), problem },
        })
    }

    /// A store from `(client, token)` pairs, with the checks of
    /// [`TokenStore::load`] (the error names the pair's index).
    pub fn from_pairs<I, S>(pairs: I) -> Result<TokenStore, String>
    where
        I: IntoIterator<Item = (ClientId, S)>,
        S: AsRef<str>,
    {
        let pairs: Vec<(ClientId, S)> = pairs.into_iter().collect();
        for (i, (_, token)) in pairs.iter().enumerate() {
            check_token(token.as_ref()).map_err(|p| format!("entry {i}: {p}"))?;
        }
        let lines = pairs.iter().enumerate().map(|(i, (id, t))| (i, id.clone(), t.as_ref())).collect();
        Self::build(lines).map_err(|(i, p)| match i {
            Some(i) => format!("entry {i}: {p}"),
            None => p,
        })
    }

    fn build(lines: Vec<(usize, ClientId, &str)>) -> Result<TokenStore, (Option<usize>, String)> {
        let mut entries: Vec<(ClientId, [u8; 32])> = Vec::with_capacity(lines.len());
        let mut origin: Vec<usize> = Vec::with_capacity(lines.len());
        for (line, id, token) in lines {
            let d = digest(token);
            if let Some(j) = entries.iter().position(|(other, _)| *other == id) {
                return Err((Some(line), format!("client id {id} was already given a token at line {}", origin[j])));
            }
            if let Some(j) = entries.iter().position(|(_, other)| *other == d) {
                return Err((
                    Some(line),
                    format!(
                        "client {id} has the same token as client {} (line {}): each client needs its own",
                        entries[j].0, origin[j]
                    ),
                ));
            }
            entries.push((id, d));
            origin.push(line);
        }
        if entries.is_empty() {
            return Err((None, "no client tokens (expected lines `CLIENT-ID TOKEN`)".into()));
        }
        Ok(TokenStore { entries })
    }

    /// The client whose token is `presented`, if any.
    ///
    /// Timing does not depend on which entry matches, nor on how much of a
    /// token matches: the presented token is hashed to a fixed-length
    /// digest, compared with every entry's digest in constant time, without
    /// early exit.
    pub fn authenticate(&self, presented: &str) -> Option<ClientId> {
        let d = digest(presented);
        let mut found = u64::MAX; // no entry
        for (i, (_, entry)) in self.entries.iter().enumerate() {
            let eq = entry.ct_eq(&d);
            found = u64::conditional_select(&found, &(i as u64), eq);
        }
        usize::try_from(found).ok().and_then(|i| self.entries.get(i)).map(|(id, _)| id.clone())
    }

    /// The clients known to this store.
    pub fn clients(&self) -> impl Iterator<Item = &ClientId> {
        self.entries.iter().map(|(id, _)| id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Reads the client's token file (the whole file is the token, surrounding
/// whitespace trimmed), with the same permission rule as [`TokenStore::load`].
pub fn read_token_file(path: &Path) -> Result<String, TokenFileError> {
    let text = read_secret_file(path)?;
    let token = text.trim();
    check_token(token).map_err(|problem| TokenFileError::Content { path: path.to_owned(), problem })?;
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn id(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }

    #[test]
    fn constant_time_compare_is_correct() {
        let store = TokenStore::from_pairs([
            (id("a"), "aaaaaaaaaaaaaaaaaaaa"),
            (id("b"), "bbbbbbbbbbbbbbbbbbbb"),
            (id("c"), "cccccccccccccccccccc"),
        ])
        .unwrap();
        assert_eq!(store.authenticate("aaaaaaaaaaaaaaaaaaaa"), Some(id("a")));
        assert_eq!(store.authenticate("bbbbbbbbbbbbbbbbbbbb"), Some(id("b")));
        assert_eq!(store.authenticate("cccccccccccccccccccc"), Some(id("c")));
        // Prefixes, extensions, one changed byte, empty: no match.
        assert_eq!(store.authenticate("aaaaaaaaaaaaaaaaaaa"), None);
        assert_eq!(store.authenticate("aaaaaaaaaaaaaaaaaaaaa"), None);
        assert_eq!(store.authenticate("aaaaaaaaaaaaaaaaaaab"), None);
        assert_eq!(store.authenticate(""), None);
    }

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let p = dir.join("tokens");
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn load_parses_comments_and_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "# clients\n\ngpu-1  0123456789abcdef0123\n  # indented comment\ngpu-2\t0123456789abcdef0124\n",
            0o600,
        );
        let store = TokenStore::load(&p).unwrap();
        assert_eq!(store.len(), 2);
        assert_eq!(store.authenticate("0123456789abcdef0124"), Some(id("gpu-2")));
        assert!(!format!("{store:?}").contains("0123"));
    }

    #[test]
    fn load_refuses_bad_lines_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("a 0123456789abcdef0123\na 0123456789abcdef0124\n", 2, "already"),
            ("a 0123456789abcdef0123\nb 0123456789abcdef0123\n", 2, "same token"),
            ("# c\na short\n", 2, "at least 16"),
            ("a\n", 1, "one field"),
            ("a b c\n", 1, "3 fields"),
            ("\n\n../x 0123456789abcdef0123\n", 3, "client id"),
        ];
        for (text, line, needle) in cases {
            let p = write(dir.path(), text, 0o600);
            let e = TokenStore::load(&p).unwrap_err().to_string();
            assert!(e.contains(&format!("line {line}:")) && e.contains(needle), "{text:?}: {e}");
            assert!(!e.contains("0123456789abcdef"), "token leaked: {e}");
        }
        let p = write(dir.path(), "# nothing\n", 0o600);
        assert!(TokenStore::load(&p).unwrap_err().to_string().contains("no client tokens"));
    }

    #[test]
    fn token_files_open_to_others_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let p = write(dir.path(), "a 0123456789abcdef0123\n", mode);
            let e = TokenStore::load(&p).unwrap_err();
            assert!(matches!(e, TokenFileError::Permissions { .. }), "{e}");
            let msg = e.to_string();
            assert!(msg.contains(&format!("chmod 600 {}", p.display())), "{msg}");
            assert!(read_token_file(&p).is_err());
        }
        let p = write(dir.path(), "  0123456789abcdef0123 \n", 0o400);
        assert_eq!(read_token_file(&p).unwrap(), "0123456789abcdef0123");
        let p = write(dir.path(), "short\n", 0o600);
        assert!(read_token_file(&p).unwrap_err().to_string().contains("at least 16"));
    }
}
