//! Stable-CI fuzzing: each target of `cs-fuzz-targets` under proptest with
//! structured generators, for `CS_FUZZ_SECS` seconds (default 10) each.
//!
//! `CS_FUZZ_SECS=600 cargo test --release -p cs-fuzz-targets --test fuzz`
//! runs them longer; `CS_FUZZ_SEED=<n>` replays a run's inputs. A failure is
//! shrunk, saved under the target dir and printed in hex: copy it into
//! `regressions/<target>/` to make `tests/regressions.rs` replay it.

mod common;

use common::{drive, drive_for, quietly};
use cs_fuzz_targets::{fuzz_frame, fuzz_relpath, fuzz_snapshot, fuzz_tar, fuzz_tar_apply, CountingAlloc};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde::Serialize;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

// ---- shared generators ---------------------------------------------------

/// One path component, mostly ordinary, often hostile.
fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z]{1,6}",
        1 => Just(".".to_string()),
        1 => Just("..".to_string()),
        1 => Just(String::new()),
        1 => Just("...".to_string()),
        1 => Just(".hidden".to_string()),
        1 => Just("a\0b".to_string()),
        1 => Just("\0".to_string()),
        1 => Just("é".to_string()),
        1 => Just("日本".to_string()),
        1 => Just("a b".to_string()),
        1 => Just("\\..".to_string()),
        1 => Just("..\u{2044}".to_string()),
        1 => Just(".\u{feff}.".to_string()),
        1 => "[a./\\x00é]{0,6}",
        1 => (250usize..=258).prop_map(|n| "x".repeat(n)),
        1 => (125usize..=130).prop_map(|n| "é".repeat(n)),
    ]
}

/// A path string: components joined by `/`, sometimes with a leading or
/// trailing slash or doubled separators; sometimes about 4096 bytes long.
fn path_string() -> BoxedStrategy<String> {
    let joined = (
        prop_oneof![8 => Just(""), 1 => Just("/"), 1 => Just("./")],
        vec(component(), 0..7),
        prop_oneof![8 => Just(""), 1 => Just("/"), 1 => Just("/.")],
    )
        .prop_map(|(lead, comps, trail)| format!("{lead}{}{trail}", comps.join("/")));
    let long = (vec(250usize..=256, 15..=17), prop_oneof![Just(""), Just("/a"), Just("/"), Just("/..")]).prop_map(
        |(lens, tail)| {
            let comps: Vec<String> = lens.iter().map(|&n| "y".repeat(n)).collect();
            format!("{}{tail}", comps.join("/"))
        },
    );
    prop_oneof![10 => joined, 1 => long, 1 => ".{0,12}"].boxed()
}

/// Byte-level damage applied to a structured input: overwrite, insert,
/// delete, truncate.
fn mutations() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    prop_oneof![2 => Just(Vec::new()), 3 => vec((any::<usize>(), any::<u8>(), 0u8..4), 1..5)]
}

/// Rarer damage, for inputs that are hostile by construction already.
fn rare_mutations() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    prop_oneof![6 => Just(Vec::new()), 1 => vec((any::<usize>(), any::<u8>(), 0u8..4), 1..3)]
}

fn mutate(mut b: Vec<u8>, muts: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(pos, byte, op) in muts {
        let len = b.len();
        match op {
            0 if len > 0 => b[pos % len] = byte,
            1 => b.insert(pos % (len + 1), byte),
            2 if len > 0 => {
                b.remove(pos % len);
            }
            3 => b.truncate(pos % (len + 1)),
            _ => {}
        }
    }
    b
}

// ---- relpath -------------------------------------------------------------

fn relpath_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => path_string().prop_map(String::into_bytes),
        // As it arrives in a message: a MessagePack string or list of them.
        2 => path_string().prop_map(|s| rmp_serde::to_vec(&s).unwrap()),
        2 => vec(path_string(), 0..4).prop_map(|v| rmp_serde::to_vec(&v).unwrap()),
        1 => vec((path_string(), ".{0,8}"), 0..3).prop_map(|v| rmp_serde::to_vec(&v).unwrap()),
        // Not UTF-8, or damaged encodings.
        2 => (path_string(), mutations()).prop_map(|(s, m)| mutate(s.into_bytes(), &m)),
        1 => (path_string(), mutations()).prop_map(|(s, m)| mutate(rmp_serde::to_vec(&s).unwrap(), &m)),
        1 => vec(any::<u8>(), 0..64),
    ]
}

#[test]
fn fuzz_relpath_bounded() {
    let cases = drive("relpath", relpath_input(), fuzz_relpath, 2_000_000);
    assert!(cases > 0);
}

// ---- frame ---------------------------------------------------------------

// Mirrors of the wire messages with plain strings where the real ones have
// validated types, so that hostile paths, client ids and unknown variants
// reach the real decoder.

#[derive(Serialize, Debug, Clone)]
struct SCursor {
    epoch: u64,
    seq: u64,
}

#[derive(Serialize, Debug, Clone)]
struct SHello {
    client: String,
    protocol: u32,
    cursor: Option<SCursor>,
    held_digest: [u8; 32],
    held_count: u64,
    held_added: Vec<String>,
    held_removed: Vec<String>,
    /// Absent (an older client), or either value.
    #[serde(skip_serializing_if = "Option::is_none")]
    follow: Option<bool>,
}

