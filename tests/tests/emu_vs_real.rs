//! The emulated union (`src/union_emu.rs`) against the real unionfs-fuse: the same user
//! operations on both, over identical lower layers, then the upper layers (entries, kinds,
//! modes, contents, symlink targets, old file mtimes, whiteout markers) and the merged views
//! must be equal. The real union is the truth: where they differ, the emulation is wrong
//! (or the difference is a real-union quirk, documented in docs/unionfs-notes.md).
//!
//! Two parts: named scenarios (the cases that matter to the engine: `rm -rf` then re-create,
//! rename over a whiteout, renames of lower directories, chmod / touch / hard links /
//! symlinks of lower entries), and random sequences of the property test's operations
//! (tests/proptest_rounds.rs), compared after every operation. `CS_EMU_SEQUENCES` sets the
//! number of random sequences (default 40).
//!
//! The lower layer is a plain directory here (no sshfs: the union's behaviour does not depend
//! on what serves its lower branch). Without unionfs-fuse or /dev/fuse the tests print a skip
//! note and pass, unless `CI` is set.

use std::io;
use std::path::{Path, PathBuf};

use cs_protocol::Timestamp;
use cs_tests::filter::{SpecDefaults, SyncAll};
use cs_tests::rp;
use cs_tests::tree::Tree;
use cs_tests::union_emu::{EmuUnion, Layout};
use cs_tests::view::{Kind, PlainDir, View};
use cs_union::{MountGuard, UnionfsFuse};

const OLD: Timestamp = Timestamp { sec: 1_000_000_000, nsec: 0 };
/// File mtimes below this are compared exactly (set on purpose, or kept by a copy-up); later
/// ones are "now" on either side and only compared as such.
const RECENT: i64 = 1_500_000_000;

/// The real union, or `None` (skip) when it or /dev/fuse is missing; panics under CI.
fn union() -> Option<UnionfsFuse> {
    let why = if !Path::new("/dev/fuse").exists() {
        "/dev/fuse does not exist".to_string()
    } else {
        match UnionfsFuse::find() {
            Ok(u) => return Some(u),
            Err(e) => e.to_string(),
        }
    };
    if std::env::var_os("CI").is_some() {
        panic!("the real unionfs-fuse is needed: {why} (CI is set)");
    }
    eprintln!("SKIPPED (real unionfs-fuse unavailable: {why}; set CI=1 to make this fail)");
    None
}

/// One emulated and one real union over two identical lower layers.
struct Pair {
    emu: EmuUnion,
    real: PlainDir,
    real_upper: PathBuf,
    guard: Option<MountGuard>,
    _t: tempfile::TempDir,
}

impl Pair {
    fn new(u: &UnionfsFuse, seed: &dyn Fn(&PlainDir)) -> Pair {
        let t =
            tempfile::Builder::new().prefix("cs-emu-vs-real-").tempdir_in(cs_tests::fixture::scratch_base()).unwrap();
        let dir = |n: &str| {
            let p = t.path().join(n);
            std::fs::create_dir(&p).unwrap();
            p
        };
        let (eu, el, ru, rl, rm) =
            (dir("emu-upper"), dir("emu-lower"), dir("real-upper"), dir("real-lower"), dir("real-merged"));
        seed(&PlainDir::new(&el, "emu lower"));
        seed(&PlainDir::new(&rl, "real lower"));
        let layout = layout_of(u, t.path());
        // Zero kernel cache timeouts: the comparison reads the merged view right after each
        // change, and must see the union's answer, not the kernel's memory of an older one.
        let opts = ["entry_timeout=0", "attr_timeout=0", "negative_timeout=0"].map(String::from);
        let guard = MountGuard::mount(u, &ru, &rl, &rm, &opts).expect("mount the real union");
        Pair {
            emu: EmuUnion::new(eu, el, layout, Box::new(SpecDefaults)).with_name("emulated union"),
            real: PlainDir::new(rm, "real union"),
            real_upper: ru,
            guard: Some(guard),
            _t: t,
        }
    }

