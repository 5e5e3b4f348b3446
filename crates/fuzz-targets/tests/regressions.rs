//! Replays every saved input under `regressions/<target>/` through its
//! target. A file there is a minimal input that once made a target fail:
//! it must pass now (or the bug it records is back).

use cs_fuzz_targets::{CountingAlloc, TARGETS};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn saved_inputs_pass() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let Ok(entries) = std::fs::read_dir(dir.join(name)) else {
            continue;
        };
        let mut files: Vec<_> =
            entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "bin")).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            eprintln!("replaying {}", f.display());
            target(&data);
            replayed += 1;
        }
    }
    eprintln!("{replayed} saved inputs replayed");
}

/// The seeds every target starts from pass: the empty input, a valid
/// stream/frame/path of each kind.
#[test]
fn seeds_pass() {
    for (_, target) in TARGETS {
        target(b"");
        target(b"a/b");
        target(&[0u8; 1024]);
    }
    let frame =
        cs_wire::Frame::control(1, cs_wire::ClientMsg::Deletes(vec![cs_protocol::RelPath::new("a/b").unwrap()]));
    cs_fuzz_targets::fuzz_frame(&frame.encode().unwrap());
    let mut w = cs_tarstream::PackWriter::new(Vec::new(), 1).unwrap();
    let h = cs_tarstream::EntryHeader::file(cs_protocol::RelPath::new("d/f").unwrap(), 0o644, Default::default(), 2);
    w.append_file(&h, &mut &b"hi"[..]).unwrap();
    let (stream, _) = w.finish().unwrap();
    cs_fuzz_targets::fuzz_tar(&stream);
    cs_fuzz_targets::fuzz_tar_apply(&stream);
    cs_fuzz_targets::fuzz_tar(&zstd::decode_all(&stream[..]).unwrap());
    cs_fuzz_targets::fuzz_tar_apply(&zstd::decode_all(&stream[..]).unwrap());
}

/// The allocation bounds are live: the counting allocator sees the heap.
#[test]
fn alloc_meter_counts() {
    let (v, peak) = cs_fuzz_targets::alloc_meter::measure(|| vec![1u8; 1 << 20]);
    assert_eq!(v.len(), 1 << 20);
    assert!(peak.expect("CountingAlloc installed") >= 1 << 20);
}
