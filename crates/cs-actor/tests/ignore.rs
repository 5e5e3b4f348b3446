//! `.csignore` end to end: the real services, sshfs lower, each union backend (see
//! `support/mod.rs`). A `node_modules/` on both sides with different content is never
//! synced; a rule added from the compute server's side deletes nothing on either side;
//! status and `cs-actor check-ignore` say what is ignored. Skips (or, with `CI` set, fails)
//! when the external programs are missing.

mod support;

use std::time::Duration;

use support::*;

per_union! {
    both: [
        ignore_rules_both_ways_without_deletes,
    ],
}

const RULES: &str = "node_modules/\n__pycache__/\n*.pyc\n";

fn ignore_rules_both_ways_without_deletes() {
    if !cs_testbed::real_tools_available() || skip_with_replica("the project's ignored files, shown by an sshfs lower")
    {
        return;
    }
    let bed = Bed::start("ignore", |h| {
        put(h, ".csignore", RULES);
        put(h, "node_modules/lib.js", "the project's build\n");
        put(h, "node_modules/p_only.js", "P\n");
        put(h, "build/p.o", "the project's object\n");
        put(h, "app.py", "print(1)\n");
    });
    let (h, m, u) = (bed.home.clone(), bed.merged(), bed.upper());
    put(&m, "node_modules/lib.js", "the compute server's build\n");
    put(&m, "node_modules/c_only.js", "C\n");
    put(&m, "__pycache__/app.cpython-312.pyc", "bytecode\n");
    put(&m, "lib.pyc", "bytecode\n");
    put(&m, "build/c.o", "the compute server's object\n");
    bed.sync_wait();

    // Never synced: each side keeps its own.
    assert_eq!(read(&h, "node_modules/lib.js"), "the project's build\n");
    assert_eq!(read(&u, "node_modules/lib.js"), "the compute server's build\n");
    assert_eq!(read(&m, "node_modules/lib.js"), "the compute server's build\n");
    for never in ["node_modules/c_only.js", "__pycache__", "lib.pyc"] {
        assert!(!exists(&h, never), "{never} reached the project");
    }
    assert!(!exists(&u, "node_modules/p_only.js"), "the project's ignored file was copied to C");
    assert_eq!(read(&h, "build/c.o"), "the compute server's object\n", "the rest syncs");

    // Status on both sides, and check-ignore on the merged view.
    let ignored = &bed.compute_status()["packer"]["ignored"];
    assert_eq!(ignored["patterns"], 3, "{ignored}");
    assert!(ignored["count"].as_u64().is_some_and(|n| n >= 3), "node_modules, __pycache__, lib.pyc: {ignored}");
    assert_eq!(bed.project_status()["broker"]["ignore"]["patterns"], 3);
    let (lib, app) = (m.join("node_modules/lib.js"), m.join("app.py"));
    let (lib, app) = (lib.display().to_string(), app.display().to_string());
    let merged = m.display().to_string();
    let out = cli(&["check-ignore", "--home", &merged, &lib, &app], Duration::from_secs(20));
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{}", out.describe());
    assert_eq!(out.stdout, format!(".csignore:1:node_modules/\t{lib}\n::\t{app}\n"));
    let out = cli(&["check-ignore", "--home", &merged, &app], Duration::from_secs(20));
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{}", out.describe());

    // A rule added on the compute server: carried by one round, in force from the next;
    // nothing is deleted on either side, before or after.
    put(&m, ".csignore", format!("{RULES}build/\n"));
    bed.sync_wait();
    assert_eq!(read(&h, ".csignore"), format!("{RULES}build/\n"));
    bed.sync_wait();
    for both in ["node_modules/lib.js", "build/c.o"] {
        assert!(exists(&h, both) && exists(&u, both), "{both} deleted on one side");
    }
    assert_eq!(bed.project_status()["broker"]["ignore"]["patterns"], 4);

    // Deletes of ignored paths stay on the side that made them.
    std::fs::remove_file(h.join("build/c.o")).unwrap();
    std::fs::remove_file(h.join("node_modules/lib.js")).unwrap();
    std::fs::remove_file(m.join("build/p.o")).unwrap(); // the project's copy, through the merged view
    std::fs::remove_file(m.join("node_modules/p_only.js")).unwrap();
    bed.sync_wait();
    bed.sync_wait();
    assert_eq!(read(&u, "build/c.o"), "the compute server's object\n");
    assert_eq!(read(&u, "node_modules/lib.js"), "the compute server's build\n");
    assert_eq!(read(&h, "build/p.o"), "the project's object\n");
    assert_eq!(read(&h, "node_modules/p_only.js"), "P\n");
    assert!(!exists(&m, "build/p.o"), "the compute server's own deletion stands");
    assert!(find_names(&h, |n| n.contains(".conflict-")).is_empty(), "conflict copies made");
    let last = &bed.compute_status()["round"]["last_committed"];
    assert!(last["kept_on_project"].as_array().is_some_and(|a| a.is_empty()), "{last}");
    bed.finish();
}