    /// Runs `op` on both merged views; the outcomes (success or failure) must agree.
    fn both(&self, what: &str, op: impl Fn(&dyn View) -> io::Result<()>) -> Result<(), String> {
        let (e, r) = (op(&self.emu), op(&self.real));
        match (&e, &r) {
            (Ok(()), Ok(())) | (Err(_), Err(_)) => Ok(()),
            _ => Err(format!("{what}: emulated {e:?}, real {r:?}")),
        }
    }

    /// The upper layers and the merged views must be equal.
    fn compare(&self, when: &str) -> Result<(), String> {
        let up_e = normalised(Tree::scan(&self.emu.upper, &SyncAll).map_err(|e| e.to_string())?);
        let up_r = normalised(Tree::scan(&self.real_upper, &SyncAll).map_err(|e| e.to_string())?);
        if let Some(d) = up_e.diff(&up_r, "emulated upper", "real upper") {
            return Err(format!("after {when}: {d}"));
        }
        let m_e = normalised(Tree::of_view(&self.emu, &SpecDefaults).map_err(|e| e.to_string())?);
        let m_r = normalised(Tree::of_view(&self.real, &SpecDefaults).map_err(|e| e.to_string())?);
        if let Some(d) = m_e.diff(&m_r, "emulated merged view", "real merged view") {
            return Err(format!("after {when}: {d}"));
        }
        Ok(())
    }

    fn finish(mut self) {
        self.guard.take().expect("mounted").unmount().expect("unmount the real union");
    }
}

fn layout_of(u: &UnionfsFuse, scratch: &Path) -> Layout {
    static L: std::sync::OnceLock<Layout> = std::sync::OnceLock::new();
    *L.get_or_init(|| u.probe_layout(scratch).expect("probe the union's layout"))
}

/// Recent file mtimes become `None`: only old ones (kept or set on purpose) are compared.
fn normalised(mut t: Tree) -> Tree {
    for n in t.nodes.values_mut() {
        n.mtime = n.mtime.filter(|m| m.sec < RECENT);
    }
    t
}

/// The lower layer of the named scenarios: files with old mtimes and assorted modes, a
/// nested tree, a symlink.
fn seed(v: &PlainDir) {
    for (p, mode) in [("a", 0o644), ("b", 0o640), ("d/x", 0o600), ("d/e/y", 0o755), ("d/e/f/z", 0o644), ("e/w", 0o644)]
    {
        v.put(&rp(p), p.as_bytes()).unwrap();
        v.chmod(&rp(p), mode).unwrap();
        v.set_mtime(&rp(p), OLD).unwrap();
    }
    v.chmod(&rp("d/e"), 0o750).unwrap();
    v.symlink("../a", &rp("d/l")).unwrap();
}

