use openraft::{CommittedLeaderId, EntryPayload};

use super::*;
use crate::types::Entry;

fn rec(index: u64, term: u64) -> (LogId, Vec<u8>) {
    let id = LogId::new(CommittedLeaderId::new(term, 1), index);
    let e = Entry { log_id: id, payload: EntryPayload::Blank };
    (id, postcard::to_stdvec(&e).unwrap())
}

/// A framed record of about 2 KiB (several sectors) for index `index`.
fn big_framed(index: u64) -> Vec<u8> {
    let id = LogId::new(CommittedLeaderId::new(1, 1), index);
    let cmd = crate::state::Command::DeletePool { name: "x".repeat(2048) };
    let big =
        Entry { log_id: id, payload: EntryPayload::Normal(crate::state::Batch(std::sync::Arc::new(vec![cmd.into()]))) };
    let payload = postcard::to_stdvec(&big).unwrap();
    let mut rec = (payload.len() as u32).to_le_bytes().to_vec();
    rec.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    rec.extend_from_slice(&payload);
    rec
}

fn recs(r: std::ops::RangeInclusive<u64>, term: u64) -> Vec<(LogId, Vec<u8>)> {
    r.map(|i| rec(i, term)).collect()
}

/// The (index, term) of every entry `read` returns.
fn ids(wal: &Wal, start: u64, end: u64, max: usize) -> Vec<(u64, u64)> {
    wal.read(start, end, max)
        .unwrap()
        .iter()
        .map(|b| postcard::from_bytes::<Entry>(b).unwrap().log_id)
        .map(|id| (id.index, id.leader_id.term))
        .collect()
}

fn segments(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn what_is_appended_and_synced_is_read_back_after_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, rec0) = Wal::open(tmp.path()).unwrap();
    assert_eq!(rec0, Recovered::default());
    assert!(wal.is_empty() && wal.last().is_none());
    wal.append(&recs(1..=3, 1)).unwrap();
    wal.append(&recs(4..=5, 2)).unwrap();
    wal.sync().unwrap();
    assert_eq!(ids(&wal, 2, 5, usize::MAX), [(2, 1), (3, 1), (4, 2)]);
    drop(wal);
    let (wal, r) = Wal::open(tmp.path()).unwrap();
    assert_eq!(r, Recovered::default());
    assert_eq!(wal.last().map(|l| l.index), Some(5));
    assert_eq!(wal.runs(), [(1, 5)]);
    assert_eq!(ids(&wal, 0, 100, usize::MAX).len(), 5);
    // Appends go on after a reopen.
    wal.append(&recs(6..=6, 2)).unwrap();
    assert_eq!(ids(&wal, 6, 7, usize::MAX), [(6, 2)]);
    assert_eq!(segments(tmp.path()), [segment_name(1)]);
}

#[test]
fn a_torn_write_at_the_end_is_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(tmp.path()).unwrap();
    wal.append(&recs(1..=4, 1)).unwrap();
    wal.sync().unwrap();
    let whole = wal.inner().segments[0].len();
    drop(wal);
    let path = tmp.path().join(segment_name(1));
    let file_len = std::fs::metadata(&path).unwrap().len();
    assert!(file_len >= whole + PREFILL / 2, "zeros are written ahead of the records");
    // A fifth record's first sector, over the zeros; its later sectors never written.
    let five = big_framed(5);
    let torn = five[..((whole as usize / SECTOR + 1) * SECTOR) - whole as usize].to_vec();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&torn, whole).unwrap();
    drop(f);
    let (wal, r) = Wal::open(tmp.path()).unwrap();
    assert_eq!(r.dropped_bytes, torn.len() as u64);
    assert_eq!(wal.last().map(|l| l.index), Some(4));
    let data = std::fs::read(&path).unwrap();
    assert_eq!(data.len() as u64, file_len, "the zeros ahead stay");
    assert!(data[whole as usize..].iter().all(|b| *b == 0), "the torn record is zeros again");
    wal.append(&recs(5..=5, 1)).unwrap();
    assert_eq!(ids(&wal, 1, 6, usize::MAX).len(), 5);
    let five_end = wal.inner().segments[0].len();

    // A whole record with a flipped byte is damage, not a write cut short: refused, not cut.
    wal.sync().unwrap();
    drop(wal);
    let mut data = std::fs::read(&path).unwrap();
    data[whole as usize + HEADER] ^= 0x5a;
    std::fs::write(&path, &data).unwrap();
    let e = Wal::open(tmp.path()).err().expect("damage refused").to_string();
    assert!(e.contains("none of its sectors zero") && e.contains(&segment_name(1)), "{e}");
    data[whole as usize + HEADER] ^= 0x5a;
    std::fs::write(&path, &data).unwrap();

    // A stray byte far past the records, as a write that reached the disk out of order
    // leaves one, is part of the torn write too.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[7], five_end + 4096).unwrap();
    drop(f);
    let (wal, r) = Wal::open(tmp.path()).unwrap();
    assert_eq!(r.dropped_bytes, 4097);
    assert_eq!(wal.last().map(|l| l.index), Some(5));
}

