//! Everything the workloads use, generated on this machine: a C project, a git repository,
//! wheels built with `pip wheel`, file sets. Deterministic (fixed seeds).

use std::fs::{self, File, FileTimes};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::util::{output, run};

/// A small fast PRNG (xorshift64*), so fixtures are the same at every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Incompressible bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

const WORDS: [&str; 32] = [
    "alpha", "beta", "gamma", "delta", "tensor", "kernel", "buffer", "stream", "vector", "matrix", "compute",
    "project", "layer", "upper", "lower", "round", "merge", "commit", "cursor", "journal", "index", "sync", "value",
    "result", "return", "static", "const", "struct", "float", "double", "while", "for",
];

/// About `len` bytes of source-like text (compresses 3 to 4 times with zstd).
pub fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut s = Vec::with_capacity(len + 16);
    let mut col = 0;
    while s.len() < len {
        let w = WORDS[rng.below(WORDS.len() as u64) as usize];
        s.extend_from_slice(w.as_bytes());
        col += w.len() + 1;
        if col > 72 {
            s.push(b'\n');
            col = 0;
        } else {
            s.push(if rng.below(7) == 0 { b'_' } else { b' ' });
        }
    }
    s.truncate(len);
    s
}

/// A fixed, old modification time (so git never sees "racily clean" entries).
pub fn old_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p)?;
    }
    fs::write(path, data).with_context(|| format!("write {}", path.display()))
}

fn write_old(path: &Path, data: &[u8]) -> Result<()> {
    write(path, data)?;
    File::options()
        .write(true)
        .open(path)?
        .set_times(FileTimes::new().set_modified(old_time()).set_accessed(old_time()))?;
    Ok(())
}

/// W1: a C project of `n` source files with a shared header and a Makefile that, like nvcc,
/// writes intermediate files (`-save-temps`: `.i`, `.s`) and a dependency file per object and
/// deletes the intermediates.
pub fn c_project(dir: &Path, n: usize) -> Result<()> {
    let mut rng = Rng::new(1);
    let mut h = String::from("#ifndef COMMON_H\n#define COMMON_H\n#include <stddef.h>\n#include <stdint.h>\n\n");
    h.push_str("typedef struct { double x, y, z; int64_t id; } item_t;\n#define SCALE(v, k) ((v) * (k) + 1.0)\n\n");
    for i in 0..n {
        h.push_str(&format!("double unit_{i}(const item_t *items, size_t n);\n"));
    }
    h.push_str("#endif\n");
    write(&dir.join("include/common.h"), h.as_bytes())?;
    for i in 0..n {
        let mut c = String::from("#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n#include <math.h>\n#include \"common.h\"\n\n");
        for f in 0..24 {
            let k = rng.below(97) + 3;
            c.push_str(&format!(
                "static double f{i}_{f}(const item_t *it, size_t n) {{\n    double acc = {k}.0;\n    for (size_t j = 0; j < n; j++) {{\n        double v = SCALE(it[j].x, {k}) - it[j].y / (1.0 + fabs(it[j].z));\n        if ((it[j].id + {f}) % 3 == 0) acc += v * v; else acc -= sqrt(fabs(v)) * {k};\n        for (int r = 0; r < {rr}; r++) acc = acc * 0.999 + (double)(r ^ (int)j);\n    }}\n    return acc;\n}}\n\n",
                rr = rng.below(5) + 1
            ));
        }
        c.push_str(&format!("double unit_{i}(const item_t *items, size_t n) {{\n    double s = 0;\n"));
        for f in 0..24 {
            c.push_str(&format!("    s += f{i}_{f}(items, n);\n"));
        }
        c.push_str("    return s;\n}\n");
        write(&dir.join(format!("src/unit_{i:03}.c")), c.as_bytes())?;
    }
    let mut m = String::from("#include <stdio.h>\n#include \"common.h\"\nint main(void) {\n    item_t it[4] = {{1,2,3,4},{5,6,7,8},{9,1,2,3},{4,5,6,7}};\n    double s = 0;\n");
    for i in 0..n {
        m.push_str(&format!("    s += unit_{i}(it, 4);\n"));
    }
    m.push_str("    printf(\"%f\\n\", s);\n    return 0;\n}\n");
    write(&dir.join("src/main.c"), m.as_bytes())?;
    let mk = "CC ?= cc\nCFLAGS ?= -O2\nSRCS := $(wildcard src/*.c)\nOBJS := $(SRCS:src/%.c=build/%.o)\n\n\
app: $(OBJS)\n\t$(CC) -o $@ $(OBJS) -lm\n\n\
build/%.o: src/%.c include/common.h | build\n\t$(CC) $(CFLAGS) -Iinclude -MMD -save-temps=obj -c $< -o $@\n\trm -f build/$*.i build/$*.s\n\n\
build:\n\tmkdir -p build\n\n\
clean:\n\trm -rf build app\n\n.PHONY: clean\n";
    write(&dir.join("Makefile"), mk.as_bytes())?;
    Ok(())
}

