# Measurement code (issue 12 spike): W4-like and W5-like workloads on local ext4 and on kernel
# overlayfs over each candidate lower, side by side in one run. Run as root under nice -n 19.
import os, statistics, subprocess, sys, time
B = "/var/tmp/spike-a"; S = f"{B}/store"; FUSE_BIN = "/var/tmp/spike-target/release/spike-fuse"
def sh(c, **k): return subprocess.run(c, shell=True, check=True, **k)
def overlay(lower, name, opts="redirect_dir=on,index=on"):
    d = f"{B}/{name}"; sh(f"rm -rf {d}; mkdir -p {d}/up {d}/wk {d}/m")
    sh(f"mount -t overlay overlay -o lowerdir={lower},upperdir={d}/up,workdir={d}/wk,{opts} {d}/m")
    return f"{d}/m"
procs, mounts = [], []
def start(cmd, env=None, log=None):
    p = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stderr=open(log, "w") if log else None); procs.append(p); return p
def fuse(name, env):
    mp = f"{B}/{name}-lower"; fifo = f"{B}/{name}.ctl"; sh(f"mkdir -p {mp}; rm -f {fifo}; mkfifo {fifo}")
    start([FUSE_BIN, S, mp, fifo], env, f"{B}/{name}.log")
    for _ in range(100):
        if os.path.ismount(mp): break
        time.sleep(0.05)
    mounts.append(mp); return mp
setups = {}
try:
    setups["local ext4"] = S
    setups["overlay / ext4 copy"] = overlay(S, "ol"); mounts.insert(0, setups["overlay / ext4 copy"])
    setups["overlay / ext4 copy on a loop image"] = overlay(f"{B}/mnt2/copy", "ol2"); mounts.insert(0, setups["overlay / ext4 copy on a loop image"])
    fl = fuse("fp", {}); setups["overlay / FUSE passthrough"] = overlay(fl, "of"); mounts.insert(0, setups["overlay / FUSE passthrough"])
    fn = fuse("fn", {"SPIKE_NOPASS": "1"}); setups["overlay / FUSE no passthrough"] = overlay(fn, "ofn"); mounts.insert(0, setups["overlay / FUSE no passthrough"])
    # candidate (a): placeholder replica on its own (journaled loop) ext4, filled at first open
    sh(f"rm -rf {B}/mnt/rep && python3 {B}/placeholders.py {S} {B}/mnt/rep")
    start([f"{B}/hsm", "fs", f"{B}/mnt/rep", S, "0"], {"HSM_OPEN": "1", **({"HSM_SYNC_FIRST": "1"} if os.environ.get("HSM_SYNC_FIRST") else {})}, f"{B}/hsm-bench.log"); time.sleep(0.3)
    setups["overlay / fanotify placeholders"] = overlay(f"{B}/mnt/rep", "oa"); mounts.insert(0, setups["overlay / fanotify placeholders"])
    for n, m in setups.items():
        print(f"{n}: {m}", file=sys.stderr)
    res = {n: {"W4": [], "W4p": [], "W5": [], "W5w": []} for n in setups}
    for r in range(3):
        for n, v in setups.items():
            out = subprocess.run([f"{B}/w4", f"{v}/w4/set-r{r}"], capture_output=True, text=True, check=True).stdout.split()
            res[n]["W4"].append(float(out[0])); res[n]["W4p"].append([float(x) for x in out[1:4]])
            repo = f"{v}/w5/repo-r{r}"
            t = time.perf_counter()
            o = subprocess.run(["bash", "-c", f"git -C '{repo}' status --porcelain | wc -l; find '{repo}' -type f | wc -l"], capture_output=True, text=True, check=True).stdout.split()
            res[n]["W5"].append(time.perf_counter() - t)
            assert int(o[1]) >= 5000 and int(o[0]) == 0, (n, o)
            t = time.perf_counter()
            subprocess.run(["bash", "-c", f"git -C '{repo}' status --porcelain | wc -l; find '{repo}' -type f | wc -l"], capture_output=True, check=True)
            res[n]["W5w"].append(time.perf_counter() - t)
    time.sleep(5)  # the deferred fdatasyncs of the fills
    for n, v in setups.items():
        out = subprocess.run([f"{B}/w4", f"{v}/w4/set-r0"], capture_output=True, text=True, check=True).stdout.split()
        res[n]["W4w"] = float(out[0])
    base4w = res["local ext4"]["W4w"]
    base5w = statistics.median(res["local ext4"]["W5w"])
    base4, base5 = statistics.median(res["local ext4"]["W4"]), statistics.median(res["local ext4"]["W5"])
    print("| setup | W4 3 passes, s | / local | W4 pass 1 / 2 / 3 (run 1), s | first open, µs/file (pass 1 of each run, median) | W4 again (3 warm passes), s | / local | W5 status+find, s | / local | W5 again (warm), s | / local |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n, x in res.items():
        w4, w5 = statistics.median(x["W4"]), statistics.median(x["W5"])
        p = x["W4p"][0]; first = statistics.median(pp[0] for pp in x["W4p"]) / 2000 * 1e6
        print(f"| {n} | {w4:.3f} ({min(x['W4']):.3f}–{max(x['W4']):.3f}) | {w4/base4:.2f}× | {p[0]:.3f} / {p[1]:.3f} / {p[2]:.3f} | {first:.0f} | {x['W4w']:.3f} | {x['W4w']/base4w:.2f}× | {w5:.3f} ({min(x['W5']):.3f}–{max(x['W5']):.3f}) | {w5/base5:.2f}× | {statistics.median(x['W5w']):.3f} | {statistics.median(x['W5w'])/base5w:.2f}× |")
finally:
    for m in mounts:
        subprocess.run(["umount", m])
    for p in procs:
        p.terminate(); p.wait()
    subprocess.run(f"mount | grep spike-a | grep -v '/mnt type ext4'", shell=True)