/// Sectors reach the disk whole but in any order: a record whose later sector is still zeros
/// was cut short by a crash, while garbage over records in the middle of the last segment,
/// with whole records after it, is damage and stops the start.
#[test]
fn only_a_record_with_a_sector_unwritten_counts_as_cut_short() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(tmp.path()).unwrap();
    wal.append(&recs(1..=2, 1)).unwrap();
    wal.sync().unwrap();
    let whole = wal.inner().segments[0].len() as usize;
    drop(wal);
    let path = tmp.path().join(segment_name(1));
    let mut data = std::fs::read(&path).unwrap();
    // A 2 KiB record whose first sector made it and whose others did not.
    let rec = big_framed(3);
    let first_sector_end = (whole / SECTOR + 1) * SECTOR;
    data[whole..first_sector_end].copy_from_slice(&rec[..first_sector_end - whole]);
    std::fs::write(&path, &data).unwrap();
    let (wal, r) = Wal::open(tmp.path()).unwrap();
    assert_eq!(r.dropped_bytes, (first_sector_end - whole) as u64);
    assert_eq!(wal.last().map(|l| l.index), Some(2));
    drop(wal);

    // Garbage over the first record; the second still whole after it.
    let mut data = std::fs::read(&path).unwrap();
    for b in &mut data[HEADER..HEADER + 4] {
        *b = 0xa5;
    }
    std::fs::write(&path, &data).unwrap();
    let e = Wal::open(tmp.path()).err().expect("damage refused").to_string();
    assert!(e.contains("at byte 0") && e.contains("none of its sectors zero"), "{e}");
}

#[test]
fn a_bad_record_before_the_last_segment_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(tmp.path()).unwrap();
    wal.append(&recs(1..=3, 1)).unwrap();
    // Past a gap (a purge still in progress): a segment of its own.
    wal.append(&recs(10..=12, 2)).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.runs(), [(1, 3), (10, 12)]);
    drop(wal);
    assert_eq!(segments(tmp.path()), [segment_name(1), segment_name(10)]);
    // The zeros ahead in a segment before the last are no damage.
    assert_eq!(Wal::open(tmp.path()).unwrap().0.runs(), [(1, 3), (10, 12)]);
    let path = tmp.path().join(segment_name(1));
    let mut data = std::fs::read(&path).unwrap();
    data[HEADER + 1] ^= 0xff;
    std::fs::write(&path, &data).unwrap();
    let e = Wal::open(tmp.path()).err().expect("corruption refused").to_string();
    assert!(e.contains("fails its CRC") && e.contains(&segment_name(1)), "{e}");
}

#[test]
fn a_stranger_in_the_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("notes.txt"), b"hi").unwrap();
    let e = Wal::open(tmp.path()).err().expect("refused").to_string();
    assert!(e.contains("notes.txt"), "{e}");
}

#[test]
fn truncation_across_and_within_segments_lasts() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(tmp.path()).unwrap();
    wal.append(&recs(1..=5, 1)).unwrap();
    wal.append(&recs(8..=10, 1)).unwrap();
    wal.truncate(9).unwrap();
    assert_eq!(wal.runs(), [(1, 5), (8, 8)]);
    wal.truncate(8).unwrap();
    assert_eq!(wal.runs(), [(1, 5)]);
    wal.truncate(3).unwrap();
    assert!(wal.append(&recs(2..=2, 2)).is_err(), "no append over entries not truncated");
    wal.append(&recs(3..=4, 2)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (wal, r) = Wal::open(tmp.path()).unwrap();
    assert_eq!(r, Recovered::default());
    assert_eq!(ids(&wal, 1, 100, usize::MAX), [(1, 1), (2, 1), (3, 2), (4, 2)]);
    assert_eq!(segments(tmp.path()), [segment_name(1)]);
    wal.truncate(1).unwrap();
    assert!(wal.is_empty());
    assert!(segments(tmp.path()).is_empty());
}