/// One operation on a view, replayed on both.
type Op = Box<dyn Fn(&dyn View) -> io::Result<()>>;
type Step = (&'static str, Op);

fn step(what: &'static str, f: impl Fn(&dyn View) -> io::Result<()> + 'static) -> Step {
    (what, Box::new(f))
}

/// The named scenarios: each a list of steps from the same lower layer.
fn scenarios() -> Vec<(&'static str, Vec<Step>)> {
    let old2 = Timestamp::new(OLD.sec + 7, 5);
    vec![
        (
            "rm -rf a lower dir, mkdir it again, a file in it",
            vec![
                step("rm -r d", |v| v.remove_dir_all(&rp("d"))),
                step("mkdir d", |v| v.mkdir(&rp("d"))),
                step("echo > d/n", |v| v.write(&rp("d/n"), b"fresh")),
                step("echo > d/x (a name the lower has)", |v| v.write(&rp("d/x"), b"new x")),
            ],
        ),
        (
            "rm -rf a lower dir, a file at its name",
            vec![
                step("rm -r d", |v| v.remove_dir_all(&rp("d"))),
                step("echo > d", |v| v.write(&rp("d"), b"now a file")),
                step("rm d", |v| v.remove_file(&rp("d"))),
                step("mkdir -p d/e", |v| v.mkdir_p(&rp("d/e"))),
            ],
        ),
        (
            "rm a lower file, re-create it as file, dir, symlink",
            vec![
                step("rm a", |v| v.remove_file(&rp("a"))),
                step("echo > a", |v| v.write(&rp("a"), b"again")),
                step("rm a (now in both layers)", |v| v.remove_file(&rp("a"))),
                step("mkdir a", |v| v.mkdir(&rp("a"))),
                step("rm b", |v| v.remove_file(&rp("b"))),
                step("ln -s t b", |v| v.symlink("t", &rp("b"))),
            ],
        ),
        (
            "rename over a whiteout",
            vec![
                step("rm a", |v| v.remove_file(&rp("a"))),
                step("mv b a", |v| v.rename(&rp("b"), &rp("a"))),
                step("echo > n", |v| v.write(&rp("n"), b"upper only")),
                step("rm e/w", |v| v.remove_file(&rp("e/w"))),
                step("mv n e/w", |v| v.rename(&rp("n"), &rp("e/w"))),
                step("rm -r d/e", |v| v.remove_dir_all(&rp("d/e"))),
                step("mv d/x d/e (file onto a dir's whiteout)", |v| v.rename(&rp("d/x"), &rp("d/e"))),
            ],
        ),
        (
            "rename a lower dir",
            vec![
                step("mv d g", |v| v.rename(&rp("d"), &rp("g"))),
                step("mkdir d", |v| v.mkdir(&rp("d"))),
                step("mv g/e d/e", |v| v.rename(&rp("g/e"), &rp("d/e"))),
                step("mv e d/e/q", |v| v.rename(&rp("e"), &rp("d/e/q"))),
            ],
        ),
        (
            "rename a lower dir with a deleted child",
            vec![
                step("rm d/x", |v| v.remove_file(&rp("d/x"))),
                step("rm -r d/e/f", |v| v.remove_dir_all(&rp("d/e/f"))),
                step("mv d g", |v| v.rename(&rp("d"), &rp("g"))),
            ],
        ),
        (
            "rm in a directory created again over its marker",
            vec![
                step("rm -r e", |v| v.remove_dir_all(&rp("e"))),
                step("mkdir e", |v| v.mkdir(&rp("e"))),
                step("echo > e/w (a name the lower has)", |v| v.write(&rp("e/w"), b"new")),
                step("rm e/w", |v| v.remove_file(&rp("e/w"))),
                step("rm -r e", |v| v.remove_dir_all(&rp("e"))),
            ],
        ),
        (
            "rename a dir in both layers",
            vec![
                step("echo >> d/x", |v| v.append(&rp("d/x"), b"+c")),
                step("echo > d/new", |v| v.write(&rp("d/new"), b"new")),
                step("mv d g", |v| v.rename(&rp("d"), &rp("g"))),
                step("mv g d", |v| v.rename(&rp("g"), &rp("d"))),
            ],
        ),
        (
            "chmod of lower entries",
            vec![
                step("chmod 600 a", |v| v.chmod(&rp("a"), 0o600)),
                step("chmod 700 d/e", |v| v.chmod(&rp("d/e"), 0o700)),
                step("chmod 640 d/e/f/z", |v| v.chmod(&rp("d/e/f/z"), 0o640)),
            ],
        ),
        (
            "chmod of a lower dir copies its tree up",
            vec![
                step("rm d/e/y", |v| v.remove_file(&rp("d/e/y"))),
                step("chmod 700 d", |v| v.chmod(&rp("d"), 0o700)),
                step("chmod 755 d/e (now upper)", |v| v.chmod(&rp("d/e"), 0o755)),
                step("echo > e/new; chmod 700 e (in both layers)", |v| {
                    v.write(&rp("e/new"), b"n").and_then(|_| v.chmod(&rp("e"), 0o700))
                }),
            ],
        ),
        (
            "touch -d of lower and new files",
            vec![
                step("touch -d OLD+7 a", move |v| v.set_mtime(&rp("a"), old2)),
                step("touch -d OLD+7 d/e/y", move |v| v.set_mtime(&rp("d/e/y"), old2)),
                step("echo > n; touch -d OLD+7 n", move |v| v.put_with_mtime(&rp("n"), b"n", old2)),
                step("tar x of d/x, e/new", |v| {
                    v.extract(&[(rp("d/x"), b"tx".to_vec()), (rp("e/new"), b"tn".to_vec())], OLD)
                }),
            ],
        ),
        (
            "hard links",
            vec![
                step("ln a a2", |v| v.hard_link(&rp("a"), &rp("a2"))),
                step("ln d/e/y e/y2", |v| v.hard_link(&rp("d/e/y"), &rp("e/y2"))),
                step("echo >> e/y2", |v| v.append(&rp("e/y2"), b"+both")),
                step("rm b; ln a b", |v| v.remove_file(&rp("b")).and_then(|_| v.hard_link(&rp("a"), &rp("b")))),
            ],
        ),
        (
            "symlinks",
            vec![
                step("ln -s ../a e/s", |v| v.symlink("../a", &rp("e/s"))),
                step("rm d/l (a lower symlink)", |v| v.remove_file(&rp("d/l"))),
                step("ln -s x d/l", |v| v.symlink("x", &rp("d/l"))),
                step("mv d/l d/l2", |v| v.rename(&rp("d/l"), &rp("d/l2"))),
            ],
        ),
        (
            "the generator's other operations on lower files",
            vec![
                step("truncate d/x 1", |v| v.truncate(&rp("d/x"), 1)),
                step("echo >> d/e/f/z", |v| v.append(&rp("d/e/f/z"), b"+")),
                step("mkdir -p e/d/e", |v| v.mkdir_p(&rp("e/d/e"))),
                step("echo > e/d/e/a", |v| v.write(&rp("e/d/e/a"), b"deep")),
                step("rm -r e", |v| v.remove_dir_all(&rp("e"))),
            ],
        ),
    ]
}

#[test]
fn named_scenarios_leave_the_same_upper_layer() {
    let Some(u) = union() else { return };
    let mut failures = Vec::new();
    for (name, steps) in scenarios() {
        let pair = Pair::new(&u, &seed);
        let mut done = Vec::new();
        for (what, f) in &steps {
            done.push(*what);
            let r = pair.both(what, f).and_then(|()| pair.compare(what));
            if let Err(e) = r {
                failures.push(format!("scenario {name:?}, steps {done:?}:\n{e}"));
                break;
            }
        }
        pair.finish();
    }
    assert!(failures.is_empty(), "{} scenario(s) differ:\n\n{}", failures.len(), failures.join("\n\n"));
}

/// unionfs-fuse 1.0 ignores a change of the mtime alone (`touch -m`, `futimens` with the
/// access time omitted): the file is copied up, its mtime stays. Setting both times (what
/// `touch -d`, `tar x`, `cp -p` do) works. Recorded here so that a union that fixes it shows.
#[test]
fn real_union_ignores_an_mtime_only_change() {
    let Some(u) = union() else { return };
    let pair = Pair::new(&u, &seed);
    let m = pair.real.root.clone();
    let old2 = cs_tests::view::to_system_time(Timestamp::new(OLD.sec + 99, 0));
    let f = std::fs::OpenOptions::new().write(true).open(m.join("a")).unwrap();
    f.set_times(std::fs::FileTimes::new().set_modified(old2)).unwrap();
    drop(f);
    assert!(pair.real_upper.join("a").is_file(), "copied up");
    assert_eq!(pair.real.mtime(&rp("a")), Some(OLD), "the mtime-only change was applied: the quirk is gone");
    let f = std::fs::OpenOptions::new().write(true).open(m.join("a")).unwrap();
    f.set_times(std::fs::FileTimes::new().set_modified(old2).set_accessed(old2)).unwrap();
    drop(f);
    assert_eq!(pair.real.mtime(&rp("a")), Some(Timestamp::new(OLD.sec + 99, 0)));
    pair.finish();
}

// ------------------------------------------------------------ random sequences

/// xorshift64*: a reproducible sequence from a seed printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
    fn dir(&mut self) -> String {
        let n = 1 + self.below(2);
        (0..n).map(|_| self.pick(&["d", "e"])).collect::<Vec<_>>().join("/")
    }
    fn file(&mut self) -> String {
        let name = self.pick(&["a", "b", "c"]);
        if self.below(3) == 0 {
            name.to_string()
        } else {
            format!("{}/{name}", self.dir())
        }
    }
}

