//! The background fetch (`FillerHandle::hydrate`), really: a loop image, kernel overlayfs
//! over a placeholder tree, fanotify, and an unprivileged reader through the merged view.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use cs_replica::fill::Hydrate;

/// Every placeholder left under `tree` (relative paths).
fn placeholders(tree: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && rustix::fs::lgetxattr(e.path(), "user.cs.want", &mut [0u8; 4096][..]).is_ok() {
                out.push(e.path().strip_prefix(tree).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

fn wait_done(bed: &Bed) -> cs_replica::FillStats {
    let t = Instant::now();
    loop {
        let s = bed.stats();
        if s.hydrate == Some("done") {
            return s;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "hydration not done within 30 s: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hydrate_fetches_every_placeholder_smallest_first_and_reads_then_fetch_nothing() {
    if !root_or_skip("hydrate_fetches_every_placeholder_smallest_first_and_reads_then_fetch_nothing") {
        return;
    }
    let (mut bed, src) = Bed::full(make_project, |p| CopySource::new(p, Behaviour::Copy), |c| c);
    let before = placeholders(&bed.tree_dir());
    assert!(before.len() > 20, "{before:?}");
    let tree = bed.tree_dir();
    bed.filler.as_mut().unwrap().hydrate(Hydrate { tree: tree.clone(), only: None }).unwrap();
    let s = wait_done(&bed);
    assert_eq!(placeholders(&tree), Vec::<String>::new(), "every file fetched");
    // `empty` is a file of 0 bytes with nothing to fetch, but still a placeholder: fetched too.
    assert_eq!(s.hydrated as usize, before.len(), "{s:?}");
    assert_eq!((s.hydrate_left_files, s.denied), (0, 0), "{s:?}");
    // Smallest first: in the order asked, the empty file first, the two big ones last.
    let asked: Vec<String> = src.asked.lock().unwrap().iter().flatten().map(|p| p.to_string()).collect();
    assert_eq!(asked.first().map(String::as_str), Some("empty"), "{asked:?}");
    assert_eq!(asked[asked.len() - 2..], ["big/big2.bin", "big/big.bin"], "{asked:?}");
    // Now every read is local: no fetch.
    let calls = src.calls();
    for f in ["a.txt", "sub/deep/file.bin", "many/f13", "big/big.bin"] {
        assert_eq!(cat(&bed.merged.join(f)).unwrap(), std::fs::read(bed.project.join(f)).unwrap(), "{f}");
    }
    assert_eq!(src.calls(), calls, "a read after hydration fetched");
    assert!(bed.filler.as_mut().unwrap().hydrate(Hydrate { tree, only: None }).is_err(), "a second call is refused");
}

#[test]
fn prefetch_patterns_fetch_only_what_they_match_and_a_bad_pattern_is_refused_by_name() {
    if !root_or_skip("prefetch_patterns_fetch_only_what_they_match_and_a_bad_pattern_is_refused_by_name") {
        return;
    }
    let (mut bed, _src) = Bed::full(make_project, |p| CopySource::new(p, Behaviour::Copy), |c| c);
    let tree = bed.tree_dir();
    let bad = Hydrate { tree: tree.clone(), only: Some(vec!["*.py".into(), "data/{a,b".into()]) };
    let e = bed.filler.as_mut().unwrap().hydrate(bad).unwrap_err().to_string();
    assert!(e.contains("prefetch pattern \"data/{a,b\""), "{e}");
    let plan = Hydrate { tree: tree.clone(), only: Some(vec!["many/".into(), "*.txt".into()]) };
    bed.filler.as_mut().unwrap().hydrate(plan).unwrap();
    wait_done(&bed);
    let left = placeholders(&tree);
    assert!(left.iter().all(|p| !p.starts_with("many/") && !p.ends_with(".txt")), "matched files left: {left:?}");
    for p in ["big/big.bin", "sub/deep/file.bin", "run.sh"] {
        assert!(left.contains(&p.to_string()), "{p} fetched though not matched: {left:?}");
    }
}

#[test]
fn a_file_p_lost_is_given_up_after_three_tries_and_hydration_still_ends() {
    if !root_or_skip("a_file_p_lost_is_given_up_after_three_tries_and_hydration_still_ends") {
        return;
    }
    let (mut bed, src) = Bed::full(make_project, |p| CopySource::new(p, Behaviour::Copy), |c| c);
    // P deletes it after the snapshot: its placeholder stays (the round hides it in the
    // merged view), and every fetch of it says "missing".
    std::fs::remove_file(bed.project.join("many/f05")).unwrap();
    let tree = bed.tree_dir();
    bed.filler.as_mut().unwrap().hydrate(Hydrate { tree: tree.clone(), only: Some(vec!["many/".into()]) }).unwrap();
    let s = wait_done(&bed);
    assert_eq!(s.hydrate_given_up, 1, "{s:?}");
    let many: Vec<_> = placeholders(&tree).into_iter().filter(|p| p.starts_with("many/")).collect();
    assert_eq!(many, ["many/f05"]);
    let asked = src.asked.lock().unwrap().iter().flatten().filter(|p| p.to_string() == "many/f05").count();
    assert_eq!(asked, 3, "asked three times, then given up");
}
