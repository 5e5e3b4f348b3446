//! Random operations on random paths through a hostile tree never change
//! anything outside the root, and never panic.

mod common;

use common::{snapshot, ts, Hostile};
use cs_safe_fs::RelPath;
use proptest::prelude::*;

fn component() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "evil",
        "evil2",
        "outside",
        "victim.txt",
        "sub",
        "deeper",
        "d",
        "inner",
        "f",
        "file",
        "link_to_victim",
        "new",
    ])
    .prop_map(str::to_string)
}

fn path() -> impl Strategy<Value = RelPath> {
    prop::collection::vec(component(), 1..5).prop_map(|c| RelPath::new(c.join("/")).unwrap())
}

#[derive(Debug, Clone)]
enum Op {
    WriteTemp(RelPath, String),
    SymlinkTemp(RelPath, String),
    CreateDir(RelPath),
    CreateDirAll(RelPath),
    SetMode(RelPath),
    SetMtime(RelPath),
    RemoveFile(RelPath),
    RemoveDir(RelPath),
    RemoveTree(RelPath),
    Rename(RelPath, RelPath),
    RenameNoreplace(RelPath, RelPath),
    Read(RelPath),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (path(), component()).prop_map(|(p, n)| Op::WriteTemp(p, n)),
        (path(), component()).prop_map(|(p, n)| Op::SymlinkTemp(p, n)),
        path().prop_map(Op::CreateDir),
        path().prop_map(Op::CreateDirAll),
        path().prop_map(Op::SetMode),
        path().prop_map(Op::SetMtime),
        path().prop_map(Op::RemoveFile),
        path().prop_map(Op::RemoveDir),
        path().prop_map(Op::RemoveTree),
        (path(), path()).prop_map(|(a, b)| Op::Rename(a, b)),
        (path(), path()).prop_map(|(a, b)| Op::RenameNoreplace(a, b)),
        path().prop_map(Op::Read),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_never_touch_the_outside(ops in prop::collection::vec(op(), 1..40)) {
        let h = Hostile::new();
        let before = snapshot(&h.outside());
        let r = &h.root;
        for op in &ops {
            let m = ts(3, 3);
            let _ = match op {
                Op::WriteTemp(p, n) => r.write_temp(p, n, &mut &b"pwned"[..], 0o777, m, false).map(|_| ()),
                Op::SymlinkTemp(p, n) => r.symlink_temp(p, n, "/", m).map(|_| ()),
                Op::CreateDir(p) => r.create_dir(p, 0o777),
                Op::CreateDirAll(p) => r.create_dir_all(p, 0o777),
                Op::SetMode(p) => r.set_mode(p, 0o777),
                Op::SetMtime(p) => r.set_mtime(p, m),
                Op::RemoveFile(p) => r.remove_file(p),
                Op::RemoveDir(p) => r.remove_dir(p),
                Op::RemoveTree(p) => r.remove_tree(p),
                Op::Rename(a, b) => r.rename(a, b),
                Op::RenameNoreplace(a, b) => r.rename_noreplace(a, b),
                Op::Read(p) => r.lstat(p).map(|_| ())
                    .and(r.open_file(p).map(|_| ()).or(Ok(())))
                    .and(r.read_dir(Some(p)).map(|_| ()).or(Ok(())))
                    .and(r.same_content(p, p).map(|_| ()).or(Ok(()))),
            };
            prop_assert_eq!(&snapshot(&h.outside()), &before, "after {:?}", op);
        }
    }
}