#[derive(Serialize, Debug, Clone)]
struct SHeldDelta {
    added: Vec<String>,
    removed: Vec<String>,
    digest: [u8; 32],
}

#[derive(Serialize, Debug, Clone)]
struct SCommit {
    round_id: u64,
    held: SHeldDelta,
    not_applied: Vec<String>,
}

#[derive(Serialize, Debug, Clone)]
enum SClient {
    WasCommitted { round_id: u64 },
    Hello(SHello),
    HeldList(Vec<String>),
    Deletes(Vec<String>),
    AskDeletes,
    SendWrites { stream: u32 },
    AskWrites { stream: u32 },
    Commit(SCommit),
    Ping { sent_ms: u64 },
    Fetch { paths: Vec<String>, stream: u32 },
    Snapshot { stream: u32 },
    Teleport { to: u32 },
}

#[derive(Serialize, Debug, Clone)]
struct SHelloReply {
    need_held_list: bool,
    cursor_unknown: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    follow: Option<bool>,
}

#[derive(Serialize, Debug, Clone)]
struct SDeleteReport {
    deleted: Vec<String>,
    kept: Vec<String>,
    refused: Vec<(String, String)>,
}

#[derive(Serialize, Debug, Clone)]
struct STimestamp {
    sec: i64,
    nsec: u32,
}

#[derive(Serialize, Debug, Clone)]
struct SFileVersion {
    path: String,
    kind: String,
    size: u64,
    mtime: STimestamp,
}

#[derive(Serialize, Debug, Clone)]
struct SFetchReport {
    sent: Vec<SFileVersion>,
    missing: Vec<String>,
    refused: Vec<(String, String)>,
}

#[derive(Serialize, Debug, Clone)]
struct SSnapshotReport {
    entries: u64,
    cursor: SCursor,
    refused: Vec<(String, String)>,
    refused_count: u64,
}

#[derive(Serialize, Debug, Clone)]
enum SServer {
    WasCommitted(bool),
    HelloReply(SHelloReply),
    HeldListOk,
    DeleteReport(SDeleteReport),
    DeletesForYou(Vec<String>),
    WritesApplied { applied: u64, unchanged: u64, conflicts: Vec<String>, refused: Vec<(String, String)> },
    WritesFollow { stream: u32, cursor: SCursor },
    Committed { cursor: SCursor },
    Pong { sent_ms: u64 },
    FetchFollows { stream: u32, report: SFetchReport },
    SnapshotFollows { stream: u32, report: SSnapshotReport },
    ProjectChanged { changes: u64 },
    Error { code: String, message: String },
}

#[derive(Serialize, Debug, Clone)]
struct SEnvelope<T> {
    id: u64,
    body: T,
}

fn num() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(1), Just(u64::MAX), Just(u32::MAX as u64 + 1), any::<u64>()]
}

fn paths() -> impl Strategy<Value = Vec<String>> {
    vec(path_string(), 0..4)
}

fn cursor() -> impl Strategy<Value = SCursor> {
    (num(), num()).prop_map(|(epoch, seq)| SCursor { epoch, seq })
}

fn client_id() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[A-Za-z0-9_.-]{1,10}", 1 => Just(".x".to_string()), 1 => Just(String::new()), 1 => Just("a/b".to_string()), 1 => Just("z".repeat(65)), 1 => ".{0,8}"]
}

fn client_msg() -> impl Strategy<Value = SClient> {
    let hello = (
        client_id(),
        any::<u32>(),
        proptest::option::of(cursor()),
        any::<[u8; 32]>(),
        num(),
        paths(),
        paths(),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(client, protocol, cursor, held_digest, held_count, held_added, held_removed, follow)| {
            SClient::Hello(SHello {
                client,
                protocol,
                cursor,
                held_digest,
                held_count,
                held_added,
                held_removed,
                follow,
            })
        });
    let commit = (num(), paths(), paths(), any::<[u8; 32]>(), paths()).prop_map(
        |(round_id, added, removed, digest, not_applied)| {
            SClient::Commit(SCommit { round_id, held: SHeldDelta { added, removed, digest }, not_applied })
        },
    );
    prop_oneof![
        num().prop_map(|round_id| SClient::WasCommitted { round_id }),
        hello,
        paths().prop_map(SClient::HeldList),
        paths().prop_map(SClient::Deletes),
        Just(SClient::AskDeletes),
        any::<u32>().prop_map(|stream| SClient::SendWrites { stream }),
        any::<u32>().prop_map(|stream| SClient::AskWrites { stream }),
        commit,
        num().prop_map(|sent_ms| SClient::Ping { sent_ms }),
        (paths(), any::<u32>()).prop_map(|(paths, stream)| SClient::Fetch { paths, stream }),
        any::<u32>().prop_map(|stream| SClient::Snapshot { stream }),
        any::<u32>().prop_map(|to| SClient::Teleport { to }),
    ]
}

fn refused() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((path_string(), ".{0,10}"), 0..3)
}

