//! `.csignore` (docs/protocol.md, *Ignore rules*): paths it matches are never
//! synced in either direction, each side keeps its own copy; adding a rule
//! deletes nothing on either side; removing one syncs the paths again, with
//! the conflict rule where both sides have a version. Whole rounds of the
//! compute service's round over the in-memory link, on the emulated union.

use std::sync::Arc;

use cs_engine::{IgnoreRules, IGNORE_FILE};
use cs_tests::fixture::{RoundReport, World};
use cs_tests::rp;
use cs_tests::view::View;

fn text<V: View + ?Sized>(v: &V, p: &str) -> String {
    v.read_string(&rp(p)).unwrap_or_else(|e| panic!("{}: read {p}: {e}", v.name()))
}

/// C's own copy: in its upper layer, with this content.
fn c_own(w: &World, p: &str) -> String {
    assert!(w.c().upper_has(&rp(p)), "{p} is not in C's upper layer");
    std::fs::read_to_string(w.c().upper.join(p)).unwrap()
}

fn assert_no_deletes(r: &RoundReport, when: &str) {
    assert_eq!((r.deletes_to_project, r.deletes_to_compute), (0, 0), "{when}: {r:?}");
    assert!(r.conflicts.is_empty(), "{when}: {r:?}");
}

/// Convergence on the paths the rules do not ignore.
fn assert_converged_outside(w: &mut World, rules: &str) {
    let rules = IgnoreRules::parse(".csignore", rules.as_bytes()).unwrap();
    let all = w.filter.clone();
    w.filter = all.with_ignore(Arc::new(rules));
    w.assert_converged();
    w.filter = all;
}

const RULES: &str = "node_modules/\n*.pyc\n";

#[test]
fn ignored_paths_are_never_synced_in_either_direction() {
    let mut w = World::new();
    w.p().put(&rp(IGNORE_FILE), RULES.as_bytes()).unwrap();
    w.p().put(&rp("node_modules/a.js"), b"P's a").unwrap();
    w.p().put(&rp("node_modules/p_only.js"), b"P's own").unwrap();
    w.p().put(&rp("src/x.pyc"), b"P's bytecode").unwrap();
    w.p().put(&rp("src/x.py"), b"source").unwrap();
    w.c().put(&rp("node_modules/a.js"), b"C's a").unwrap();
    w.c().put(&rp("node_modules/c_only.js"), b"C's own").unwrap();
    w.c().put(&rp("lib/y.pyc"), b"C's bytecode").unwrap();
    w.c().put(&rp("lib/y.py"), b"C source").unwrap();
    // The first round already goes by P's rules (C had none before it).
    let r = w.round();
    assert_no_deletes(&r, "first round");
    assert_eq!(text(&w.p(), "node_modules/a.js"), "P's a");
    assert_eq!(c_own(&w, "node_modules/a.js"), "C's a");
    for never in ["node_modules/c_only.js", "lib/y.pyc"] {
        assert!(!w.p().exists(&rp(never)), "{never} reached P");
    }
    assert_eq!(text(&w.p(), "lib/y.py"), "C source", "the rest syncs");
    assert!(!w.c().upper_has(&rp("src/x.pyc")), "P's ignored file was copied into C's upper layer");
    assert_converged_outside(&mut w, RULES);

    // Changes on both sides, deletes included, stay where they were made.
    w.p().write(&rp("node_modules/a.js"), b"P's a, v2").unwrap();
    w.c().write(&rp("node_modules/a.js"), b"C's a, v2").unwrap();
    w.c().remove_file(&rp("node_modules/c_only.js")).unwrap();
    w.c().remove_file(&rp("src/x.pyc")).unwrap(); // P's copy, through the merged view: a whiteout
    w.p().remove_file(&rp("node_modules/p_only.js")).unwrap();
    let r = w.round();
    assert_no_deletes(&r, "second round");
    assert_eq!(text(&w.p(), "node_modules/a.js"), "P's a, v2");
    assert_eq!(c_own(&w, "node_modules/a.js"), "C's a, v2");
    assert_eq!(text(&w.p(), "src/x.pyc"), "P's bytecode", "C's delete of an ignored path reached P");
    assert!(!w.c().exists(&rp("src/x.pyc")), "C's own deletion stands in its merged view");
    let r = w.round();
    assert_no_deletes(&r, "idle round");
    assert_eq!((r.sent_to_project, r.sent_to_compute), (0, 0), "{r:?}");
    assert_converged_outside(&mut w, RULES);
}

