//! P's own guards for `.csignore`: each side guards what it deletes and
//! writes with its own rules, so a client that does not apply P's rules (an
//! older client, or one that cannot parse them) still loses nothing when a
//! rule is added. The steps are called one by one, as
//! `cs_engine::driver::run_round` does, minus `hello_answered`.

use std::fs;
use std::path::{Path, PathBuf};

use cs_engine::driver::run_round;
use cs_engine::{ComputeConfig, ComputeSide, ProjectConfig, ProjectSide, IGNORE_FILE};
use cs_protocol::{ClientId, RelPath};

fn put(root: &Path, rel: &str, data: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

/// A round whose compute side never takes P's rules. Returns what P asked
/// it to delete in step 2 and what it sent in step 4.
fn round_of_a_client_without_rules(c: &mut ComputeSide, p: &ProjectSide) -> (Vec<RelPath>, usize) {
    let (mut cr, hello) = c.begin_round().unwrap();
    let (mut pr, reply) = p.begin_round(&hello).unwrap();
    assert!(!reply.ignore_rules.is_empty(), "P sends its rules");
    if reply.need_held_list {
        p.set_held_list(&mut pr, c.held_list());
    }
    let deletes = c.deletes_to_send(&cr);
    let r1 = p.apply_deletes(&mut pr, &deletes).unwrap();
    c.finish_deletes_reported(&mut cr, &deletes, &r1).unwrap();
    let gone = p.deletes_for_client(&mut pr);
    c.apply_deletes(&mut cr, &gone).unwrap();
    let paths = c.changes_to_send(&cr);
    let mut tar = Vec::new();
    c.pack_changes(&mut cr, &paths, &mut tar).unwrap();
    p.apply_writes(&mut pr, &tar[..], None).unwrap();
    let mut back = Vec::new();
    let (_, stats, cursor) = p.pack_changes(&mut pr, &mut back).unwrap();
    c.apply_writes(&mut cr, &back[..], None).unwrap();
    let req = c.prepare_commit(&cr, cursor).unwrap();
    p.commit(pr, &req).unwrap();
    c.commit(cr).unwrap();
    (gone, stats.entries as usize)
}

#[test]
fn a_rule_added_on_the_project_deletes_nothing_even_for_a_client_without_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (home, upper): (PathBuf, PathBuf) = (dir.path().join("home"), dir.path().join("upper"));
    fs::create_dir_all(&home).unwrap();
    fs::create_dir_all(&upper).unwrap();
    let mut c =
        ComputeSide::open(ComputeConfig::new(ClientId::new("c0").unwrap(), upper.clone(), dir.path().join("cs")))
            .unwrap();
    let p = ProjectSide::open(ProjectConfig::new(home.clone(), dir.path().join("ps"))).unwrap();
    put(&upper, "node_modules/a.js", "a");
    put(&upper, "src/main.js", "main");
    run_round(&mut c, &p, None).unwrap();
    assert!(home.join("node_modules/a.js").exists());

    // The rule, then P's copy changes and is deleted under it: the client
    // (which does not apply the rule) is neither sent a delete nor a write.
    put(&home, IGNORE_FILE, "node_modules/\n");
    fs::write(home.join("node_modules/a.js"), "P's change").unwrap();
    let (gone, sent) = round_of_a_client_without_rules(&mut c, &p);
    assert!(gone.is_empty(), "P asked to delete {gone:?}");
    assert_eq!(sent, 0, "P sent its ignored file's change");
    fs::remove_file(home.join("node_modules/a.js")).unwrap();
    fs::remove_dir(home.join("node_modules")).unwrap();
    let (gone, _) = round_of_a_client_without_rules(&mut c, &p);
    assert!(gone.is_empty(), "P asked to delete {gone:?}");
    assert_eq!(fs::read_to_string(upper.join("node_modules/a.js")).unwrap(), "a");

    // The client's writes there are refused by P.
    put(&upper, "node_modules/b.js", "b");
    round_of_a_client_without_rules(&mut c, &p);
    assert!(!home.join("node_modules").exists(), "an ignored path reached P");
}