fn fetch_report() -> impl Strategy<Value = SFetchReport> {
    let kind =
        prop_oneof![Just("File".to_string()), Just("Dir".to_string()), Just("Symlink".to_string()), "[A-Za-z]{0,8}"];
    let version = (path_string(), kind, num(), any::<i64>(), prop_oneof![0u32..1_000_000_000, any::<u32>()])
        .prop_map(|(path, kind, size, sec, nsec)| SFileVersion { path, kind, size, mtime: STimestamp { sec, nsec } });
    (vec(version, 0..3), paths(), refused()).prop_map(|(sent, missing, refused)| SFetchReport {
        sent,
        missing,
        refused,
    })
}

fn server_msg() -> impl Strategy<Value = SServer> {
    let code = prop_oneof![
        Just("BadRequest".to_string()),
        Just("Unauthorized".to_string()),
        Just("TooLarge".to_string()),
        Just("Busy".to_string()),
        Just("Internal".to_string()),
        Just("ProtocolVersion".to_string()),
        "[A-Za-z]{0,12}",
    ];
    prop_oneof![
        any::<bool>().prop_map(SServer::WasCommitted),
        (any::<bool>(), any::<bool>(), proptest::option::of(any::<bool>())).prop_map(
            |(need_held_list, cursor_unknown, follow)| {
                SServer::HelloReply(SHelloReply { need_held_list, cursor_unknown, follow })
            }
        ),
        Just(SServer::HeldListOk),
        (paths(), paths(), refused()).prop_map(|(deleted, kept, refused)| SServer::DeleteReport(SDeleteReport {
            deleted,
            kept,
            refused
        })),
        paths().prop_map(SServer::DeletesForYou),
        (num(), num(), paths(), refused()).prop_map(|(applied, unchanged, conflicts, refused)| {
            SServer::WritesApplied { applied, unchanged, conflicts, refused }
        }),
        (any::<u32>(), cursor()).prop_map(|(stream, cursor)| SServer::WritesFollow { stream, cursor }),
        cursor().prop_map(|cursor| SServer::Committed { cursor }),
        num().prop_map(|sent_ms| SServer::Pong { sent_ms }),
        (any::<u32>(), fetch_report()).prop_map(|(stream, report)| SServer::FetchFollows { stream, report }),
        (any::<u32>(), num(), cursor(), refused(), num()).prop_map(
            |(stream, entries, cursor, refused, refused_count)| {
                SServer::SnapshotFollows { stream, report: SSnapshotReport { entries, cursor, refused, refused_count } }
            }
        ),
        num().prop_map(|changes| SServer::ProjectChanged { changes }),
        (code, ".{0,20}").prop_map(|(code, message)| SServer::Error { code, message }),
    ]
}

fn control<T: Serialize>(id: u64, body: T, named: bool) -> Vec<u8> {
    let env = SEnvelope { id, body };
    let mut b = vec![0u8];
    b.extend(if named { rmp_serde::to_vec_named(&env).unwrap() } else { rmp_serde::to_vec(&env).unwrap() });
    b
}

fn stream_frame() -> impl Strategy<Value = Vec<u8>> {
    let payload = prop_oneof![vec(any::<u8>(), 0..16), (1018usize..=1030).prop_map(|n| vec![7u8; n])];
    let reason = prop_oneof![
        ".{0,16}".prop_map(String::into_bytes),
        (1020usize..=1028).prop_map(|n| vec![b'r'; n]),
        (510usize..=514).prop_map(|n| "é".repeat(n).into_bytes()),
        vec(any::<u8>(), 0..8),
    ];
    let status = prop_oneof![Just(0u8), Just(1u8), any::<u8>()];
    (prop_oneof![4 => 1u8..=2, 1 => any::<u8>()], any::<u32>(), payload, status, reason).prop_map(
        |(tag, stream, payload, status, reason)| {
            let mut b = vec![tag];
            b.extend_from_slice(&stream.to_le_bytes());
            if tag == 2 {
                b.push(status);
                b.extend_from_slice(&reason);
            } else {
                b.extend_from_slice(&payload);
            }
            b
        },
    )
}

fn frame_input() -> impl Strategy<Value = Vec<u8>> {
    let client = (num(), client_msg(), any::<bool>()).prop_map(|(id, m, named)| control(id, m, named));
    let server = (num(), server_msg(), any::<bool>()).prop_map(|(id, m, named)| control(id, m, named));
    let structured = prop_oneof![4 => client, 4 => server, 2 => stream_frame()];
    prop_oneof![
        8 => (structured, mutations()).prop_map(|(b, m)| mutate(b, &m)),
        1 => vec(any::<u8>(), 0..64),
        // Deep nesting (bounded by the decoder's depth limit).
        1 => (1usize..200, prop_oneof![Just(0x91u8), Just(0x81u8), Just(0xdcu8)]).prop_map(|(n, byte)| {
            let mut b = vec![0u8];
            b.extend(std::iter::repeat_n(byte, n));
            b
        }),
        // Huge declared lengths with little data.
        1 => (prop_oneof![Just(0xdbu8), Just(0xddu8), Just(0xdfu8), Just(0xc6u8)], any::<u32>(), vec(any::<u8>(), 0..8)).prop_map(|(t, n, rest)| {
            let mut b = vec![0u8, 0x82, 0xa2, b'i', b'd', 0x01, 0xa4, b'b', b'o', b'd', b'y', 0x81, 0xa8];
            b.extend_from_slice(b"HeldList");
            b.push(t);
            b.extend_from_slice(&n.to_be_bytes());
            b.extend(rest);
            b
        }),
    ]
}

