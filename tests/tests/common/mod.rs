//! What more than one test file of this crate needs.

/// Where the sshfs-lower tests make their worlds: `base` is mounted over sshfs (one
/// loopback sshd, with the sshfs options each test chooses) at `mirror`. Dropped, it
/// unmounts, stops sshd and removes the directories, in that order.
pub struct SshfsWorlds {
    pub base: std::path::PathBuf,
    pub mirror: std::path::PathBuf,
    _mount: cs_testbed::SshfsMount,
    _sshd: cs_testbed::Sshd,
    _dir: tempfile::TempDir,
}

impl SshfsWorlds {
    pub fn start(prefix: &str, scratch: &std::path::Path, sshfs_options: &[&str]) -> SshfsWorlds {
        let t = tempfile::Builder::new().prefix(prefix).tempdir_in(scratch).unwrap();
        let dir = |n: &str| {
            let p = t.path().join(n);
            std::fs::create_dir(&p).unwrap();
            std::fs::canonicalize(p).unwrap()
        };
        let (sshd_dir, base, mirror) = (dir("sshd"), dir("worlds"), dir("mirror"));
        let sshd = cs_testbed::Sshd::start(&sshd_dir).expect("start sshd");
        let opts: Vec<String> = sshfs_options.iter().map(|o| o.to_string()).collect();
        let mount = cs_testbed::sshfs_mount(&base, sshd.port(), sshd.identity(), &mirror, &opts).expect("mount sshfs");
        SshfsWorlds { base, mirror, _mount: mount, _sshd: sshd, _dir: t }
    }
}
