use super::*;
use crate::flow::key::{PROTO_TCP, PROTO_UDP};
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::AtomicBool;

fn k4(i: u32) -> FlowKey {
    FlowKey::v4(
        Ipv4Addr::from(0xc612_0000 | (i >> 16)),
        (i & 0xffff) as u16,
        Ipv4Addr::new(198, 19, 0, 1),
        80,
        PROTO_TCP,
    )
}

fn k6(i: u32) -> FlowKey {
    let mut a = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0).octets();
    a[12..].copy_from_slice(&i.to_be_bytes());
    FlowKey::v6(
        Ipv6Addr::from(a),
        40000,
        Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1),
        443,
        PROTO_UDP,
    )
}

type W = FlowTableWriter<u32, u32>;

/// Inserts `key -> v` with a record of its own holding `!v`.
fn put(w: &mut W, key: FlowKey, v: u32) -> FlowInsert {
    let Ok(rec) = w.add_record(!v) else {
        return FlowInsert::Full;
    };
    let res = w.insert(key, v, rec);
    w.release_record(rec);
    res
}

fn val(h: Option<Hit<'_, u32, u32>>) -> Option<u32> {
    h.map(|h| {
        assert_eq!(*h.record, !*h.value, "record does not belong to the entry");
        *h.value
    })
}

#[test]
fn insert_lookup_replace_remove() {
    let mut w: W = flow_table(16);
    let r = w.reader().unwrap();
    assert_eq!(w.capacity(), 16);
    assert_eq!(put(&mut w, k4(1), 10), FlowInsert::Inserted);
    assert_eq!(put(&mut w, k4(2), 20), FlowInsert::Inserted);
    assert_eq!(val(r.get(&k4(1))), Some(10));
    assert_eq!(val(w.get(&k4(2))), Some(20));
    assert_eq!(r.get(&k4(2)).map(|h| *h.key), Some(k4(2)));
    assert!(r.get(&k4(3)).is_none());
    assert_eq!(w.len(), 2);
    assert_eq!(w.records_live(), 2);

    assert_eq!(put(&mut w, k4(1), 11), FlowInsert::Replaced);
    assert_eq!(val(r.get(&k4(1))), Some(11));
    assert_eq!(w.len(), 2);
    // The old entry and its record, now unreferenced.
    assert_eq!(w.retired_len(), 2);

    assert!(w.remove(&k4(1)));
    assert!(!w.remove(&k4(1)));
    assert!(!r.contains(&k4(1)));
    assert!(r.contains(&k4(2)));
    assert_eq!(w.len(), 1);
    let mut all = Vec::new();
    w.for_each(|h| all.push((*h.key, *h.value)));
    assert_eq!(all, vec![(k4(2), 20)]);
}

#[test]
fn entries_are_one_cache_line_and_buckets_too() {
    assert_eq!(std::mem::size_of::<Entry<[u32; 4]>>(), 64);
    assert_eq!(std::mem::size_of::<Bucket>(), 64);
}

#[test]
fn four_entries_can_share_one_record() {
    let mut w: W = flow_table(16);
    let r = w.reader().unwrap();
    let rec = w.add_record(77).unwrap();
    for i in 0..4 {
        assert_eq!(w.insert(k4(i), i, rec), FlowInsert::Inserted);
    }
    w.release_record(rec);
    for i in 0..4 {
        let h = r.get(&k4(i)).unwrap();
        assert_eq!((*h.record, h.record_id), (77, rec));
    }
    for i in 0..3 {
        assert!(w.remove(&k4(i)));
    }
    assert_eq!(w.records_live(), 1, "one entry still points at it");
    assert!(w.remove(&k4(3)));
    assert_eq!(w.records_live(), 0);
    drop(r);
    assert_eq!(w.reclaim(), 5, "four entries and the record");
}

#[test]
fn full_at_capacity_is_counted_and_leaves_the_table_intact() {
    let mut w: W = flow_table(4);
    let r = w.reader().unwrap();
    for i in 0..4 {
        assert_eq!(put(&mut w, k4(i), i), FlowInsert::Inserted);
    }
    assert_eq!(put(&mut w, k4(99), 99), FlowInsert::Full);
    assert_eq!(put(&mut w, k6(99), 99), FlowInsert::Full);
    assert_eq!(w.full_count(), 2);
    assert_eq!(w.len(), 4);
    assert!(!r.contains(&k4(99)));
    for i in 0..4 {
        assert_eq!(val(r.get(&k4(i))), Some(i));
    }
    // Replacing at capacity is not an insert.
    assert_eq!(put(&mut w, k4(0), 100), FlowInsert::Replaced);
    assert!(w.remove(&k4(1)));
    assert_eq!(put(&mut w, k4(99), 99), FlowInsert::Inserted);
    assert_eq!(w.full_count(), 2);
}