#[test]
fn fuzz_frame_bounded() {
    let cases = drive("frame", frame_input(), fuzz_frame, 2_000_000);
    assert!(cases > 0);
}

// ---- snapshot ------------------------------------------------------------

#[derive(Serialize, Debug, Clone)]
struct SEntry {
    path: String,
    kind: String,
    mode: u32,
    size: u64,
    mtime: STimestamp,
    #[serde(with = "serde_bytes")]
    target: Option<Vec<u8>>,
}

/// Snapshot streams: records of near-valid entries (any path, kind, mode,
/// target) with or without an end record and a right or wrong count,
/// mutated before compression; valid trees from the real encoder; garbage.
fn snapshot_input() -> impl Strategy<Value = Vec<u8>> {
    let kind =
        prop_oneof![Just("File".to_string()), Just("Dir".to_string()), Just("Symlink".to_string()), "[A-Za-z]{0,8}"];
    let mode = prop_oneof![Just(0o644u32), Just(0o755), Just(0o777), any::<u32>()];
    let target = proptest::option::of(vec(any::<u8>(), 0..8));
    let entry = (path_string(), kind, mode, num(), any::<i64>(), 0u32..1_000_000_000, target).prop_map(
        |(path, kind, mode, size, sec, nsec, target)| {
            rmp_serde::to_vec_named(&SEntry { path, kind, mode, size, mtime: STimestamp { sec, nsec }, target })
                .unwrap()
        },
    );
    let record = prop_oneof![8 => entry, 1 => vec(any::<u8>(), 0..16)];
    let end = prop_oneof![4 => Just(None), 1 => Just(Some(u64::MAX)), 1 => num().prop_map(Some)];
    let records = (vec(record, 0..12), any::<bool>(), end, rare_mutations()).prop_map(|(recs, ended, count, muts)| {
        let mut plain = Vec::new();
        for r in &recs {
            plain.extend_from_slice(&(r.len() as u32).to_le_bytes());
            plain.extend_from_slice(r);
        }
        if ended {
            plain.extend_from_slice(&0u32.to_le_bytes());
            plain.extend_from_slice(&count.unwrap_or(recs.len() as u64).to_le_bytes());
        }
        zstd::encode_all(&mutate(plain, &muts)[..], 1).unwrap()
    });
    let tree = (vec("[a-z]{1,3}", 0..8), vec("[a-z]{1,3}", 0..8)).prop_map(|(top, below)| {
        let mut top: Vec<String> = top;
        top.sort();
        top.dedup();
        let mut below: Vec<String> = below;
        below.sort();
        below.dedup();
        let mut enc = cs_wire::SnapshotEncoder::new(Vec::new(), 1).unwrap();
        let at = |p: String, kind| cs_protocol::SnapshotEntry {
            path: cs_protocol::RelPath::new(p).unwrap(),
            kind,
            mode: 0o755,
            size: 0,
            mtime: cs_protocol::Timestamp::new(1, 2),
            target: None,
        };
        enc.push(&at("0dir".into(), cs_protocol::EntryKind::Dir)).unwrap();
        for b in below {
            enc.push(&at(format!("0dir/{b}"), cs_protocol::EntryKind::File)).unwrap();
        }
        for t in top {
            enc.push(&at(t, cs_protocol::EntryKind::File)).unwrap();
        }
        enc.finish().unwrap().0
    });
    let cut = (tree.clone(), any::<proptest::sample::Index>()).prop_map(|(b, i)| b[..i.index(b.len() + 1)].to_vec());
    prop_oneof![6 => records, 2 => tree, 1 => cut, 1 => vec(any::<u8>(), 0..64)]
}

#[test]
fn fuzz_snapshot_bounded() {
    let cases = drive("snapshot", snapshot_input(), fuzz_snapshot, 2_000_000);
    assert!(cases > 0);
}

// ---- tar -----------------------------------------------------------------

const BLOCK: usize = 512;

