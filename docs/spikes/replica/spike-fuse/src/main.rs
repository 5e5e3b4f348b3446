//! Measurement code for issue 12's spike, not product code: a read-only FUSE filesystem
//! serving a tree's metadata from memory (standing in for the metadata store) and content
//! from "cache files" (the files of STORE) through FUSE passthrough, with long entry and
//! attribute timeouts. usage: spike-fuse STORE MOUNTPOINT CONTROL_FIFO
//! CONTROL_FIFO lines: `update REL` re-reads REL from STORE (a round changed it) and
//! invalidates the kernel's caches for it (entry, attributes, page cache, and the parent's
//! entry so that overlayfs drops its negative dentries below it).
//! SPIKE_NOPASS=1 serves read() from userspace with FOPEN_KEEP_CACHE instead of passthrough.
use fuser::*;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::BufRead;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, UNIX_EPOCH};

const TTL: Duration = Duration::from_secs(86400);

struct Node {
    parent: u64,
    name: OsString,
    attr: FileAttr,
    children: BTreeMap<OsString, u64>,
    target: Option<Vec<u8>>,
}

struct Tree {
    nodes: HashMap<u64, Node>,
    next: u64,
}

impl Tree {
    fn path(&self, store: &Path, mut ino: u64) -> PathBuf {
        let mut parts = vec![];
        while ino != 1 {
            let n = &self.nodes[&ino];
            parts.push(n.name.clone());
            ino = n.parent;
        }
        let mut p = store.to_path_buf();
        for x in parts.iter().rev() {
            p.push(x);
        }
        p
    }
    /// Adds or refreshes `name` under `parent` from `store_path`; returns its inode.
    fn put(&mut self, parent: u64, name: &OsStr, store_path: &Path) -> Option<u64> {
        let md = std::fs::symlink_metadata(store_path).ok()?;
        let existing = self.nodes.get(&parent).and_then(|p| p.children.get(name).copied());
        self.next += 1;
        let ino = self.next;
        let attr = attr_of(ino, &md);
        let target =
            md.file_type().is_symlink().then(|| std::fs::read_link(store_path).unwrap().into_os_string().into_vec());
        // the old number stays answerable (open files, cwds) until the kernel forgets it
        let children = existing.map(|i| self.nodes[&i].children.clone()).unwrap_or_default();
        self.nodes.insert(ino, Node { parent, name: name.to_owned(), attr, children, target });
        self.nodes.get_mut(&parent).unwrap().children.insert(name.to_owned(), ino);
        Some(ino)
    }
    fn load(&mut self, store: &Path, dir_ino: u64, dir: &Path) {
        let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for name in names {
            let p = dir.join(&name);
            let ino = self.put(dir_ino, &name, &p).unwrap();
            if self.nodes[&ino].attr.kind == FileType::Directory {
                self.load(store, ino, &p);
            }
        }
    }
}

use std::os::unix::ffi::OsStringExt;