/// A random lower layer over the generator's names.
fn random_lower(rng: &mut Rng) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for _ in 0..rng.below(8) {
        let f = rng.file();
        // Not below an existing file, not a prefix of an existing path.
        let clash =
            out.iter().any(|(o, _)| f.starts_with(&format!("{o}/")) || o.starts_with(&format!("{f}/")) || *o == f);
        if !clash {
            out.push((f, rng.pick(&[0o600, 0o644, 0o755])));
        }
    }
    out
}

/// One operation of the property test's generator, on a random path; `None` when its
/// preconditions do not hold in the (emulated) merged view.
fn random_op(rng: &mut Rng, v: &dyn View, tag: &mut u32) -> Option<(String, Op)> {
    let kind = |p: &str| v.kind(&rp(p));
    let parents_ok = |p: &str| rp(p).ancestors().all(|a| matches!(v.kind(&a), None | Some(Kind::Dir)));
    let parent_is_dir = |p: &str| rp(p).parent().is_none_or(|d| v.kind(&d) == Some(Kind::Dir));
    *tag += 1;
    let data = format!("<w{tag:05}>");
    let old = Timestamp::new(OLD.sec + rng.below(2) as i64, 0);
    Some(match rng.below(13) {
        0 => {
            let p = rng.file();
            (parents_ok(&p) && matches!(kind(&p), None | Some(Kind::File))).then_some(())?;
            (format!("write {p}"), Box::new(move |v: &dyn View| v.put(&rp(&p), data.as_bytes())))
        }
        1 => {
            let p = rng.file();
            (kind(&p) == Some(Kind::File)).then_some(())?;
            (format!("append {p}"), Box::new(move |v: &dyn View| v.append(&rp(&p), data.as_bytes())))
        }
        2 => {
            let (p, len) = (rng.file(), rng.below(12) as u64);
            (kind(&p) == Some(Kind::File)).then_some(())?;
            (format!("truncate {p} {len}"), Box::new(move |v: &dyn View| v.truncate(&rp(&p), len)))
        }
        3 => {
            let p = rng.file();
            matches!(kind(&p), Some(Kind::File | Kind::Symlink)).then_some(())?;
            (format!("rm {p}"), Box::new(move |v: &dyn View| v.remove_file(&rp(&p))))
        }
        4 => {
            let d = rng.dir();
            (parents_ok(&d) && kind(&d).is_none()).then_some(())?;
            (format!("mkdir -p {d}"), Box::new(move |v: &dyn View| v.mkdir_p(&rp(&d))))
        }
        5 => {
            let d = rng.dir();
            (kind(&d) == Some(Kind::Dir)).then_some(())?;
            (format!("rm -r {d}"), Box::new(move |v: &dyn View| v.remove_dir_all(&rp(&d))))
        }
        6 => {
            let (from, to) = (rng.file(), rng.file());
            let ok = from != to
                && matches!(kind(&from), Some(Kind::File | Kind::Symlink))
                && parent_is_dir(&to)
                && matches!(kind(&to), None | Some(Kind::File | Kind::Symlink));
            ok.then_some(())?;
            (format!("mv {from} {to}"), Box::new(move |v: &dyn View| v.rename(&rp(&from), &rp(&to))))
        }
        7 => {
            let (from, to) = (rng.dir(), rng.dir());
            let ok = kind(&from) == Some(Kind::Dir)
                && kind(&to).is_none()
                && parent_is_dir(&to)
                && !rp(&to).starts_with(&rp(&from));
            ok.then_some(())?;
            (format!("mv {from}/ {to}/"), Box::new(move |v: &dyn View| v.rename(&rp(&from), &rp(&to))))
        }
        8 => {
            let p = if rng.below(2) == 0 { rng.file() } else { rng.dir() };
            let m = match kind(&p)? {
                Kind::Dir => rng.pick(&[0o700, 0o750, 0o755]),
                Kind::File => rng.pick(&[0o600, 0o640, 0o644, 0o755]),
                _ => return None,
            };
            (format!("chmod {m:o} {p}"), Box::new(move |v: &dyn View| v.chmod(&rp(&p), m)))
        }
        9 => {
            let p = rng.file();
            (parents_ok(&p) && kind(&p).is_none()).then_some(())?;
            (
                format!("ln -s {data} {p}"),
                Box::new(move |v: &dyn View| {
                    if let Some(d) = rp(&p).parent() {
                        v.mkdir_p(&d)?;
                    }
                    v.symlink(&data, &rp(&p))
                }),
            )
        }
        10 => {
            let p = rng.file();
            (kind(&p) == Some(Kind::File)).then_some(())?;
            (format!("touch -d {} {p}", old.sec), Box::new(move |v: &dyn View| v.set_mtime(&rp(&p), old)))
        }
        11 => {
            let dir = (rng.below(2) == 0).then(|| rng.dir());
            let names: Vec<&str> = ["a", "b", "c"].into_iter().filter(|_| rng.below(2) == 0).collect();
            let full = |n: &str| dir.as_ref().map(|d| format!("{d}/{n}")).unwrap_or(n.to_string());
            let ok =
                !names.is_empty() && names.iter().all(|n| parents_ok(&full(n)) && kind(&full(n)) != Some(Kind::Dir));
            ok.then_some(())?;
            let files: Vec<_> =
                names.iter().enumerate().map(|(i, n)| (rp(&full(n)), format!("{data}{i}").into_bytes())).collect();
            let what = format!("tar x {:?}", files.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>());
            (what, Box::new(move |v: &dyn View| v.extract(&files, OLD)))
        }
        _ => {
            let (from, to) = (rng.file(), rng.file());
            let ok = kind(&from) == Some(Kind::File) && parent_is_dir(&to) && kind(&to).is_none();
            ok.then_some(())?;
            (format!("ln {from} {to}"), Box::new(move |v: &dyn View| v.hard_link(&rp(&from), &rp(&to))))
        }
    })
}