fn set_checksum(b: &mut [u8; BLOCK]) {
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// How a numeric header field is written.
#[derive(Debug, Clone)]
enum Num {
    Octal(u64),
    Base256(i64),
    Raw(Vec<u8>),
}

fn num_field(n: &Num, width: usize) -> Vec<u8> {
    match n {
        Num::Octal(v) => {
            let s = format!("{v:0w$o}\0", w = width - 1);
            s.as_bytes()[..width.min(s.len())].to_vec()
        }
        Num::Base256(v) => {
            let mut f = vec![if *v < 0 { 0xff } else { 0 }; width];
            let be = v.to_be_bytes();
            f[width - 8..].copy_from_slice(&be);
            f[0] = if *v < 0 { 0xff } else { 0x80 };
            f
        }
        Num::Raw(b) => b.iter().take(width).copied().collect(),
    }
}

/// One header block plus its data, as a generator describes it.
#[derive(Debug, Clone)]
struct GenEntry {
    typeflag: u8,
    name: Vec<u8>,
    prefix: Vec<u8>,
    link: Vec<u8>,
    size: Num,
    mode: Num,
    mtime: Num,
    magic: u8,
    good_checksum: bool,
    data: Vec<u8>,
    /// Bytes of the header overwritten before the checksum is computed.
    pokes: Vec<(usize, u8)>,
}

impl GenEntry {
    fn bytes(&self) -> Vec<u8> {
        let mut b = [0u8; BLOCK];
        let put = |b: &mut [u8; BLOCK], at: usize, width: usize, v: &[u8]| {
            let n = v.len().min(width);
            b[at..at + n].copy_from_slice(&v[..n]);
        };
        put(&mut b, 0, 100, &self.name);
        put(&mut b, 100, 8, &num_field(&self.mode, 8));
        put(&mut b, 108, 8, b"0000000\0");
        put(&mut b, 116, 8, b"0000000\0");
        put(&mut b, 124, 12, &num_field(&self.size, 12));
        put(&mut b, 136, 12, &num_field(&self.mtime, 12));
        b[156] = self.typeflag;
        put(&mut b, 157, 100, &self.link);
        match self.magic {
            0 => put(&mut b, 257, 8, b"ustar\x0000"),
            1 => put(&mut b, 257, 8, b"ustar  \0"),
            _ => put(&mut b, 257, 8, b"ustaR\x0000"),
        }
        if self.magic == 0 {
            put(&mut b, 345, 155, &self.prefix);
        }
        for &(at, v) in &self.pokes {
            b[at % BLOCK] = v;
        }
        set_checksum(&mut b);
        if !self.good_checksum {
            b[148] ^= 1;
        }
        let mut out = b.to_vec();
        out.extend_from_slice(&self.data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        out
    }
}

fn pax_data(records: &[(String, Vec<u8>)], damage: Option<usize>) -> Vec<u8> {
    let mut data = Vec::new();
    for (k, v) in records {
        let rest = k.len() + v.len() + 3;
        let mut len = rest + 1;
        while rest + len.to_string().len() != len {
            len = rest + len.to_string().len();
        }
        let len = match damage {
            Some(d) if data.is_empty() => (len + d) % (len + 3),
            _ => len,
        };
        data.extend_from_slice(format!("{len} {k}=").as_bytes());
        data.extend_from_slice(v);
        data.push(b'\n');
    }
    data
}

fn pax_record() -> impl Strategy<Value = (String, Vec<u8>)> {
    let time = prop_oneof![
        4 => (any::<i32>(), proptest::option::of(0u32..1_000_000_000)).prop_map(|(s, n)| match n {
            Some(n) => format!("{s}.{n:09}"),
            None => s.to_string(),
        }),
        1 => prop_oneof![
            Just("1.5"), Just("-1.500000000"), Just("1.0000000001"), Just("99999999999999999999"), Just("1e9"),
            Just("abc"), Just(""), Just("-0.5"), Just(".5"), Just("1."), Just("007"), Just("-"), Just("+1")
        ].prop_map(str::to_string),
    ];
    let size = prop_oneof![
        4 => (0u64..64).prop_map(|n| n.to_string()),
        1 => prop_oneof![Just("4096"), Just("4097"), Just("-1"), Just(""), Just("18446744073709551616"), Just("1 "), Just("0x10")].prop_map(str::to_string),
    ];
    prop_oneof![
        4 => tar_path().prop_map(|p| ("path".to_string(), p.into_bytes())),
        2 => link_target().prop_map(|p| ("linkpath".to_string(), p.into_bytes())),
        2 => time.prop_map(|t| ("mtime".to_string(), t.into_bytes())),
        2 => size.prop_map(|t| ("size".to_string(), t.into_bytes())),
        1 => Just(("GNU.sparse.size".to_string(), b"1".to_vec())),
        1 => (".{0,8}", vec(any::<u8>(), 0..12)).prop_map(|(k, v)| (k, v)),
        1 => ("[a-z.=]{0,6}", vec(any::<u8>(), 0..12)),
    ]
}

/// Tar entry paths: mostly valid (so that streams get past their first
/// entry), sometimes hostile.
fn tar_path() -> BoxedStrategy<String> {
    prop_oneof![
        6 => "[a-z]{1,6}(/[a-zé.]{1,6}){0,3}",
        1 => (vec(95usize..=105, 1..3), "[a-z]{1,4}").prop_map(|(lens, tail)| {
            let mut comps: Vec<String> = lens.iter().map(|&n| "q".repeat(n)).collect();
            comps.push(tail);
            comps.join("/")
        }),
        3 => path_string(),
    ]
    .boxed()
}

fn num_strategy(small: u64) -> impl Strategy<Value = Num> {
    prop_oneof![
        24 => (0..=small).prop_map(Num::Octal),
        1 => Just(Num::Octal(0o77777777777)),
        1 => any::<i64>().prop_map(Num::Base256),
        1 => (0..=small as i64).prop_map(Num::Base256),
        1 => vec(any::<u8>(), 0..12).prop_map(Num::Raw),
        1 => Just(Num::Raw(b"        \0".to_vec())),
    ]
}

/// A header's path split the way writers do: name only, or prefix/name.
fn split_path(p: &[u8], use_prefix: bool) -> (Vec<u8>, Vec<u8>) {
    if use_prefix && p.len() > 100 {
        if let Some(i) = p.iter().rposition(|&b| b == b'/') {
            return (p[i + 1..].to_vec(), p[..i].to_vec());
        }
    }
    (p.to_vec(), Vec::new())
}

/// An entry with optional extension headers before it.
fn tar_entry(path: BoxedStrategy<String>, link: BoxedStrategy<String>) -> impl Strategy<Value = Vec<u8>> {
    let typeflag = prop_oneof![
        16 => Just(b'0'), 8 => Just(b'5'), 6 => Just(b'2'), 2 => Just(b'\0'),
        1 => prop_oneof![Just(b'1'), Just(b'3'), Just(b'4'), Just(b'6'), Just(b'7'), Just(b'S'), Just(b'V'), Just(b'N'), any::<u8>()]
    ];
    let ext = prop_oneof![
        3 => (prop_oneof![4 => Just(b'x'), 1 => Just(b'g')], vec(pax_record(), 1..4), prop_oneof![6 => Just(None), 1 => (0usize..5).prop_map(Some)]).prop_map(|(t, recs, dmg)| (t, pax_data(&recs, dmg))),
        1 => (prop_oneof![Just(b'L'), Just(b'K')], path.clone()).prop_map(|(t, p)| {
            let mut d = p.into_bytes();
            d.push(0);
            (t, d)
        }),
        1 => (prop_oneof![Just(b'x'), Just(b'L')], (2040usize..2060)).prop_map(|(t, n)| {
            (t, pax_data(&[("path".to_string(), vec![b'p'; n])], None))
        }),
    ];
    let exts = prop_oneof![12 => Just(Vec::new()), 6 => vec(ext, 1..3), 1 => vec(Just((b'x', pax_data(&[("comment".into(), b"c".to_vec())], None))), 8..=9)];
    let data = prop_oneof![16 => vec(any::<u8>(), 0..40), 1 => (4090usize..4100).prop_map(|n| vec![b'd'; n]), 1 => (0usize..3).prop_map(|n| vec![0u8; n * 600])];
    let header = (
        (
            typeflag,
            path,
            link,
            any::<bool>(),
            data,
            prop_oneof![20 => Just(None), 1 => num_strategy(5000).prop_map(Some)],
        ),
        (
            num_strategy(0o7777),
            num_strategy(1 << 33),
            prop_oneof![24 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)],
            prop_oneof![40 => Just(true), 1 => Just(false)],
            prop_oneof![16 => Just(Vec::new()), 1 => vec((any::<usize>(), any::<u8>()), 1..3)],
        ),
    );
    (exts, header).prop_map(
        |(
            exts,
            ((typeflag, path, link, use_prefix, data, size_override), (mode, mtime, magic, good_checksum, pokes)),
        )| {
            let mut out = Vec::new();
            for (t, d) in &exts {
                let e = GenEntry {
                    typeflag: *t,
                    name: b"././@PaxHeader".to_vec(),
                    prefix: Vec::new(),
                    link: Vec::new(),
                    size: Num::Octal(d.len() as u64),
                    mode: Num::Octal(0o644),
                    mtime: Num::Octal(0),
                    magic: 0,
                    good_checksum: true,
                    data: d.clone(),
                    pokes: Vec::new(),
                };
                out.extend(e.bytes());
            }
            let (name, prefix) = split_path(path.as_bytes(), use_prefix);
            // Directories and symlinks carry no data (a size override still
            // gives them a declared size, which must be refused).
            let data = if matches!(typeflag, b'5' | b'2') { Vec::new() } else { data };
            let size = size_override.unwrap_or(Num::Octal(data.len() as u64));
            let e = GenEntry {
                typeflag,
                name,
                prefix,
                link: link.into_bytes(),
                size,
                mode,
                mtime,
                magic,
                good_checksum,
                data,
                pokes,
            };
            out.extend(e.bytes());
            out
        },
    )
}

/// A raw tar stream: entries, then an end marker of some sort.
fn tar_stream(
    path: BoxedStrategy<String>,
    link: BoxedStrategy<String>,
    max_entries: usize,
) -> impl Strategy<Value = Vec<u8>> {
    let end = prop_oneof![
        24 => Just(vec![0u8; 2 * BLOCK]),
        1 => Just(vec![0u8; BLOCK]),
        1 => Just(Vec::new()),
        1 => Just(vec![0u8; 20 * BLOCK]),
        1 => vec(any::<u8>(), 1..8).prop_map(|g| {
            let mut e = vec![0u8; 2 * BLOCK];
            e.extend(g);
            e
        }),
    ];
    (vec(tar_entry(path, link), 0..max_entries), end).prop_map(|(entries, end)| {
        let mut out = entries.concat();
        out.extend(end);
        out
    })
}

fn link_target() -> BoxedStrategy<String> {
    prop_oneof![
        4 => path_string(),
        1 => Just("/etc/passwd".to_string()),
        1 => Just("../../..".to_string()),
        1 => Just(String::new()),
        1 => (95usize..=105).prop_map(|n| "l".repeat(n)),
    ]
    .boxed()
}

/// A valid stream made by the real writer, decompressed (so that PAX
/// records are as ours look), to be damaged by the caller.
fn packed_raw() -> impl Strategy<Value = Vec<u8>> {
    let entry = (
        "[a-z]{1,8}(/[a-zé]{1,8}){0,2}",
        0u8..3,
        vec(any::<u8>(), 0..100),
        any::<i64>(),
        0u32..1_000_000_000,
        (95usize..=300),
    );
    vec(entry, 0..5).prop_map(|entries| {
        let mut w = cs_tarstream::PackWriter::new(Vec::new(), 1).unwrap();
        for (i, (p, kind, data, sec, nsec, linklen)) in entries.into_iter().enumerate() {
            let path = cs_protocol::RelPath::new(format!("{p}{i}")).unwrap();
            let mtime = cs_protocol::Timestamp::new(sec, nsec);
            let _ = match kind {
                0 => w.append_file(
                    &cs_tarstream::EntryHeader::file(path, 0o644, mtime, data.len() as u64),
                    &mut &data[..],
                ),
                1 => w.append_dir(&cs_tarstream::EntryHeader::dir(path, 0o755, mtime)),
                _ => w.append_symlink(&cs_tarstream::EntryHeader::symlink(path, 0o777, mtime, "t".repeat(linklen))),
            };
        }
        let (bytes, _) = w.finish().unwrap();
        zstd::decode_all(&bytes[..]).unwrap()
    })
}

fn tar_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Hand-made streams with hostile fields (the target compresses them).
        8 => (tar_stream(tar_path(), link_target(), 6), rare_mutations()).prop_map(|(b, m)| mutate(b, &m)),
        // Our writer's streams, damaged after decompression...
        3 => (packed_raw(), mutations()).prop_map(|(b, m)| mutate(b, &m)),
        // ... or as compressed bytes, damaged (reaches the zstd layer).
        2 => (packed_raw(), mutations()).prop_map(|(b, m)| mutate(super_compress(&b), &m)),
        // Many entries, for max_entries.
        1 => (9usize..12).prop_map(|n| {
            let mut out = Vec::new();
            for i in 0..n {
                let e = GenEntry { typeflag: b'0', name: format!("f{i}").into_bytes(), prefix: Vec::new(), link: Vec::new(), size: Num::Octal(0), mode: Num::Octal(0o644), mtime: Num::Octal(0), magic: 0, good_checksum: true, data: Vec::new(), pokes: Vec::new() };
                out.extend(e.bytes());
            }
            out.extend([0u8; 2 * BLOCK]);
            out
        }),
        1 => vec(any::<u8>(), 0..1100),
    ]
}