/// A git repository of `n` text files (1 to 3 KiB, 20 per directory, two levels), committed
/// and packed, every file with an old mtime. `core.checkStat=minimal` and
/// `core.trustctime=false` make `git status` compare what every filesystem here reports
/// identically (mtime and size), so a copy of the repository is clean without re-reading
/// files: W5 then measures metadata, as the issue asks (see docs/benchmarks.md).
pub fn git_repo(dir: &Path, n: usize, log: &Path) -> Result<()> {
    let mut rng = Rng::new(2);
    for i in 0..n {
        let p = dir.join(format!("pkg{:02}/mod{:02}/file{:04}.txt", i / 200, (i / 20) % 10, i));
        let len = 1024 + rng.below(2048) as usize;
        write_old(&p, &text(&mut rng, len))?;
    }
    let git = |args: &[&str]| -> Result<()> {
        let mut c = Command::new("git");
        c.arg("-C").arg(dir).args([
            "-c",
            "user.name=cs-bench",
            "-c",
            "user.email=bench@localhost",
            "-c",
            "init.defaultBranch=main",
        ]);
        c.args(args);
        run(&mut c, log, Duration::from_secs(600)).map(|_| ())
    };
    git(&["init", "-q"])?;
    git(&["config", "core.checkStat", "minimal"])?;
    git(&["config", "core.trustctime", "false"])?;
    git(&["add", "-A"])?;
    git(&["commit", "-q", "-m", "generated by cs-bench"])?;
    git(&["gc", "-q"])?;
    Ok(())
}

/// W4: `n` files of 4 to 64 KiB (incompressible), 100 per directory.
pub fn read_set(dir: &Path, n: usize, seed: u64) -> Result<u64> {
    let mut rng = Rng::new(seed);
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    for i in 0..n {
        let len = 4096 + rng.below(60 * 1024 + 1) as usize;
        rng.fill(&mut buf[..len]);
        write(&dir.join(format!("d{:02}/f{:04}", i / 100, i)), &buf[..len])?;
        total += len as u64;
    }
    Ok(total)
}

/// S1: `n` new files of exactly 4 KiB of source-like text, 100 per directory.
pub fn small_files(dir: &Path, n: usize, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    for i in 0..n {
        let p = dir.join(format!("d{:03}/f{:05}.txt", i / 100, i));
        write(&p, &text(&mut rng, 4096))?;
    }
    Ok(())
}

/// S2: `count` files of `bytes` each, incompressible (like checkpoints or archives).
pub fn big_files(dir: &Path, count: usize, bytes: u64, seed: u64) -> Result<()> {
    fs::create_dir_all(dir)?;
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..count {
        let p = dir.join(format!("blob{i}.bin"));
        let mut f = std::io::BufWriter::new(File::create(&p).with_context(|| format!("create {}", p.display()))?);
        let mut left = bytes;
        while left > 0 {
            let k = left.min(buf.len() as u64) as usize;
            rng.fill(&mut buf[..k]);
            f.write_all(&buf[..k])?;
            left -= k as u64;
        }
        f.flush()?;
    }
    Ok(())
}

/// S3: a project of `n` small files (100 to 400 bytes), 100 per directory.
pub fn many_small(dir: &Path, n: usize, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    for i in 0..n {
        let len = 100 + rng.below(300) as usize;
        write(&dir.join(format!("src{:04}/f{:06}.txt", i / 100, i)), &text(&mut rng, len))?;
    }
    Ok(())
}

