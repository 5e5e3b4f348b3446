//! Issue 9: the home belongs to its user. The services run as root (as deployed); the
//! user's part runs as an unprivileged account through `setpriv`, with `HOME` set to the
//! merged view, on the real bed (sshd, sshfs, each union backend, both services).
//!
//! Accounts: `csa-t-proj` stands for the project's user (owner of P's home, uid 2001 in the
//! issue), `csa-t-comp` is the compute user, `csa-t-other` a second user of the compute
//! server. They are created if missing (`useradd --system`, retried while another test
//! binary holds the passwd lock) and kept: fixed names, so concurrent binaries share them and
//! none deletes an account another still uses.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

per_union! {
    both: [
        the_home_is_its_users_with_the_modes_of_a_local_disk,
    ],
}

fn ids(p: &Path) -> (u32, u32) {
    let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    (md.uid(), md.gid())
}

fn of(a: &Account) -> (u32, u32) {
    (a.uid, a.gid)
}

/// The user's tools must be there; a missing one is named (deploy/install-deps.sh installs them).
fn require_tools() {
    let mut c = Command::new("env");
    c.args([&format!("PATH={USER_PATH}"), "python3", "-m", "pip", "--version"]);
    let out = run(c, Duration::from_secs(60));
    assert!(out.ok(), "python3 -m pip does not run: install python3-pip (deploy/install-deps.sh): {}", out.describe());
    let mut c = Command::new("env");
    c.args([&format!("PATH={USER_PATH}"), "git", "--version"]);
    assert!(run(c, Duration::from_secs(30)).ok(), "git is missing: install git (deploy/install-deps.sh)");
}