fn attr_of(ino: u64, md: &std::fs::Metadata) -> FileAttr {
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    };
    let t = |s: i64, ns: i64| UNIX_EPOCH + Duration::new(s as u64, ns as u32);
    FileAttr {
        ino: INodeNo(ino),
        size: md.size(),
        blocks: md.blocks(),
        atime: t(md.atime(), md.atime_nsec()),
        mtime: t(md.mtime(), md.mtime_nsec()),
        ctime: t(md.ctime(), md.ctime_nsec()),
        crtime: t(md.mtime(), md.mtime_nsec()),
        kind,
        perm: (md.mode() & 0o7777) as u16,
        nlink: if ft.is_dir() { 2 } else { 1 },
        uid: md.uid(),
        gid: md.gid(),
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

struct Fs {
    store: PathBuf,
    tree: Arc<RwLock<Tree>>,
    open: Mutex<HashMap<u64, (Option<BackingId>, Option<File>)>>,
    next_fh: Mutex<u64>,
    passthrough: bool,
}

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if self.passthrough {
            config
                .add_capabilities(InitFlags::FUSE_PASSTHROUGH)
                .map_err(|_| std::io::Error::other("no passthrough"))?;
            // depth 1: overlayfs stacked on top makes 2, the kernel's maximum
            config.set_max_stack_depth(1).map_err(|_| std::io::Error::other("stack depth"))?;
        }
        let _ = config.add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        Ok(())
    }
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let t = self.tree.read().unwrap();
        match t.nodes.get(&parent.0).and_then(|p| p.children.get(name)) {
            Some(i) => reply.entry(&TTL, &t.nodes[i].attr, Generation(0)),
            None => reply.entry_with_ttls(&TTL, &TTL, &FileAttr { ino: INodeNo(0), ..t.nodes[&1].attr }, Generation(0)),
        }
    }
    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.tree.read().unwrap().nodes.get(&ino.0) {
            Some(n) => reply.attr(&TTL, &n.attr),
            None => reply.error(Errno::ENOENT),
        }
    }
    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.tree.read().unwrap().nodes.get(&ino.0).and_then(|n| n.target.clone()) {
            Some(t) => reply.data(&t),
            None => reply.error(Errno::EINVAL),
        }
    }
    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let path = self.tree.read().unwrap().path(&self.store, ino.0);
        // The version open now is the one this descriptor keeps reading (a round that
        // replaces the cache file by rename leaves this inode alone).
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => return reply.error(Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))),
        };
        let fh = {
            let mut n = self.next_fh.lock().unwrap();
            *n += 1;
            *n
        };
        if self.passthrough {
            match reply.open_backing(&file) {
                Ok(id) => {
                    reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
                    self.open.lock().unwrap().insert(fh, (Some(id), None));
                }
                Err(e) => {
                    eprintln!("open_backing: {e}");
                    reply.error(Errno::EIO)
                }
            }
        } else {
            self.open.lock().unwrap().insert(fh, (None, Some(file)));
            reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
        }
    }
    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _f: OpenFlags,
        _l: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let open = self.open.lock().unwrap();
        let Some((_, Some(file))) = open.get(&fh.0) else { return reply.error(Errno::EBADF) };
        let mut buf = vec![0u8; size as usize];
        match file.read_at(&mut buf, offset) {
            Ok(n) => reply.data(&buf[..n]),
            Err(_) => reply.error(Errno::EIO),
        }
    }
    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _f: OpenFlags,
        _l: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.open.lock().unwrap().remove(&fh.0);
        reply.ok();
    }
    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR);
    }
    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let t = self.tree.read().unwrap();
        let Some(n) = t.nodes.get(&ino.0) else { return reply.error(Errno::ENOENT) };
        let mut all = vec![
            (ino.0, FileType::Directory, OsString::from(".")),
            (n.parent.max(1), FileType::Directory, OsString::from("..")),
        ];
        all.extend(n.children.iter().map(|(name, i)| (*i, t.nodes[i].attr.kind, name.clone())));
        for (k, (i, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(i), (k + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let store = PathBuf::from(&a[1]);
    let t0 = std::time::Instant::now();
    let md = std::fs::metadata(&store).unwrap();
    let mut tree = Tree { nodes: HashMap::new(), next: 1 };
    tree.nodes.insert(
        1,
        Node { parent: 1, name: OsString::new(), attr: attr_of(1, &md), children: BTreeMap::new(), target: None },
    );
    tree.load(&store, 1, &store);
    eprintln!("spike-fuse: {} nodes loaded in {:?}", tree.nodes.len(), t0.elapsed());
    let tree = Arc::new(RwLock::new(tree));
    let passthrough = std::env::var_os("SPIKE_NOPASS").is_none();
    let fs = Fs {
        store: store.clone(),
        tree: tree.clone(),
        open: Mutex::new(HashMap::new()),
        next_fh: Mutex::new(0),
        passthrough,
    };
    let mut cfg = Config::default();
    cfg.mount_options =
        vec![MountOption::RO, MountOption::FSName("spike-fuse".into()), MountOption::DefaultPermissions];
    cfg.acl = SessionACL::All;
    cfg.n_threads = Some(2);
    cfg.clone_fd = true;
    let session = spawn_mount(fs, &a[2], &cfg).expect("mount");
    let notifier = session.notifier();
    eprintln!("spike-fuse: mounted (passthrough {passthrough})");
    // Control: a round changed REL in the store.
    loop {
        let f = std::io::BufReader::new(File::open(&a[3]).expect("fifo"));
        for line in f.lines() {
            let line = line.unwrap();
            let Some(rel) = line.strip_prefix("update ") else {
                if line == "quit" {
                    drop(session);
                    return;
                }
                continue;
            };
            let rel = Path::new(rel);
            let (parent_rel, name) = (rel.parent().unwrap(), rel.file_name().unwrap());
            let mut t = tree.write().unwrap();
            let mut parent = 1u64;
            for c in parent_rel.components() {
                parent = t.nodes[&parent].children[c.as_os_str()];
            }
            let sp = store.join(rel);
            let old = t.nodes[&parent].children.get(name).copied();
            let new = t.put(parent, name, &sp);
            if new.is_none() {
                t.nodes.get_mut(&parent).unwrap().children.remove(name);
            }
            // A name that appears: the parent directory gets a new number too, so that
            // overlayfs's revalidation of it fails and drops its cached negative children.
            let (pp, pname) = (t.nodes[&parent].parent, t.nodes[&parent].name.clone());
            let new_parent = (old.is_none() && parent != 1).then(|| {
                let pp_path = t.path(&store, parent);
                t.put(pp, &pname, &pp_path).unwrap()
            });
            drop(t);
            let r1 = notifier.inval_entry(INodeNo(parent), name);
            let r3 = new_parent.map(|_| notifier.inval_entry(INodeNo(pp), &pname));
            eprintln!(
                "spike-fuse: update {} -> {:?} (was {:?}) parent renumbered {:?}: {:?} {:?}",
                rel.display(),
                new,
                old,
                new_parent,
                r1,
                r3
            );
            let _ = name.as_bytes();
        }
    }
}
