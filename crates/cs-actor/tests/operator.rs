//! End to end, issue 13 parts 4 and 5, on one bed (real broker, sshfs, union and compute
//! service; the compute service reaches the broker through a shaper so that a round can be
//! slowed down):
//!
//! - `cs-actor doctor` on the healthy bed (both services found by their control sockets:
//!   nothing fails, exit 0), and on a broken setup (a token file mode 0644, the broker URL on a
//!   closed port, a max_user_watches limit below the upper layer's directories): exit 1, each
//!   problem named with its fix.
//! - `cs-actor sync --wait` during a round slowed to a few seconds: a progress bar with the step
//!   and byte counts on a pseudo-terminal (`script` from util-linux), plain lines without
//!   escape sequences when the output is not a terminal, and the same progress in `status`.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use cs_shaper::{LinkConfig, Shaper};
use support::*;

per_union! {
    both: [
        doctor_and_progress_on_a_real_bed,
    ],
}

fn tools() -> bool {
    cs_testbed::real_tools_available()
}

fn doctor_and_progress_on_a_real_bed() {
    if !tools() {
        eprintln!("skipping: real tools (sshd, sshfs, unionfs-fuse) unavailable");
        return;
    }
    let mut bed = Bed::new("operator");
    bed.start_broker();
    let broker: SocketAddr = format!("127.0.0.1:{}", bed.broker_port).parse().unwrap();
    let (shaper, via) = Shaper::start_route(LinkConfig::none(), broker).expect("shaper");
    bed.start_compute_opts("gpu-1", &ComputeOpts { server: Some(format!("ws://{via}")), ..Default::default() });

    doctor_on_the_healthy_bed(&bed);
    doctor_on_a_broken_setup(&bed);

    // About 32 MiB of incompressible data at 6 MiB/s: step 3 streams for several seconds.
    shaper.set_config(LinkConfig::none().with_bandwidth(6 << 20));
    progress_on_a_terminal(&bed);
    progress_in_plain_lines_and_status(&bed);
    shaper.set_config(LinkConfig::none());
    bed.finish();
}

fn doctor_on_the_healthy_bed(bed: &Bed) {
    for sock in [&bed.c().sock, &bed.project_sock] {
        let out = cli(&["doctor", "--control-socket", &sock.display().to_string()], Duration::from_secs(120));
        assert!(out.ok(), "doctor on the healthy bed ({}) exited non-zero: {}", sock.display(), out.describe());
        assert!(!out.stdout.contains("[FAIL]"), "{}", out.stdout);
        assert!(out.stdout.contains("clock") && out.stdout.contains("not checked"), "{}", out.stdout);
        assert!(out.stdout.contains("nothing blocks syncing"), "{}", out.stdout);
    }
    let out = cli(&["doctor", "--control-socket", &bed.c().sock.display().to_string()], Duration::from_secs(120));
    eprintln!("doctor on the healthy bed:\n{}", out.stdout);
    for line in ["[ok  ] service", "[ok  ] fuse ", "[ok  ] token file", "[ok  ] broker", "[ok  ] inotify"] {
        assert!(out.stdout.contains(line), "no {line:?} in:\n{}", out.stdout);
    }
    // The union backend the service runs is among what doctor checks.
    assert!(out.stdout.contains(bed.union.name()), "{}", out.stdout);
}