fn sequences() -> u64 {
    std::env::var("CS_EMU_SEQUENCES").ok().and_then(|s| s.parse().ok()).unwrap_or(40)
}

#[test]
fn random_sequences_of_the_generators_operations_agree() {
    let Some(u) = union() else { return };
    let base = std::env::var("CS_EMU_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_cafe_u64);
    let mut failures = Vec::new();
    let mut ops_run = 0;
    for i in 0..sequences() {
        let seed = base.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
        let mut rng = Rng(seed);
        let lower = random_lower(&mut rng);
        let pair = Pair::new(&u, &|v: &PlainDir| {
            for (p, mode) in &lower {
                v.put(&rp(p), p.as_bytes()).unwrap();
                v.chmod(&rp(p), *mode).unwrap();
                v.set_mtime(&rp(p), OLD).unwrap();
            }
        });
        let mut log = vec![format!("lower {lower:?}")];
        let mut tag = 0;
        for _ in 0..25 {
            let Some((what, f)) = random_op(&mut rng, &pair.emu, &mut tag) else { continue };
            log.push(what.clone());
            ops_run += 1;
            if let Err(e) = pair.both(&what, &f).and_then(|()| pair.compare(&what)) {
                failures.push(format!("sequence {i} (seed {seed:#x}):\n  {}\n{e}", log.join("\n  ")));
                break;
            }
        }
        pair.finish();
    }
    eprintln!("{} sequences, {ops_run} operations compared", sequences());
    assert!(failures.is_empty(), "{} sequence(s) differ:\n\n{}", failures.len(), failures.join("\n\n"));
}