/// A tiny pure-Python wheel, `csa_tiny` (`VALUE = 42`), written with the standard library.
fn make_wheel(dir: &Path) -> std::path::PathBuf {
    fs::create_dir_all(dir).unwrap();
    let script = r#"import base64, hashlib, sys, zipfile
out = sys.argv[1] + "/csa_tiny-1.0-py3-none-any.whl"
records = []
with zipfile.ZipFile(out, "w") as z:
    def add(arc, data):
        z.writestr(arc, data)
        d = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        records.append(f"{arc},sha256={d},{len(data)}")
    add("csa_tiny/__init__.py", b"VALUE = 42\n")
    info = "csa_tiny-1.0.dist-info"
    add(info + "/METADATA", b"Metadata-Version: 2.1\nName: csa_tiny\nVersion: 1.0\n")
    add(info + "/WHEEL", b"Wheel-Version: 1.0\nGenerator: cs-actor-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    records.append(info + "/RECORD,,")
    z.writestr(info + "/RECORD", "\n".join(records) + "\n")
"#;
    let mut c = Command::new("env");
    c.args([&format!("PATH={USER_PATH}"), "python3", "-c", script]).arg(dir);
    let out = run(c, Duration::from_secs(60));
    assert!(out.ok(), "building the wheel: {}", out.describe());
    dir.join("csa_tiny-1.0-py3-none-any.whl")
}

#[test]
fn unknown_users_are_named_at_startup() {
    let t = tempfile::tempdir().unwrap();
    let out = cli(
        &[
            "project",
            "--home",
            "/",
            "--listen",
            "127.0.0.1:1",
            "--tokens",
            "/nonexistent",
            "--user",
            "no-such-csa-user",
        ],
        Duration::from_secs(30),
    );
    assert!(!out.ok() && out.stderr.contains("no user named \"no-such-csa-user\""), "{}", out.describe());
    let token = t.path().join("token");
    fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
    let d = |n: &str| t.path().join(n).display().to_string();
    let out = cli(
        &[
            "compute",
            "--server",
            "ws://127.0.0.1:1",
            "--id",
            "x",
            "--token-file",
            &d("token"),
            "--merged",
            &d("m"),
            "--upper",
            &d("u"),
            "--state",
            &d("s"),
            "--lower",
            &d("l"),
            "--user",
            "no-such-csa-user",
        ],
        Duration::from_secs(30),
    );
    assert!(!out.ok() && out.stderr.contains("no user named \"no-such-csa-user\""), "{}", out.describe());
    assert!(mounts_under(t.path()).is_empty(), "something was mounted before the check");
}

fn the_home_is_its_users_with_the_modes_of_a_local_disk() {
    require_tools();
    let (proj, comp, other) = (account(PROJECT_ACCOUNT), account(COMPUTE_ACCOUNT), account(OTHER_ACCOUNT));
    let mut bed = Bed::new("user");
    // The users must reach the merged view under the bed's private directory (as under /home).
    fs::set_permissions(&bed.root, fs::Permissions::from_mode(0o755)).unwrap();
    let wheel = make_wheel(&bed.root.join("wheels"));
    // P's home belongs to the project user; one file in it was made by root.
    put(&bed.home, "proj.txt", "from P\n");
    put(&bed.home, "old.txt", "to be deleted on C\n");
    put(&bed.home, "docs/readme.txt", "P's docs\n");
    for p in ["", "proj.txt", "old.txt", "docs", "docs/readme.txt"] {
        std::os::unix::fs::lchown(bed.home.join(p), Some(proj.uid), Some(proj.gid)).unwrap();
    }
    put(&bed.home, "by-root-on-p.txt", "root's, on P\n");
    bed.start_broker(); // no --user: the owner of the home
    bed.start_compute_opts("gpu-1", &ComputeOpts { user: Some(&comp), ..Default::default() });
    let (m, up, home) = (bed.merged(), bed.upper(), bed.home.clone());

    // ---- access: the user's home, as on a local disk
    let src = bed.root.join("src-repo");
    fs::create_dir(&src).unwrap();
    std::os::unix::fs::chown(&src, Some(comp.uid), Some(comp.gid)).unwrap();
    must(
        &comp,
        &src,
        "set -e; cd \"$HOME\"; git init -q .; echo hello > README; \
         git -c user.name=t -c user.email=t@example.org add README; \
         git -c user.name=t -c user.email=t@example.org commit -qm one",
    );
    let script = format!(
        "set -ex; cd \"$HOME\"; ls -la . > /dev/null; cat proj.txt docs/readme.txt > /dev/null; \
         echo mine > mine.txt; chmod 600 mine.txt; \
         mkdir -p work/sub; echo a > work/sub/a.txt; mv work/sub/a.txt work/sub/b.txt; \
         echo gone > work/gone.txt; rm work/gone.txt; \
         ln -s mine.txt link-to-mine; chmod 640 docs/readme.txt; echo more >> proj.txt; rm old.txt; \
         mkdir -p scratch/run; echo s > scratch/run/out.txt; \
         git clone -q {src} work/clone; \
         python3 -m pip install --user --no-index --no-deps --disable-pip-version-check --break-system-packages -q {wheel}; \
         python3 -c 'import csa_tiny; assert csa_tiny.VALUE == 42'; \
         test -f .local/lib/python3*/site-packages/csa_tiny/__init__.py",
        src = src.display(),
        wheel = wheel.display()
    );
    must(&comp, &m, &script);
    // Root's own file in the merged view stays root's on C.
    put(&m, "by-root-on-c.txt", "root's, on C\n");

    bed.sync_and_converge();

    // ---- C → P: what the user made arrives as the project's user
    for p in [
        "mine.txt",
        "work",
        "work/sub",
        "work/sub/b.txt",
        "link-to-mine",
        "proj.txt",
        "docs/readme.txt",
        "work/clone",
        "work/clone/README",
        "work/clone/.git",
        "work/clone/.git/HEAD",
        "by-root-on-c.txt",
    ] {
        assert_eq!(ids(&home.join(p)), of(&proj), "P's copy of {p} is not the project user's");
    }
    assert_eq!(mode(&home, "mine.txt"), 0o600);
    assert_eq!(ids(&home.join("by-root-on-p.txt")), (0, 0), "P's own root file changed owner");
    assert!(!exists(&home, "old.txt") && !exists(&home, "scratch") && !exists(&home, ".local"));

    // ---- on C: the user's, in the merged view and in the upper layer
    for p in ["", "mine.txt", "proj.txt", "work/sub/b.txt", "link-to-mine", "scratch", ".local", "docs/readme.txt"] {
        assert_eq!(ids(&m.join(p)), of(&comp), "merged/{p} is not the compute user's");
    }
    for p in ["", "scratch", ".local", ".cache", "proj.txt", "docs"] {
        assert_eq!(ids(&up.join(p)), of(&comp), "upper/{p} is not the compute user's");
    }
    assert_eq!(ids(&up.join("by-root-on-c.txt")), (0, 0), "root's file on C changed owner");
    // A project file the user never touched: shown as the user's through the lower.
    assert_eq!(ids(&m.join("by-root-on-p.txt")), of(&comp));

    // ---- P → C: P's changes to files C holds arrive as the compute user's
    put(&home, "proj.txt", "changed on P by root\n");
    put(&home, "work/sub/b.txt", "changed on P\n");
    std::os::unix::fs::lchown(home.join("work/sub/b.txt"), Some(proj.uid), Some(proj.gid)).unwrap();
    bed.sync_and_converge();
    assert_eq!(read(&m, "proj.txt"), "changed on P by root\n");
    for p in ["proj.txt", "work/sub/b.txt"] {
        assert_eq!(ids(&up.join(p)), of(&comp), "upper/{p} as step 4 wrote it");
        assert_eq!(ids(&m.join(p)), of(&comp), "merged/{p} as step 4 wrote it");
    }
    must(&comp, &m, "set -e; cd \"$HOME\"; cat proj.txt > /dev/null; echo again >> mine.txt");

    // ---- another user of the compute server: exactly what the modes say
    let denied = as_user(&other, &m, "cat \"$HOME/mine.txt\"");
    assert!(!denied.ok() && denied.stderr.contains("Permission denied"), "0600 file: {}", denied.describe());
    let denied = as_user(&other, &m, "echo x > \"$HOME/intruder.txt\"");
    assert!(!denied.ok() && denied.stderr.contains("Permission denied"), "0755 home: {}", denied.describe());
    let denied = as_user(&other, &m, "cat \"$HOME/docs/readme.txt\"");
    assert!(!denied.ok(), "0640 file read by another user: {}", denied.describe());
    must(&other, &m, "cat \"$HOME/proj.txt\" > /dev/null; ls \"$HOME\" > /dev/null");
    assert!(!exists(&m, "intruder.txt"));

    // ---- setuid and setgid never cross
    must(&comp, &m, "set -e; cd \"$HOME\"; cp /bin/true c-tool; chmod 6755 c-tool");
    assert_eq!(mode(&m, "c-tool"), 0o6755, "the user's own file keeps what the user made");
    put(&home, "work/sub/b.txt", "setuid on P\n");
    chmod(&home, "work/sub/b.txt", 0o4755);
    bed.sync_wait();
    std::thread::sleep(CACHE_TIMEOUT * 2);
    bed.sync_wait();
    assert_eq!(mode(&home, "c-tool"), 0o755, "setuid/setgid crossed C → P");
    assert_eq!(ids(&home.join("c-tool")), of(&proj));
    assert_eq!(read(&up, "work/sub/b.txt"), "setuid on P\n");
    assert_eq!(mode(&up, "work/sub/b.txt"), 0o755, "setuid crossed P → C");
    assert_eq!(mode(&home, "work/sub/b.txt"), 0o4755, "P's own file keeps its bits");

    bed.finish();
}