fn doctor_on_a_broken_setup(bed: &Bed) {
    let loose = bed.root.join("loose-token");
    std::fs::write(&loose, format!("{}\n", bed.token("gpu-1"))).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let closed = free_port();
    let config = bed.root.join("broken.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"ws://127.0.0.1:{closed}\"\nid = \"gpu-1\"\ntoken_file = \"{}\"\nupper = \"{}\"\n\
             control_socket = \"{}\"\n",
            loose.display(),
            bed.upper().display(),
            bed.root.join("nobody.sock").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["doctor", "--config", &config.display().to_string()]).env("CS_DOCTOR_MAX_USER_WATCHES", "1");
    let out = run(cmd, Duration::from_secs(120));
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{}", out.describe());
    let text = &out.stdout;
    eprintln!("doctor on the broken setup:\n{text}");
    // Each problem on its own line: the check, what is wrong, and the fix.
    let expect: [(&str, Vec<String>); 4] = [
        (
            "[FAIL] token file",
            vec![format!("{} is mode 0644", loose.display()), format!("fix: chmod 600 {}", loose.display())],
        ),
        (
            "[FAIL] broker",
            vec![format!("127.0.0.1:{closed} unreachable"), "fix: start `cs-actor project` there".into()],
        ),
        (
            "[WARN] inotify",
            vec!["fs.inotify.max_user_watches 1,".into(), "fix: sysctl -w fs.inotify.max_user_watches=".into()],
        ),
        ("[WARN] service", vec!["no compute service answers".into()]),
    ];
    for (check, fragments) in &expect {
        let line =
            text.lines().find(|l| l.starts_with(check)).unwrap_or_else(|| panic!("no {check:?} line in:\n{text}"));
        for f in fragments {
            assert!(line.contains(f.as_str()), "{check}: no {f:?} in {line:?}");
        }
    }
    assert!(text.contains("doctor: 2 problem(s) block syncing"), "{text}");
}

/// `script` runs the command on a pseudo-terminal (sized 200 columns: a new pty has none) and
/// copies what it shows to its stdout. Its stdin stays open until the end (it would stop at EOF).
fn progress_on_a_terminal(bed: &Bed) {
    put(&bed.merged(), "big/one.bin", noise(1, 32 << 20));
    let inner = format!("stty cols 200 rows 40; '{BIN}' sync --wait --control-socket '{}'", bed.c().sock.display());
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &inner, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    let _stdin = child.stdin.take();
    let mut shown = String::new();
    child.stdout.take().unwrap().read_to_string(&mut shown).unwrap();
    let status = child.wait().unwrap();
    let tail: String = shown.chars().rev().take(1500).collect::<Vec<_>>().into_iter().rev().collect();
    eprintln!("sync --wait on a pty showed (the end):\n{tail:?}");
    assert!(status.success(), "sync --wait on a pty: {status}; it showed:\n{shown}");
    assert!(shown.contains("step 3/5 (writes_to_project)"), "no step 3 progress on the pty:\n{shown:?}");
    assert!(shown.contains(" of 32.00 MiB"), "no byte counts of the total on the pty:\n{shown:?}");
    assert!(shown.contains("\x1b["), "a bar redraws in place (escape sequences):\n{shown:?}");
    assert!(shown.contains("committed"), "{shown:?}");
}

fn progress_in_plain_lines_and_status(bed: &Bed) {
    put(&bed.merged(), "big/two.bin", noise(2, 32 << 20));
    let sock = bed.c().sock.display().to_string();
    let waiting = {
        let sock = sock.clone();
        std::thread::spawn(move || cli(&["sync", "--wait", "--control-socket", &sock], Duration::from_secs(180)))
    };
    let status_line = poll(Duration::from_secs(60), Duration::from_millis(200), || {
        let out = cli(&["status", "--control-socket", &sock], Duration::from_secs(20));
        out.stdout.lines().find(|l| l.contains("progress    round") && l.contains("MiB")).map(str::to_string)
    });
    let out = waiting.join().unwrap();
    assert!(out.ok(), "{}", out.describe());
    let line = status_line.unwrap_or_else(|| panic!("status never showed the step in flight"));
    eprintln!("status showed: {line}\nsync --wait off a terminal: {}{}", out.stderr, out.stdout);
    assert!(line.contains("(writes_to_project)") && line.contains(" of ") && line.contains("/s"), "{line}");
    let progress: Vec<&str> = out.stderr.lines().filter(|l| l.contains("step 3/5 (writes_to_project):")).collect();
    assert!(!progress.is_empty(), "no plain progress line:\n{}", out.stderr);
    assert!(progress.iter().any(|l| l.contains(" of 32.0 MiB")), "{progress:?}");
    assert!(!out.stderr.contains('\x1b') && !out.stdout.contains('\x1b'), "escape sequences off a terminal");
    assert!(out.stdout.trim().ends_with("committed"), "{}", out.stdout);
}
