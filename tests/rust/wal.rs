//! The write-ahead log (src/wal.rs): round trips, crash recovery (torn tails cut, corruption
//! refused with the file and offset), segments and truncation, group commit.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rtml::wal::{Wal, WalOptions, RECORD_HEADER, SEGMENT_HEADER};
use rtml::Error;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rtml-wal-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

fn payload(i: usize) -> Vec<u8> {
    // varied lengths (0 included) and contents
    (0..(i * 37) % 300)
        .map(|j| (i * 31 + j * 7) as u8)
        .collect()
}

fn read_all(w: &Wal) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = w.first_position();
    loop {
        let recs = w.read(pos, 7, 1 << 20).unwrap();
        if recs.is_empty() {
            return out;
        }
        for r in recs {
            assert_eq!(r.position, pos);
            pos = r.next;
            out.push((r.position, r.payload));
        }
    }
}

fn only_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort();
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs.pop().unwrap()
}

#[test]
fn wal_round_trip_and_reopen() {
    let d = tmpdir("roundtrip");
    let mut want = Vec::new();
    {
        let w = Wal::open(&d, WalOptions::default()).unwrap();
        let mut expect_pos = 0u64;
        for i in 0..40 {
            let p = payload(i);
            let pos = w.append(&p).unwrap();
            assert_eq!(pos, expect_pos);
            expect_pos += RECORD_HEADER + p.len() as u64;
            want.push((pos, p));
        }
        assert_eq!(w.durable_position(), expect_pos);
        assert_eq!(read_all(&w), want);
    }
    let w = Wal::open(&d, WalOptions::default()).unwrap();
    assert_eq!(w.recovery().truncated_bytes, 0);
    assert_eq!(w.recovery().tail_records, 40);
    assert_eq!(read_all(&w), want);
    // appends continue at the end
    let pos = w.append(b"more").unwrap();
    assert_eq!(
        pos,
        want.last()
            .map(|(p, b)| p + RECORD_HEADER + b.len() as u64)
            .unwrap()
    );
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn wal_torn_tail_is_truncated_at_every_cut() {
    let d = tmpdir("torn");
    let payloads: Vec<Vec<u8>> = (1..6).map(payload).collect();
    let full = {
        let w = Wal::open(&d, WalOptions::default()).unwrap();
        for p in &payloads {
            w.append(p).unwrap();
        }
        fs::read(only_segment(&d)).unwrap()
    };
    let seg = only_segment(&d);
    // record boundaries (file offsets)
    let mut bounds = vec![SEGMENT_HEADER];
    for p in &payloads {
        bounds.push(bounds.last().unwrap() + RECORD_HEADER + p.len() as u64);
    }
    assert_eq!(*bounds.last().unwrap(), full.len() as u64);
    let last_start = bounds[bounds.len() - 2];
    // every cut inside the last record, and garbage after the last complete record
    for cut in last_start + 1..full.len() as u64 {
        fs::write(&seg, &full[..cut as usize]).unwrap();
        let w = Wal::open(&d, WalOptions::default()).unwrap();
        assert_eq!(w.recovery().truncated_bytes, cut - last_start, "cut {cut}");
        assert_eq!(w.recovery().truncated_at, Some(last_start - SEGMENT_HEADER));
        let got = read_all(&w);
        assert_eq!(got.len(), payloads.len() - 1);
        assert_eq!(
            got.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(),
            payloads[..4]
        );
        drop(w);
        assert_eq!(fs::metadata(&seg).unwrap().len(), last_start);
    }
    for tail in [vec![0u8; 4096], vec![0xffu8; 13], b"garbage".to_vec()] {
        let mut data = full.clone();
        data.extend_from_slice(&tail);
        fs::write(&seg, &data).unwrap();
        let w = Wal::open(&d, WalOptions::default()).unwrap();
        assert_eq!(w.recovery().truncated_bytes, tail.len() as u64);
        assert_eq!(read_all(&w).len(), payloads.len());
        // and the log goes on from the cut
        let pos = w.append(b"next").unwrap();
        assert_eq!(pos, full.len() as u64 - SEGMENT_HEADER);
        drop(w);
        let w = Wal::open(&d, WalOptions::default()).unwrap();
        assert_eq!(read_all(&w).last().unwrap().1, b"next");
        drop(w);
    }
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn wal_corrupt_record_in_the_middle_is_an_error_naming_file_and_offset() {
    let d = tmpdir("corrupt");
    let payloads: Vec<Vec<u8>> = (1..6)
        .map(|i| payload(i).into_iter().chain([1u8]).collect())
        .collect();
    {
        let w = Wal::open(&d, WalOptions::default()).unwrap();
        for p in &payloads {
            w.append(p).unwrap();
        }
    }
    let seg = only_segment(&d);
    let rec2 = SEGMENT_HEADER
        + RECORD_HEADER
        + payloads[0].len() as u64
        + RECORD_HEADER
        + payloads[1].len() as u64;
    let original = fs::read(&seg).unwrap();
    // a flipped payload byte, a flipped CRC byte, a zeroed length: each before valid records
    let cases: [(&str, u64, u8); 5] = [
        ("payload", rec2 + RECORD_HEADER, 0x5a),
        ("crc", rec2 + 5, 0x5a),
        ("length smaller", rec2, 0x5a),
        ("length past the end of the file", rec2 + 2, 0x01),
        ("length past the record limit", rec2 + 3, 0x80),
    ];
    for (what, at, flip) in cases {
        let mut data = original.clone();
        data[at as usize] ^= flip;
        fs::write(&seg, &data).unwrap();
        match Wal::open(&d, WalOptions::default()) {
            Err(Error::Wal {
                path,
                offset,
                message,
            }) => {
                assert_eq!(path, seg, "{what}");
                assert_eq!(offset, rec2, "{what}");
                assert!(message.contains("corrupt"), "{what}: {message}");
                let shown = Error::Wal {
                    path,
                    offset,
                    message,
                }
                .to_string();
                assert!(
                    shown.contains(&seg.display().to_string())
                        && shown.contains(&format!("offset {rec2}"))
                );
            }
            other => panic!("{what}: expected Error::Wal, got {other:?}"),
        }
        // nothing was changed by the refused open
        assert_eq!(fs::read(&seg).unwrap(), data, "{what}");
    }
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn wal_segments_roll_truncate_and_keep_positions() {
    let d = tmpdir("segments");
    let opts = WalOptions {
        segment_bytes: 200,
        ..Default::default()
    };
    let mut want = Vec::new();
    {
        let w = Wal::open(&d, opts.clone()).unwrap();
        for i in 0..30 {
            let p = vec![i as u8; 50];
            want.push((w.append(&p).unwrap(), p));
        }
        let segs = w.segments();
        assert!(segs.len() > 5, "{segs:?}");
        for s in &segs {
            assert!(fs::metadata(&s.1).unwrap().len() <= 200 + RECORD_HEADER + 50);
        }
        assert_eq!(read_all(&w), want);
        // a checkpoint covering the first 10 records: segments wholly before it go
        let covered = want[10].0;
        let removed = w.truncate_before(covered).unwrap();
        assert!(removed >= 1);
        let first = w.first_position();
        assert!(first <= covered && first > 0);
        for s in &segs[..removed] {
            assert!(!s.1.exists());
        }
        // what is left reads back from the checkpoint's position on
        let rest: Vec<_> = want.iter().filter(|(p, _)| *p >= first).cloned().collect();
        assert_eq!(read_all(&w), rest);
        match w.read(0, 10, 1 << 20) {
            Err(Error::Wal { message, .. }) => assert!(message.contains("truncated"), "{message}"),
            other => panic!("{other:?}"),
        }
        // never the active segment
        w.truncate_before(u64::MAX).unwrap();
        assert_eq!(w.segments().len(), 1);
    }
    let w = Wal::open(&d, opts).unwrap();
    assert_eq!(
        w.durable_position(),
        want.last().unwrap().0 + RECORD_HEADER + 50
    );
    let pos = w.append(b"x").unwrap();
    assert_eq!(pos, want.last().unwrap().0 + RECORD_HEADER + 50);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn wal_corrupt_sealed_segment_is_an_error_on_read() {
    let d = tmpdir("sealed");
    let opts = WalOptions {
        segment_bytes: 100,
        ..Default::default()
    };
    let w = Wal::open(&d, opts).unwrap();
    for i in 0..10 {
        w.append(&[i as u8; 40]).unwrap();
    }
    let (base, path) = w.segments()[1].clone();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0xee], SEGMENT_HEADER + RECORD_HEADER + 3)
        .unwrap();
    match w.read(base, 10, 1 << 20) {
        Err(Error::Wal {
            path: p,
            offset,
            message,
        }) => {
            assert_eq!(p, path);
            assert_eq!(offset, SEGMENT_HEADER);
            assert!(message.contains("checksum"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // a position that is not a record boundary is refused, not misread
    assert!(matches!(w.read(3, 10, 1 << 20), Err(Error::Wal { .. })));
    // beyond the end
    assert!(matches!(
        w.read(w.durable_position() + 8, 1, 1 << 20),
        Err(Error::Wal { .. })
    ));
    drop(w);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn wal_is_locked_to_one_owner_and_survives_a_torn_segment_creation() {
    let d = tmpdir("lock");
    let w = Wal::open(&d, WalOptions::default()).unwrap();
    w.append(b"a").unwrap();
    match Wal::open(&d, WalOptions::default()) {
        Err(Error::Wal { message, .. }) => assert!(message.contains("LOCK"), "{message}"),
        other => panic!("{other:?}"),
    }
    w.roll().unwrap();
    drop(w);
    // a crash while creating the next segment: its header is incomplete
    let next = d.join(format!("{:020}.wal", 9));
    assert!(next.exists());
    fs::write(&next, &b"RTMLW"[..]).unwrap();
    let w = Wal::open(&d, WalOptions::default()).unwrap();
    assert_eq!(w.recovery().truncated_bytes, 5);
    assert_eq!(w.append(b"b").unwrap(), 9);
    assert_eq!(read_all(&w), vec![(0, b"a".to_vec()), (9, b"b".to_vec())]);
    drop(w);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn wal_group_commit_concurrent_appends() {
    for group_commit in [true, false] {
        let d = tmpdir(&format!("group-{group_commit}"));
        let w = Arc::new(
            Wal::open(
                &d,
                WalOptions {
                    group_commit,
                    segment_bytes: 4096,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let w = Arc::clone(&w);
                std::thread::spawn(move || {
                    (0..40)
                        .map(|i| {
                            let p = format!("thread {t} record {i}").into_bytes();
                            let pos = w.append(&p).unwrap();
                            // durable when append returns
                            assert!(w.durable_position() >= pos + RECORD_HEADER + p.len() as u64);
                            (pos, p)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut want: Vec<(u64, Vec<u8>)> = threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        want.sort();
        let (appends, syncs) = w.counters();
        assert_eq!(appends, 240);
        assert!(syncs >= 1 && syncs <= appends, "{syncs}");
        assert_eq!(read_all(&w), want);
        drop(w);
        let w = Wal::open(&d, WalOptions::default()).unwrap();
        assert_eq!(read_all(&w), want);
        drop(w);
        fs::remove_dir_all(&d).unwrap();
    }
}

#[test]
fn wal_append_many_is_one_write() {
    let d = tmpdir("many");
    let w = Wal::open(&d, WalOptions::default()).unwrap();
    let ps = w.append_many(&[b"one", b"", b"three"]).unwrap();
    assert_eq!(ps, vec![0, 11, 19]);
    assert_eq!(w.counters(), (3, 1));
    let mut f = OpenOptions::new()
        .append(true)
        .open(only_segment(&d))
        .unwrap();
    f.write_all(&[1, 2, 3]).unwrap();
    drop(f);
    drop(w);
    let w = Wal::open(&d, WalOptions::default()).unwrap();
    assert_eq!(w.recovery().truncated_bytes, 3);
    assert_eq!(read_all(&w).len(), 3);
    drop(w);
    fs::remove_dir_all(&d).unwrap();
}