#[test]
fn purge_removes_whole_segments_but_never_the_last() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(tmp.path()).unwrap();
    wal.append(&recs(1..=3, 1)).unwrap();
    wal.append(&recs(5..=6, 1)).unwrap();
    wal.append(&recs(9..=9, 1)).unwrap();
    wal.purge(4).unwrap();
    assert_eq!(wal.runs(), [(5, 6), (9, 9)]);
    wal.purge(5).unwrap();
    assert_eq!(wal.runs(), [(5, 6), (9, 9)], "6 is still needed");
    wal.purge(20).unwrap();
    assert_eq!(wal.runs(), [(9, 9)]);
    assert_eq!(segments(tmp.path()), [segment_name(9)]);
}

#[test]
fn reads_are_capped_by_bytes_across_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(tmp.path()).unwrap();
    wal.append(&recs(1..=3, 1)).unwrap();
    wal.append(&recs(7..=9, 1)).unwrap();
    let one = rec(1, 1).1.len();
    assert_eq!(ids(&wal, 2, 9, 2 * one).iter().map(|i| i.0).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(ids(&wal, 2, 9, 3 * one).iter().map(|i| i.0).collect::<Vec<_>>(), [2, 3, 7]);
    assert_eq!(ids(&wal, 2, 100, 1).iter().map(|i| i.0).collect::<Vec<_>>(), [2], "one always goes");
    assert_eq!(ids(&wal, 4, 7, usize::MAX), [], "nothing in the gap");
    assert_eq!(ids(&wal, 10, 20, usize::MAX), []);
    assert_eq!(ids(&wal, 3, 2, usize::MAX), [], "an empty range, even backwards");
}

#[test]
fn a_refused_append_leaves_no_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(tmp.path()).unwrap();
    wal.append(&recs(1..=2, 1)).unwrap();
    // Past a gap, so it would start a segment, but not consecutive: refused before that.
    let mut bad = recs(5..=6, 1);
    bad[1].0.index = 9;
    assert!(wal.append(&bad).is_err());
    assert!(wal.append(&[(rec(5, 1).0, Vec::new())]).is_err(), "an empty record would read as the end");
    assert_eq!(wal.runs(), [(1, 2)]);
    assert_eq!(segments(tmp.path()), [segment_name(1)]);
    assert_eq!(wal.last().map(|l| l.index), Some(2));
}

#[test]
fn a_new_segment_starts_once_the_last_is_full() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(tmp.path()).unwrap();
    let big = |i: u64| {
        let id = LogId::new(CommittedLeaderId::new(1, 1), i);
        (id, vec![0u8; (SEGMENT_BYTES / 2) as usize])
    };
    // Raw payloads: the WAL frames bytes; only opening decodes them.
    wal.append(&[big(1), big(2)]).unwrap();
    wal.append(&[big(3)]).unwrap();
    assert_eq!(wal.runs(), [(1, 2), (3, 3)]);
    assert_eq!(wal.read(2, 4, usize::MAX).unwrap().len(), 2);
}

#[test]
fn bytes_from_counts_the_records_at_and_after_an_index_across_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(tmp.path()).unwrap();
    wal.append(&recs(1..=3, 1)).unwrap();
    // A gap starts a second segment.
    wal.append(&recs(10..=11, 1)).unwrap();
    assert_eq!(segments(tmp.path()).len(), 2);
    let r = (HEADER + rec(1, 1).1.len()) as u64;
    assert_eq!(wal.bytes_from(0), 5 * r);
    assert_eq!(wal.bytes_from(2), 4 * r);
    assert_eq!(wal.bytes_from(4), 2 * r);
    assert_eq!(wal.bytes_from(11), r);
    assert_eq!(wal.bytes_from(12), 0);
}

#[test]
fn an_empty_segment_before_others_is_damage_and_only_the_last_may_be_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(tmp.path()).unwrap();
    wal.append(&recs(1..=3, 1)).unwrap();
    wal.append(&recs(10..=12, 1)).unwrap();
    wal.append(&recs(20..=22, 1)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    // The last segment made and nothing written to it before a crash: removed at start.
    std::fs::File::create(tmp.path().join(segment_name(30))).unwrap();
    let (wal, _) = Wal::open(tmp.path()).unwrap();
    assert_eq!(wal.runs(), [(1, 3), (10, 12), (20, 22)]);
    drop(wal);
    assert_eq!(segments(tmp.path()).len(), 3);
    // A middle one emptied: its entries were on disk before the next segment took any, so
    // this is damage, not a crash, and the node does not start on a log missing them.
    std::fs::OpenOptions::new().write(true).open(tmp.path().join(segment_name(10))).unwrap().set_len(0).unwrap();
    let e = Wal::open(tmp.path()).err().expect("refused").to_string();
    assert!(e.contains(&segment_name(10)) && e.contains("holds no entries"), "{e}");
    assert_eq!(segments(tmp.path()).len(), 3, "nothing was removed");
}