fn super_compress(raw: &[u8]) -> Vec<u8> {
    cs_fuzz_targets::tar::compress(raw)
}

#[test]
fn fuzz_tar_bounded() {
    let cases = drive("tar", tar_input(), fuzz_tar, 500_000);
    assert!(cases > 0);
}

// ---- tar_apply -----------------------------------------------------------

/// Paths that walk into and through the planted symlinks and each other.
fn apply_path() -> BoxedStrategy<String> {
    let comp = prop_oneof![
        2 => Just("up"), 2 => Just("upup"), 2 => Just("abs"), 1 => Just("abs_file"), 1 => Just("self"), 1 => Just("loop"),
        2 => Just("sub"), 1 => Just("file"), 2 => Just("x"), 1 => Just("s"), 1 => Just("bait"), 1 => Just("outside"),
        1 => Just(".."), 1 => Just("."), 1 => Just("root"),
    ];
    prop_oneof![
        8 => vec(comp, 1..4).prop_map(|c| c.join("/")),
        1 => Just("/tmp/cs-fuzz-escape".to_string()),
        1 => path_string(),
    ]
    .boxed()
}

fn apply_link() -> BoxedStrategy<String> {
    prop_oneof![
        Just("..".to_string()),
        Just("../..".to_string()),
        Just("../outside".to_string()),
        Just("/".to_string()),
        Just("/tmp".to_string()),
        Just(".".to_string()),
        Just("sub".to_string()),
        Just("up/..".to_string()),
        Just("x".to_string()),
        Just("s".to_string()),
    ]
    .boxed()
}

