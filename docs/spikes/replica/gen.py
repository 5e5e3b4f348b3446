# Measurement fixtures for issue 12's spike: W4-like sets and W5-like git repos.
import os, random, subprocess, sys
root = sys.argv[1]
OLD = 1_600_000_000
def w(p, data, old=False):
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f: f.write(data)
    if old: os.utime(p, (OLD, OLD))
rng = random.Random(2)
for r in range(3):
    base = f"{root}/w4/set-r{r}"
    for i in range(2000):
        n = 4096 + rng.randrange(60 * 1024 + 1)
        w(f"{base}/d{i//100:02}/f{i:04}", rng.randbytes(n))
words = b"alpha beta gamma delta fn let mut struct impl pub use crate self".split()
repo0 = f"{root}/w5/repo-r0"
for i in range(5000):
    n = 1024 + rng.randrange(2048)
    t = b" ".join(rng.choice(words) for _ in range(n // 5))[:n]
    w(f"{repo0}/pkg{i//200:02}/mod{(i//20)%10:02}/file{i:04}.txt", t, old=True)
g = ["git", "-C", repo0, "-c", "user.name=b", "-c", "user.email=b@l", "-c", "init.defaultBranch=main"]
for a in (["init", "-q"], ["config", "core.checkStat", "minimal"], ["config", "core.trustctime", "false"],
          ["add", "-A"], ["commit", "-q", "-m", "gen"], ["gc", "-q"]):
    subprocess.run(g + a, check=True)
for r in (1, 2):
    subprocess.run(["cp", "-a", repo0, f"{root}/w5/repo-r{r}"], check=True)
