//! `cs-actor check-ignore PATH...`: which rule of the home's `.csignore`
//! decides each path, printed as `git check-ignore -v -n` does:
//! `.csignore:LINE:PATTERN<TAB>PATH`, or `::<TAB>PATH` when no rule matches.

use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use cs_engine::{IgnoreRules, IGNORE_FILE};
use cs_protocol::RelPath;

/// One line per path, and whether any path is ignored (the exit status).
pub struct Verdicts {
    pub lines: Vec<String>,
    pub any_ignored: bool,
}

/// Checks `paths` (absolute, or relative to `cwd`) against `home`'s rules.
pub fn check(home: &Path, cwd: &Path, paths: &[PathBuf]) -> Result<Verdicts> {
    let file = home.join(IGNORE_FILE);
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let rules = IgnoreRules::parse(&file.display().to_string(), &bytes)?;
    let home = normalize(&cwd.join(home));
    let mut out = Verdicts { lines: Vec::new(), any_ignored: false };
    for arg in paths {
        let abs = normalize(&cwd.join(arg));
        let rel = abs.strip_prefix(&home).ok().map(Path::to_path_buf);
        let Some(rel) = rel.filter(|r| !r.as_os_str().is_empty()) else {
            bail!("{} is not below the home {}", arg.display(), home.display());
        };
        let rel = RelPath::new(rel.as_os_str().as_bytes()).with_context(|| format!("path {}", arg.display()))?;
        let is_dir = arg.as_os_str().as_bytes().ends_with(b"/") || abs.symlink_metadata().is_ok_and(|m| m.is_dir());
        out.lines.push(match rules.check(&rel, is_dir) {
            Some(m) => {
                out.any_ignored |= m.ignored;
                format!("{IGNORE_FILE}:{}:{}\t{}", m.line, m.pattern, arg.display())
            }
            None => format!("::\t{}", arg.display()),
        });
    }
    Ok(out)
}

/// `p` without `.` and with `..` applied (no symlink is resolved: the home
/// and the paths are read as written).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_the_deciding_rule_like_git() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        std::fs::write(h.join(IGNORE_FILE), "# deps\nnode_modules/\n*.pyc\n!keep.pyc\n").unwrap();
        std::fs::create_dir_all(h.join("web/node_modules/x")).unwrap();
        let v = check(h, &h.join("web"), &["node_modules/x/a.js".into()]).unwrap();
        assert_eq!(v.lines, [".csignore:2:node_modules/\tnode_modules/x/a.js"]);
        assert!(v.any_ignored);
        let v = check(h, h, &[h.join("src/keep.pyc"), "src/main.rs".into()]).unwrap();
        assert_eq!(
            v.lines,
            [format!(".csignore:4:!keep.pyc\t{}", h.join("src/keep.pyc").display()), "::\tsrc/main.rs".into()]
        );
        assert!(!v.any_ignored, "a re-included path is not ignored");
        // A directory is known by its trailing slash or on disk.
        assert!(check(h, h, &["build/node_modules/".into()]).unwrap().any_ignored);
        assert!(!check(h, h, &["node_modules".into()]).unwrap().any_ignored, "a file of that name");
        assert!(check(h, h, &["/elsewhere/x".into()]).is_err());
        std::fs::write(h.join(IGNORE_FILE), "ok\na{b\n").unwrap();
        let e = format!("{:#}", check(h, h, &["x".into()]).err().unwrap());
        assert!(e.contains(".csignore line 2"), "{e}");
    }
}