/// The in-tree PEP 517 build backend of each generated package: it zips the package into a
/// wheel with the standard library only, so `pip wheel --no-index` needs nothing from an index.
const BACKEND: &str = r#"import base64, hashlib, os, zipfile
NAME = "@NAME@"
VERSION = "1.0"

def get_requires_for_build_wheel(config_settings=None):
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    root = os.path.dirname(os.path.abspath(__file__))
    name = f"{NAME}-{VERSION}-py3-none-any.whl"
    records = []
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w", zipfile.ZIP_DEFLATED) as z:
        def add(arc, data):
            z.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{arc},sha256={digest},{len(data)}")
        for dirpath, dirs, files in os.walk(os.path.join(root, NAME)):
            dirs.sort()
            for f in sorted(files):
                full = os.path.join(dirpath, f)
                with open(full, "rb") as fh:
                    add(os.path.relpath(full, root).replace(os.sep, "/"), fh.read())
        info = f"{NAME}-{VERSION}.dist-info"
        add(info + "/METADATA", f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n".encode())
        add(info + "/WHEEL", b"Wheel-Version: 1.0\nGenerator: cs-bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        add(info + "/top_level.txt", (NAME + "\n").encode())
        records.append(info + "/RECORD,,")
        z.writestr(info + "/RECORD", "\n".join(records) + "\n")
    return name
"#;

/// W3's wheelhouse: `wheels` packages of `modules` modules each (in 4 subpackages), built
/// here with `pip wheel --no-index --no-deps`. Returns the package names.
pub fn wheelhouse(
    work: &Path,
    house: &Path,
    python: &Path,
    wheels: usize,
    modules: usize,
    log: &Path,
) -> Result<Vec<String>> {
    fs::create_dir_all(house)?;
    let mut rng = Rng::new(3);
    let mut names = Vec::new();
    for w in 0..wheels {
        let name = format!("csbench_pkg{w}");
        let src = work.join(&name);
        write(
            &src.join("pyproject.toml"),
            format!("[build-system]\nrequires = []\nbuild-backend = \"csbench_backend\"\nbackend-path = [\".\"]\n\n[project]\nname = \"{name}\"\nversion = \"1.0\"\n").as_bytes(),
        )?;
        write(&src.join("csbench_backend.py"), BACKEND.replace("@NAME@", &name).as_bytes())?;
        write(&src.join(&name).join("__init__.py"), b"\"\"\"Generated by cs-bench.\"\"\"\n")?;
        for m in 0..modules {
            let sub = src.join(&name).join(format!("sub{}", m % 4));
            if !sub.join("__init__.py").exists() {
                write(&sub.join("__init__.py"), b"")?;
            }
            let mut body = String::new();
            for f in 0..12 {
                body.push_str(&format!(
                    "def f{f}(x, y={k}):\n    \"\"\"{doc}\"\"\"\n    total = 0\n    for i in range(x):\n        total += (i * y) % {k2}\n    return total\n\n",
                    k = rng.below(50) + 1,
                    k2 = rng.below(1000) + 7,
                    doc = String::from_utf8_lossy(&text(&mut rng, 60)).replace('\n', " "),
                ));
            }
            write(&sub.join(format!("mod{m:03}.py")), body.as_bytes())?;
        }
        let mut c = Command::new(python);
        c.args([
            "-m",
            "pip",
            "wheel",
            "--no-index",
            "--no-deps",
            "--disable-pip-version-check",
            "--no-cache-dir",
            "-q",
            "-w",
        ])
        .arg(house)
        .arg(&src);
        run(&mut c, log, Duration::from_secs(300)).with_context(|| format!("building the wheel of {name}"))?;
        names.push(name);
    }
    Ok(names)
}

/// The real Python interpreter (not a pyenv shim script, whose start-up would be timed too).
pub fn python() -> Result<std::path::PathBuf> {
    let exe = output(Command::new("python3").args(["-c", "import sys; print(sys.executable)"]))
        .context("python3 is needed for W3 (pip)")?;
    Ok(exe.trim().into())
}
