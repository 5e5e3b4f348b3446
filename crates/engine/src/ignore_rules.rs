//! `.csignore`: the project's ignore rules, in gitignore syntax, at the
//! home's root. A path they match is never synced in either direction, and
//! each side keeps its own copy (unlike a local-only path, whose project
//! copy C hides). P reads its home's file at every hello and sends the text
//! in its answer; C applies that text (see docs/protocol.md, *Ignore rules*).

use std::path::PathBuf;

use cs_protocol::RelPath;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ignore::Match;

/// The file's name, at the root of the home.
pub const IGNORE_FILE: &str = ".csignore";

/// A larger file is refused: the rules travel in every hello answer.
pub const IGNORE_FILE_MAX: usize = 256 * 1024;

/// A `.csignore` that cannot be used. The rules in force stay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IgnoreError {
    #[error("{file} line {line}: {reason}")]
    Line { file: String, line: usize, reason: String },
    #[error("{file}: {reason}")]
    File { file: String, reason: String },
}

/// Parsed ignore rules, with the text they came from (what travels).
#[derive(Clone)]
pub struct IgnoreRules {
    text: String,
    matcher: Gitignore,
}

impl std::fmt::Debug for IgnoreRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IgnoreRules").field("text", &self.text).finish()
    }
}

impl Default for IgnoreRules {
    fn default() -> Self {
        IgnoreRules { text: String::new(), matcher: Gitignore::empty() }
    }
}

/// The rule that decides a path: its line (1-based), its pattern as written,
/// and whether it ignores (`false`: a `!pattern` that re-includes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMatch {
    pub line: usize,
    pub pattern: String,
    pub ignored: bool,
}

