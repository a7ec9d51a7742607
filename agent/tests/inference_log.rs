//! The inference log's bound, drop counter, cursor and acknowledgement.
#![allow(clippy::unwrap_used)]

use ferry_agent::inference_log::{Durability, Entry, InferenceLog, InferenceRecord};
use ferry_protocol::{Tensor, TensorData};

fn record(i: u64) -> Entry {
    Entry::Inference(InferenceRecord {
        time_ms: i,
        model: "m".into(),
        version: 1,
        variant: "champion".into(),
        latency_us: 10,
        request_id: Some(format!("r{i}")),
        error: None,
        outputs: vec![Tensor {
            name: "label".into(),
            shape: vec![1],
            data: TensorData::I64(vec![1]),
        }],
        bins: vec![vec![3; 30]],
        payload: None,
    })
}

#[test]
fn bounded_by_bytes_with_a_drop_counter_that_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let bound = 20_000;
    {
        let log = InferenceLog::open(dir.path(), bound, Durability::Async, 50).unwrap();
        for i in 0..2000 {
            log.append(&record(i)).unwrap();
            assert!(log.stats().bytes <= bound + 200, "log passed its bound");
        }
        let s = log.stats();
        assert!(s.dropped > 0);
        assert_eq!(s.records + s.dropped, 2000);
        // The oldest went first: what is left is the newest, in order.
        let left = log.read_from(0, 10_000).unwrap();
        assert_eq!(left.last().unwrap().0, 1999);
        assert_eq!(left.first().unwrap().0, s.dropped);
        log.flush().unwrap();
    }
    let log = InferenceLog::open(dir.path(), bound, Durability::Async, 50).unwrap();
    let s = log.stats();
    assert_eq!(s.records + s.dropped, 2000);
    assert_eq!(
        log.append(&record(2000)).unwrap(),
        2000,
        "sequence numbers continue"
    );
}

#[test]
fn cursor_reads_and_acks() {
    let dir = tempfile::tempdir().unwrap();
    let log = InferenceLog::open(dir.path(), 1 << 20, Durability::Sync, 50).unwrap();
    for i in 0..10 {
        assert_eq!(log.append(&record(i)).unwrap(), i);
    }
    let page = log.read_from(3, 4).unwrap();
    assert_eq!(
        page.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![3, 4, 5, 6]
    );
    assert_eq!(page[0].1, record(3));
    assert_eq!(log.ack(6).unwrap(), 7);
    assert_eq!(log.stats().records, 3);
    assert_eq!(log.read_from(0, 100).unwrap()[0].0, 7);
    assert_eq!(log.ack(100).unwrap(), 3);
    drop(log);
    let log = InferenceLog::open(dir.path(), 1 << 20, Durability::Sync, 50).unwrap();
    assert_eq!(
        log.append(&record(0)).unwrap(),
        10,
        "an emptied log never reuses sequence numbers"
    );
}

#[test]
fn concurrent_appends_are_numbered_without_gaps_and_all_readable() {
    let dir = tempfile::tempdir().unwrap();
    let log = InferenceLog::open(dir.path(), 1 << 30, Durability::Async, 50).unwrap();
    let mut seqs: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let log = &log;
                s.spawn(move || {
                    (0..500)
                        .map(|i| log.append(&record(t * 1000 + i)).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // A reader and an acknowledger racing the appenders.
        let mut read = 0;
        while read < 100 {
            read += log.read_from(0, 50).unwrap().len();
        }
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    seqs.sort_unstable();
    assert_eq!(seqs, (0..2000).collect::<Vec<_>>());
    let all = log.read_from(0, 10_000).unwrap();
    assert_eq!(all.len(), 2000);
    assert!(all.windows(2).all(|w| w[1].0 == w[0].0 + 1), "in order");
    // Acknowledge part of the way into whatever group holds record 1234.
    assert_eq!(log.ack(1234).unwrap(), 1235);
    let rest = log.read_from(0, 10_000).unwrap();
    assert_eq!(rest.first().unwrap().0, 1235);
    assert_eq!(rest.len(), 765);
    assert_eq!(log.stats().records, 765);
    assert_eq!(log.stats().first_seq, Some(1235));
}

#[test]
fn records_stored_one_per_key_by_older_agents_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let old = db.open_tree("records").unwrap();
        for i in 5..8u64 {
            old.insert(
                i.to_be_bytes(),
                ferry_protocol::encoding::encode(&record(i)),
            )
            .unwrap();
        }
        db.flush().unwrap();
    }
    let log = InferenceLog::open(dir.path(), 1 << 20, Durability::Async, 50).unwrap();
    let got = log.read_from(0, 10).unwrap();
    assert_eq!(
        got,
        (5..8).map(|i| (i, record(i))).collect::<Vec<_>>(),
        "the old records, in order"
    );
    assert_eq!(log.stats().records, 3);
    assert_eq!(log.append(&record(8)).unwrap(), 8, "numbering continues");
    drop(log);
    // Reopening does not migrate twice.
    let log = InferenceLog::open(dir.path(), 1 << 20, Durability::Async, 50).unwrap();
    assert_eq!(log.stats().records, 4);
}

/// L13: what `append` accepts, `read_from` reads. A sampled payload that
/// would put a record over the limit is left out; a record still over it is
/// refused at append, and the cursor reads on past both.
#[test]
fn a_record_over_the_limit_never_sticks_the_cursor() {
    use ferry_agent::inference_log::{FeedbackRecord, LogError, RECORD_LIMIT};
    let dir = tempfile::tempdir().unwrap();
    let log = InferenceLog::open(dir.path(), 1 << 30, Durability::Async, 50).unwrap();
    log.append(&record(0)).unwrap();
    // A sampled request whose full inputs alone are over the limit.
    let floats = RECORD_LIMIT / 4 + 1024;
    let Entry::Inference(mut big) = record(1) else {
        unreachable!()
    };
    big.payload = Some(vec![Tensor {
        name: "input".into(),
        shape: vec![1, floats as u64],
        data: TensorData::F32(vec![0.5; floats]),
    }]);
    assert_eq!(log.append(&Entry::Inference(big)).unwrap(), 1);
    // A record that is large without any payload is refused.
    let huge = Entry::Feedback(FeedbackRecord {
        time_ms: 2,
        model: "m".into(),
        request_id: "r2".into(),
        label_json: "1".repeat(RECORD_LIMIT + 1),
    });
    assert!(matches!(log.append(&huge), Err(LogError::TooLarge(_))));
    log.append(&record(3)).unwrap();
    let all = log.read_from(0, 100).unwrap();
    let seqs: Vec<u64> = all.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [0, 1, 2], "every stored record reads back, in order");
    match &all[1].1 {
        Entry::Inference(r) => {
            assert_eq!(r.request_id.as_deref(), Some("r1"));
            assert!(r.payload.is_none(), "the oversized payload was left out");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(log.read_from(2, 100).unwrap().len(), 1);
}