#[test]
fn zero_capacity_refuses_everything() {
    let mut w: W = flow_table(0);
    let r = w.reader().unwrap();
    assert_eq!(put(&mut w, k4(1), 1), FlowInsert::Full);
    assert!(!r.contains(&k4(1)));
    assert_eq!(w.full_count(), 1);
}

#[test]
fn v4_and_v6_keys_are_distinct_entries() {
    let mut w: W = flow_table(8);
    let r = w.reader().unwrap();
    let a = Ipv4Addr::new(198, 18, 0, 1);
    let b = Ipv4Addr::new(198, 18, 0, 2);
    let v4 = FlowKey::v4(a, 1, b, 2, PROTO_TCP);
    let v6 = FlowKey::v6(a.to_ipv6_mapped(), 1, b.to_ipv6_mapped(), 2, PROTO_TCP);
    assert_eq!(put(&mut w, v4, 4), FlowInsert::Inserted);
    assert!(!r.contains(&v6));
    assert_eq!(put(&mut w, v6, 6), FlowInsert::Inserted);
    assert_eq!(val(r.get(&v4)), Some(4));
    assert_eq!(val(r.get(&v6)), Some(6));
    assert!(!r.contains(&v4.reversed()));
}

#[test]
fn churn_reuses_slots_and_never_fills_early() {
    let mut w: W = flow_table(64);
    let mut r = w.reader().unwrap();
    for round in 0..500u32 {
        for i in 0..64 {
            let k = k4(round * 64 + i);
            assert_eq!(put(&mut w, k, i), FlowInsert::Inserted, "round {round}");
        }
        for i in 0..64 {
            assert!(r.contains(&k4(round * 64 + i)));
        }
        for i in (1..63).step_by(2).rev().chain((0..63).step_by(2)) {
            assert!(w.remove(&k4(round * 64 + i)));
        }
        assert!(w.remove(&k4(round * 64 + 63)));
        assert!(w.is_empty());
        r.quiescent();
        w.reclaim();
    }
    assert_eq!(w.full_count(), 0);
    r.quiescent();
    w.reclaim();
    assert_eq!(w.retired_len(), 0);
}

#[derive(Debug)]
struct Tracked(Arc<AtomicBool>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_retired_record_is_not_dropped_before_every_reader_passed_a_quiescent_state() {
    let mut w: FlowTableWriter<u32, Tracked> = flow_table(8);
    let mut r1 = w.reader().unwrap();
    let r2 = w.reader().unwrap();
    let dropped = Arc::new(AtomicBool::new(false));
    let rec = w.add_record(Tracked(Arc::clone(&dropped))).unwrap();
    w.insert(k4(1), 1, rec);
    w.release_record(rec);
    assert_eq!(r1.get(&k4(1)).map(|h| *h.value), Some(1));
    assert!(w.remove(&k4(1)));
    assert_eq!(w.reclaim(), 0, "both readers may still hold it");
    r1.quiescent();
    assert_eq!(w.reclaim(), 0, "r2 has not passed");
    assert!(!dropped.load(Ordering::SeqCst));
    // An offline reader does not hold anything up.
    let off = r2.offline();
    assert_eq!(w.reclaim(), 2);
    assert!(dropped.load(Ordering::SeqCst));
    let _r2 = off.online();
    assert_eq!(w.readers(), 2);
}

#[test]
fn records_still_held_are_dropped_with_the_table() {
    let dropped = Arc::new(AtomicBool::new(false));
    {
        let mut w: FlowTableWriter<u32, Tracked> = flow_table(8);
        let rec = w.add_record(Tracked(Arc::clone(&dropped))).unwrap();
        w.insert(k4(1), 1, rec);
    }
    assert!(dropped.load(Ordering::SeqCst));
}

#[test]
fn bulk_lookups_match_single_lookups() {
    let mut w: W = flow_table(1000);
    let r = w.reader().unwrap();
    for i in (0..1000).step_by(2) {
        put(&mut w, k4(i), i);
    }
    let keys: Vec<FlowKey> = (0..70).map(k4).chain((0..10).map(k6)).collect();
    let mut seen = Vec::new();
    r.for_each_bulk(&keys, |i, h| seen.push((i, val(h))));
    let want: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (i, val(r.get(k))))
        .collect();
    assert_eq!(seen, want);
    assert_eq!(seen.iter().filter(|(_, v)| v.is_some()).count(), 35);
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, u32),
    Remove(u8),
    Lookup(u8),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        (0u8..40, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
        (0u8..40).prop_map(Op::Remove),
        (0u8..40).prop_map(Op::Lookup),
    ]
}

fn pkey(k: u8) -> FlowKey {
    if k & 1 == 0 {
        k4(u32::from(k))
    } else {
        k6(u32::from(k))
    }
}