impl IgnoreRules {
    /// Parses the bytes of a `.csignore`; `file` names it in errors. Every
    /// line must be UTF-8 and a valid pattern: a file with one bad line is
    /// refused whole (half the rules could sync what the user meant to keep).
    pub fn parse(file: &str, bytes: &[u8]) -> Result<IgnoreRules, IgnoreError> {
        if bytes.len() > IGNORE_FILE_MAX {
            return Err(IgnoreError::File {
                file: file.into(),
                reason: format!("{} bytes, more than the {IGNORE_FILE_MAX} allowed", bytes.len()),
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
            IgnoreError::Line { file: file.into(), line, reason: "not UTF-8".into() }
        })?;
        let mut b = GitignoreBuilder::new("");
        for (i, line) in text.lines().enumerate() {
            let line = if i == 0 { line.trim_start_matches('\u{feff}') } else { line };
            // The glob keeps where it came from: the line number, for
            // `check-ignore` (the matcher has no other way to say it).
            b.add_line(Some(PathBuf::from((i + 1).to_string())), line).map_err(|e| IgnoreError::Line {
                file: file.into(),
                line: i + 1,
                reason: e.to_string(),
            })?;
        }
        let matcher = b.build().map_err(|e| IgnoreError::File { file: file.into(), reason: e.to_string() })?;
        Ok(IgnoreRules { text: text.to_owned(), matcher })
    }

    /// The text the rules were parsed from.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// How many patterns (lines that are neither blank nor comments).
    pub fn patterns(&self) -> usize {
        self.matcher.len()
    }

    pub fn is_empty(&self) -> bool {
        self.matcher.is_empty()
    }

    /// Whether `p` is ignored. The file itself never is: both sides must
    /// keep reading the same rules.
    pub fn is_ignored(&self, p: &RelPath, is_dir: bool) -> bool {
        self.check(p, is_dir).is_some_and(|m| m.ignored)
    }

    /// The rule that decides `p`, with git's semantics: a path below an
    /// ignored directory is ignored whatever rules name it (git never
    /// re-includes there); else the last rule matching the path itself.
    pub fn check(&self, p: &RelPath, is_dir: bool) -> Option<RuleMatch> {
        if self.matcher.is_empty() || p.as_bytes() == IGNORE_FILE.as_bytes() {
            return None;
        }
        let path = p.as_path();
        let mut ancestors: Vec<&std::path::Path> = path.ancestors().skip(1).collect();
        ancestors.pop(); // the empty path
        for dir in ancestors.into_iter().rev() {
            if let Match::Ignore(g) = self.matcher.matched(dir, true) {
                return Some(rule(g, true));
            }
        }
        match self.matcher.matched(path, is_dir) {
            Match::None => None,
            Match::Ignore(g) => Some(rule(g, true)),
            Match::Whitelist(g) => Some(rule(g, false)),
        }
    }
}

fn rule(g: &ignore::gitignore::Glob, ignored: bool) -> RuleMatch {
    let line = g.from().and_then(|f| f.to_str()).and_then(|s| s.parse().ok()).unwrap_or(0);
    RuleMatch { line, pattern: g.original().to_owned(), ignored }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    const RULES: &str =
        "# build output\nnode_modules/\n__pycache__/\n*.pyc\n/build/\n!keep.pyc\nlogs/*\n!logs/important\n";

    #[test]
    fn gitignore_semantics_with_lines() {
        let r = IgnoreRules::parse(".csignore", RULES.as_bytes()).unwrap();
        assert_eq!(r.patterns(), 7);
        let m = r.check(&p("web/node_modules"), true).unwrap();
        assert_eq!((m.line, m.pattern.as_str(), m.ignored), (2, "node_modules/", true));
        assert!(r.is_ignored(&p("web/node_modules/x/y.js"), false), "below an ignored directory");
        assert!(!r.is_ignored(&p("node_modules"), false), "a file of that name is not a directory");
        assert!(r.is_ignored(&p("a/b/m.pyc"), false));
        assert_eq!(
            r.check(&p("a/keep.pyc"), false).unwrap(),
            RuleMatch { line: 6, pattern: "!keep.pyc".into(), ignored: false }
        );
        assert!(r.is_ignored(&p("build/x"), false));
        assert!(!r.is_ignored(&p("src/build/x"), false), "anchored at the root");
        assert!(r.is_ignored(&p("logs/a.log"), false));
        assert!(!r.is_ignored(&p("logs/important"), false), "re-included: its directory is not ignored");
        // git never re-includes below an ignored directory.
        let r = IgnoreRules::parse(".csignore", b"out/\n!out/keep\n").unwrap();
        assert_eq!(r.check(&p("out/keep"), false).unwrap().line, 1);
        assert!(r.check(&p("src/main.rs"), false).is_none());
    }

    #[test]
    fn the_file_itself_is_never_ignored() {
        let r = IgnoreRules::parse(".csignore", b".*\n").unwrap();
        assert!(!r.is_ignored(&p(IGNORE_FILE), false));
        assert!(r.is_ignored(&p(".env"), false));
        assert!(r.is_ignored(&p("d/.csignore"), false), "only the root file is the rules");
    }

    #[test]
    fn bad_files_name_the_line() {
        let e = IgnoreRules::parse("/home/u/.csignore", b"ok\n\nsrc/a{b,c\n").unwrap_err();
        assert!(matches!(&e, IgnoreError::Line { line: 3, .. }), "{e:?}");
        let shown = e.to_string();
        assert!(shown.starts_with("/home/u/.csignore line 3: "), "{shown}");
        assert!(shown.contains("a{b,c"), "{shown}");
        let e = IgnoreRules::parse(".csignore", b"a\nb\xff\n").unwrap_err();
        assert_eq!(e, IgnoreError::Line { file: ".csignore".into(), line: 2, reason: "not UTF-8".into() });
        let big = vec![b'x'; IGNORE_FILE_MAX + 1];
        assert!(matches!(IgnoreRules::parse(".csignore", &big), Err(IgnoreError::File { .. })));
        assert!(IgnoreRules::parse(".csignore", b"\xef\xbb\xbf# bom\r\n*.o\r\n").unwrap().is_ignored(&p("x.o"), false));
    }
}