fn apply_input() -> impl Strategy<Value = Vec<u8>> {
    tar_stream(apply_path(), apply_link(), 8)
}

#[test]
fn fuzz_tar_apply_bounded() {
    let cases = drive("tar_apply", apply_input(), fuzz_tar_apply, 200_000);
    assert!(cases > 0);
}

// ---- the harness itself can fail -----------------------------------------

/// The driver finds and shrinks a planted bug: proof that a failing
/// property is not swallowed.
#[test]
fn driver_reports_a_planted_bug() {
    fn buggy(data: &[u8]) {
        assert!(!data.windows(2).any(|w| w == b".."), "found the planted bug");
    }
    // Bytes biased towards '.' and '/', so the bug is hit at once; not
    // relpath_input(): its long-path branch has a floor of ~3,800 bytes
    // (15 components of 250+), below which no shrink is possible, so a run
    // that hit it first could never shrink to the essence.
    let planted_input = vec(prop_oneof![Just(b'.'), Just(b'/'), any::<u8>()], 0..64);
    let res = quietly(|| drive_for("planted", planted_input, buggy, 1_000_000, std::time::Duration::from_secs(60)));
    let msg = match res {
        Ok(_) => panic!("the driver missed the planted bug"),
        Err(msg) => msg,
    };
    assert!(msg.contains("found the planted bug"), "{msg}");
    // Shrunk to (nearly) the essence: "..", possibly MessagePack-framed.
    let len: usize = msg
        .split("minimal input (")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("length in the message");
    assert!((2..=8).contains(&len), "not shrunk: {msg}");
}