#[test]
fn adding_an_ignore_rule_deletes_nothing_on_either_side() {
    let mut w = World::new();
    w.c().put(&rp("node_modules/a.js"), b"a").unwrap();
    w.c().put(&rp("node_modules/b.js"), b"b").unwrap();
    w.c().put(&rp("build/out.o"), b"obj").unwrap();
    w.round();
    w.p().write(&rp("node_modules/a.js"), b"a from P").unwrap();
    w.p().put(&rp("node_modules/p.js"), b"p").unwrap();
    w.round();
    assert_eq!(c_own(&w, "node_modules/a.js"), "a from P", "step 4 refreshed C's synced copy");

    // A rule added on P: in force from the next round, deleting nothing.
    w.p().put(&rp(IGNORE_FILE), b"node_modules/\n").unwrap();
    let r = w.round();
    assert_no_deletes(&r, "round after the rule");
    for p in ["node_modules/a.js", "node_modules/b.js", "node_modules/p.js"] {
        assert!(w.p().exists(&rp(p)), "{p} deleted on P");
    }
    for p in ["node_modules/a.js", "node_modules/b.js"] {
        assert!(w.c().upper_has(&rp(p)), "{p} deleted on C");
    }
    // From now on each side's deletes and writes there are its own.
    w.p().remove_file(&rp("node_modules/a.js")).unwrap();
    w.c().remove_file(&rp("node_modules/b.js")).unwrap();
    w.c().write(&rp("node_modules/p.js"), b"p from C").unwrap();
    let r = w.round();
    assert_no_deletes(&r, "round after deletes of ignored paths");
    assert_eq!(c_own(&w, "node_modules/a.js"), "a from P");
    assert_eq!(text(&w.p(), "node_modules/b.js"), "b");
    assert_eq!(text(&w.p(), "node_modules/p.js"), "p");

    // A rule added on C travels to P with the next round (as any file) and
    // is in force from the one after: no deletes either way meanwhile.
    w.c().write(&rp(IGNORE_FILE), b"node_modules/\nbuild/\n").unwrap();
    let r = w.round();
    assert_no_deletes(&r, "round carrying C's new rules");
    assert_eq!(text(&w.p(), IGNORE_FILE), "node_modules/\nbuild/\n");
    let r = w.round();
    assert_no_deletes(&r, "first round under C's rules");
    assert!(w.p().exists(&rp("build/out.o")) && w.c().upper_has(&rp("build/out.o")));
    w.p().remove_file(&rp("build/out.o")).unwrap();
    let r = w.round();
    assert_no_deletes(&r, "P's delete of a newly ignored file");
    assert_eq!(c_own(&w, "build/out.o"), "obj");
    assert_converged_outside(&mut w, "node_modules/\nbuild/\n");
}

#[test]
fn removing_an_ignore_rule_syncs_again_with_the_conflict_rule() {
    let mut w = World::new();
    w.p().put(&rp(IGNORE_FILE), b"node_modules/\n").unwrap();
    w.p().put(&rp("node_modules/shared.js"), b"P's").unwrap();
    w.p().put(&rp("node_modules/p_only.js"), b"P only").unwrap();
    w.c().put(&rp("node_modules/shared.js"), b"C's").unwrap();
    w.c().put(&rp("node_modules/c_only.js"), b"C only").unwrap();
    assert_no_deletes(&w.round(), "under the rule");
    assert!(!w.p().exists(&rp("node_modules/c_only.js")));

    w.p().write(&rp(IGNORE_FILE), b"# nothing ignored\n").unwrap();
    let r = w.round();
    assert_eq!((r.deletes_to_project, r.deletes_to_compute), (0, 0), "{r:?}");
    assert_eq!(text(&w.p(), "node_modules/c_only.js"), "C only", "C's file syncs again");
    assert_eq!(text(&w.p(), "node_modules/shared.js"), "P's", "both had a version: P's wins");
    assert_eq!(r.conflicts.len(), 1, "C's version is kept as a conflict copy: {r:?}");
    assert!(r.conflicts[0].to_string().starts_with("node_modules/shared.js.conflict-c1-"), "{r:?}");
    assert_eq!(text(w.c(), "node_modules/p_only.js"), "P only");
    w.round();
    w.assert_converged();
}

/// A `.csignore` that does not parse leaves the last good rules in force:
/// nothing is deleted or synced that they keep apart, and the error names
/// the file and line on both sides.
#[test]
fn a_bad_ignore_file_keeps_the_last_good_rules() {
    let mut w = World::new();
    w.p().put(&rp(IGNORE_FILE), b"node_modules/\n").unwrap();
    w.p().put(&rp("node_modules/a.js"), b"P's").unwrap();
    w.c().put(&rp("node_modules/a.js"), b"C's").unwrap();
    w.round();
    w.p().write(&rp(IGNORE_FILE), b"node_modules/\nsrc/a{b\n").unwrap();
    w.c().write(&rp("node_modules/a.js"), b"C's v2").unwrap();
    let r = w.round();
    assert_no_deletes(&r, "round with a bad .csignore");
    assert_eq!(text(&w.p(), "node_modules/a.js"), "P's");
    assert_eq!(c_own(&w, "node_modules/a.js"), "C's v2");
    let shown = w.project().ignore_status().error.expect("P reports the bad file");
    assert!(shown.contains(".csignore line 2"), "{shown}");
    assert_eq!(w.compute(0).ignore_error(), Some(shown.as_str()), "C shows P's error");
    w.p().write(&rp(IGNORE_FILE), b"node_modules/\n").unwrap();
    w.round();
    assert_eq!(w.project().ignore_status().error, None);
    assert_eq!(w.compute(0).ignore_error(), None);
}

/// A project whose `.csignore` never parsed runs no round (one without the
/// rules would sync what they keep apart); fixed, rounds go on.
#[test]
fn no_round_without_good_rules() {
    let mut w = World::new();
    w.p().put(&rp(IGNORE_FILE), b"a{b\n").unwrap();
    // A fresh state directory: no last good rules either.
    std::fs::remove_file(w.p_state.join("csignore.in-force")).unwrap();
    w.crash_and_reopen();
    w.c().put(&rp("node_modules/a.js"), b"C's").unwrap();
    let e = w.try_round_of(0, None).expect_err("a round ran without rules").to_string();
    assert!(e.contains(".csignore line 1"), "{e}");
    assert!(!w.p().exists(&rp("node_modules")));
    w.p().write(&rp(IGNORE_FILE), b"node_modules/\n").unwrap();
    assert_no_deletes(&w.round(), "fixed");
    assert!(!w.p().exists(&rp("node_modules")));
}