proptest::proptest! {
    #[test]
    fn behaves_like_a_bounded_hashmap(cap in 0usize..24, ops in proptest::collection::vec(op(), 0..300)) {
        use proptest::prop_assert_eq;
        let mut w: W = flow_table(cap);
        let mut r = w.reader().unwrap();
        let mut model: HashMap<FlowKey, u32> = HashMap::new();
        let mut full = 0;
        for op in ops {
            match op {
                Op::Insert(k, v) => {
                    let k = pkey(k);
                    let want = if model.contains_key(&k) {
                        FlowInsert::Replaced
                    } else if model.len() >= cap {
                        full += 1;
                        FlowInsert::Full
                    } else {
                        FlowInsert::Inserted
                    };
                    if want != FlowInsert::Full {
                        model.insert(k, v);
                    }
                    prop_assert_eq!(put(&mut w, k, v), want);
                }
                Op::Remove(k) => {
                    let k = pkey(k);
                    prop_assert_eq!(w.remove(&k), model.remove(&k).is_some());
                }
                Op::Lookup(k) => {
                    let k = pkey(k);
                    prop_assert_eq!(val(r.get(&k)), model.get(&k).copied());
                    prop_assert_eq!(val(w.get(&k)), model.get(&k).copied());
                }
            }
            prop_assert_eq!(w.len(), model.len());
            r.quiescent();
            w.reclaim();
        }
        prop_assert_eq!(w.full_count(), full);
        for k in 0..40 {
            let k = pkey(k);
            prop_assert_eq!(val(r.get(&k)), model.get(&k).copied());
        }
        let mut all = Vec::new();
        w.for_each(|h| all.push((*h.key, *h.value)));
        all.sort();
        let mut want: Vec<_> = model.into_iter().collect();
        want.sort();
        prop_assert_eq!(all, want);
    }
}

#[test]
fn readers_always_find_stable_keys_while_the_writer_churns() {
    const STABLE: u32 = 200;
    const CHURN: u32 = 400;
    const ABSENT_BASE: u32 = 1_000_000;
    let mut w: W = flow_table(512);
    for i in 0..STABLE {
        put(&mut w, k4(i), i);
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let mut readers = Vec::new();
        for t in 0..3u32 {
            let mut r = w.reader().unwrap();
            let stop = &stop;
            readers.push(s.spawn(move || {
                let mut rounds = 0u64;
                let stable: Vec<FlowKey> = (0..STABLE).map(k4).collect();
                while !stop.load(Ordering::Relaxed) || rounds < 20 {
                    for i in 0..STABLE {
                        let got = r.get(&k4(i)).map(|h| (*h.key, *h.value, *h.record));
                        assert_eq!(got, Some((k4(i), i, !i)), "reader {t} lost stable key {i}");
                    }
                    for i in 0..50 {
                        assert!(!r.contains(&k4(ABSENT_BASE + i)));
                        assert!(!r.contains(&k6(i)));
                    }
                    r.for_each_bulk(&stable, |i, h| {
                        let h = h.expect("stable key missing in bulk");
                        assert_eq!(
                            (*h.key, *h.value, *h.record),
                            (stable[i], i as u32, !(i as u32))
                        );
                    });
                    // Churning keys: if found, they are whole.
                    for i in STABLE..STABLE + CHURN {
                        if let Some(h) = r.get(&k4(i)) {
                            assert_eq!(*h.key, k4(i));
                            assert_eq!(*h.record, !*h.value);
                        }
                    }
                    r.quiescent();
                    rounds += 1;
                }
                rounds
            }));
        }
        // A failed assertion below must still stop the readers (else the scope hangs).
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..60_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = STABLE + (x % u64::from(CHURN)) as u32;
            match (x >> 32) % 4 {
                0 | 1 => {
                    assert_ne!(put(&mut w, k4(i), step), FlowInsert::Full);
                }
                2 => {
                    w.remove(&k4(i));
                }
                _ => {
                    let s = (x >> 40) as u32 % STABLE;
                    assert_eq!(put(&mut w, k4(s), s), FlowInsert::Replaced);
                }
            }
            if step & 63 == 0 {
                w.reclaim();
            }
        }
        stop.store(true, Ordering::Relaxed);
        for h in readers {
            assert!(h.join().unwrap() >= 20);
        }
    });
    assert_eq!(w.full_count(), 0);
    assert!(w.synchronize(1000), "no reader left: everything reusable");
}

#[test]
fn a_table_fills_to_capacity_with_random_keys() {
    let cap = 1 << 20;
    let mut w: FlowTableWriter<u32, ()> = flow_table_with(FlowTableConfig {
        records: 1,
        ..FlowTableConfig::new(cap)
    });
    let r = w.reader().unwrap();
    let rec = w.add_record(()).unwrap();
    for i in 0..cap as u32 {
        assert_eq!(w.insert(k6(i), i, rec), FlowInsert::Inserted, "key {i}");
    }
    assert_eq!(w.insert(k6(u32::MAX), 0, rec), FlowInsert::Full);
    assert!(r.contains(&k6(12345)));
    let per_key = w.footprint() / cap;
    println!(
        "1M keys: {} buckets, {per_key} B per key allocated",
        w.buckets()
    );
    assert!(per_key <= 128, "{per_key} B per key");
}