/// The sandbox notices a write outside the root.
#[test]
fn sandbox_detects_an_escape() {
    let sb = cs_fuzz_targets::tar_apply::Sandbox::new();
    sb.assert_outside_untouched();
    std::fs::write(sb.outer.join("outside").join("escaped"), b"x").unwrap();
    let caught = quietly(|| sb.assert_outside_untouched());
    assert!(caught.is_err(), "an escape went unnoticed");
    // And a successful op whose result is not inside is noticed too.
    std::os::unix::fs::symlink("..", sb.root_path.join("sub").join("esc")).unwrap();
    let p = cs_protocol::RelPath::new("sub/esc/bait").unwrap();
    assert!(quietly(|| sb.assert_inside(&p)).is_err(), "a path through a symlink passed as inside");
}

// ---- the generators reach deep ---------------------------------------------

fn sample(strategy: impl Strategy<Value = Vec<u8>>, n: usize) -> Vec<Vec<u8>> {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    (0..n).map(|_| strategy.new_tree(&mut runner).unwrap().current()).collect()
}

fn variant<E: std::fmt::Debug>(e: &E) -> String {
    format!("{e:?}").split([' ', '(', '{']).next().unwrap_or("").to_string()
}

/// Hand-made tar streams get past the first header often, are accepted
/// often, and are refused for many different reasons: the generator does
/// not just produce noise the parser drops at byte 0.
#[test]
fn tar_generator_reaches_deep() {
    use cs_fuzz_targets::tar::{compress, small_limits, unpack_checked};
    let mut ok = 0;
    let mut visited = 0;
    let mut refusals = std::collections::BTreeMap::<String, usize>::new();
    for raw in sample(tar_input(), 3000) {
        let (seen, res) = unpack_checked(&compress(&raw), &small_limits(), 0);
        visited += usize::from(!seen.is_empty());
        match res {
            Ok(_) => ok += 1,
            Err(e) => *refusals.entry(variant(&e)).or_default() += 1,
        }
    }
    eprintln!("tar reach: {ok} accepted, {visited} visited an entry, refusals {refusals:?}");
    assert!(ok >= 300, "only {ok} of 3000 streams accepted");
    assert!(visited >= 600, "only {visited} of 3000 streams reached the visitor");
    assert!(refusals.len() >= 6, "refusals not varied: {refusals:?}");
}

/// Generated frames decode often, and hit many kinds of refusal.
#[test]
fn frame_generator_reaches_deep() {
    use cs_wire::{ClientMsg, Frame, ServerMsg};
    let mut ok = 0;
    let mut control_ok = 0;
    let mut refusals = std::collections::BTreeMap::<String, usize>::new();
    for b in sample(frame_input(), 3000) {
        let c = Frame::<ClientMsg>::decode_with(&b, &cs_fuzz_targets::frame::SMALL_LIMITS);
        let s = Frame::<ServerMsg>::decode_with(&b, &cs_fuzz_targets::frame::SMALL_LIMITS);
        for r in
            [c.as_ref().map(|f| matches!(f, Frame::Control(_))), s.as_ref().map(|f| matches!(f, Frame::Control(_)))]
        {
            match r {
                Ok(is_control) => {
                    ok += 1;
                    control_ok += usize::from(is_control);
                }
                Err(e) => *refusals.entry(variant(e)).or_default() += 1,
            }
        }
    }
    eprintln!("frame reach: {ok} decoded ({control_ok} control), refusals {refusals:?}");
    assert!(control_ok >= 300, "only {control_ok} control frames decoded");
    assert!(refusals.len() >= 6, "refusals not varied: {refusals:?}");
}

/// Generated apply streams create entries in the sandbox, including
/// through the planted names.
#[test]
fn apply_generator_reaches_deep() {
    use cs_fuzz_targets::tar::compress;
    let mut applied = 0;
    let mut streams_applied = 0;
    for raw in sample(apply_input(), 300) {
        let n = cs_fuzz_targets::tar_apply::apply_stream(&compress(&raw));
        applied += n;
        streams_applied += usize::from(n > 0);
    }
    eprintln!("apply reach: {applied} entries in {streams_applied} of 300 streams");
    assert!(streams_applied >= 100, "only {streams_applied} of 300 streams reached the apply");
}
