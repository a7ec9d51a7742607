//! Quantile PSI against the reference values in tests/fixtures/psi
//! (computed in float64 with numpy): edges, counts and PSI per feature.
#![allow(clippy::unwrap_used)]

use ferry_protocol::baseline::{numeric_bin, psi_from_fractions, Baseline, Column};
use std::path::PathBuf;

fn psi_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/psi")
}

fn read_csv(name: &str) -> (Vec<String>, Vec<Vec<f64>>) {
    let mut r = csv::Reader::from_path(psi_dir().join(name)).unwrap();
    let headers: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let mut cols = vec![Vec::new(); headers.len()];
    for rec in r.records() {
        let rec = rec.unwrap();
        for (c, v) in cols.iter_mut().zip(rec.iter()) {
            c.push(v.parse::<f64>().unwrap());
        }
    }
    (headers, cols)
}

#[test]
fn matches_reference_to_1e9() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(psi_dir().join("psi_reference.json")).unwrap(),
    )
    .unwrap();
    let (names, train) = read_csv("bc_train.csv");
    let columns: Vec<(String, Column)> = names
        .iter()
        .cloned()
        .zip(train.iter().cloned().map(Column::Numeric))
        .collect();
    let baseline = Baseline::from_columns(&columns, 10).unwrap();
    assert_eq!(baseline.rows, 398);

    let mut checked = 0;
    for (comparison, spec) in reference["comparisons"].as_object().unwrap() {
        let (cur_names, current) = read_csv(spec["current"].as_str().unwrap());
        assert_eq!(cur_names, names);
        let rows: Vec<Vec<f64>> = (0..current[0].len())
            .map(|i| current.iter().map(|c| c[i]).collect())
            .collect();
        let counts = baseline.count_rows(rows.iter().map(Vec::as_slice));
        let psis = ferry_protocol::psi(&baseline, &counts).unwrap();
        for (i, name) in names.iter().enumerate() {
            let want = &spec["features"][name];
            let f = &baseline.features[i];
            let ferry_protocol::FeatureKind::Numeric { edges, .. } = &f.kind else {
                panic!("numeric expected")
            };
            let want_edges: Vec<f64> = want["edges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            for (a, b) in edges.iter().zip(&want_edges) {
                assert!(
                    (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                    "{name} edge {a} vs {b}"
                );
            }
            let ref_counts: Vec<u64> = train[i].iter().fold(vec![0u64; 10], |mut acc, &x| {
                acc[numeric_bin(edges, x)] += 1;
                acc
            });
            let want_ref: Vec<u64> = serde_json::from_value(want["ref_counts"].clone()).unwrap();
            let want_cur: Vec<u64> = serde_json::from_value(want["cur_counts"].clone()).unwrap();
            assert_eq!(ref_counts, want_ref, "{comparison}/{name} reference counts");
            assert_eq!(counts[i], want_cur, "{comparison}/{name} current counts");
            let want_psi = want["psi_quantile10"].as_f64().unwrap();
            assert!(
                (psis[i] - want_psi).abs() < 1e-9,
                "{comparison}/{name}: psi {} vs {}",
                psis[i],
                want_psi
            );
            // The same value through the lower-level function.
            let direct = psi_from_fractions(f.expected(), &counts[i]).unwrap();
            assert_eq!(direct, psis[i]);
            checked += 1;
        }
    }
    assert_eq!(checked, 60, "both comparisons, 30 features each");
}

#[test]
fn shifted_features_are_the_ones_over_025() {
    let (names, train) = read_csv("bc_train.csv");
    let columns: Vec<(String, Column)> = names
        .iter()
        .cloned()
        .zip(train.into_iter().map(Column::Numeric))
        .collect();
    let baseline = Baseline::from_columns(&columns, 10).unwrap();
    let (_, shifted) = read_csv("bc_shifted.csv");
    let rows: Vec<Vec<f64>> = (0..shifted[0].len())
        .map(|i| shifted.iter().map(|c| c[i]).collect())
        .collect();
    let psis = ferry_protocol::psi(
        &baseline,
        &baseline.count_rows(rows.iter().map(Vec::as_slice)),
    )
    .unwrap();
    let flagged: Vec<usize> = (0..30).filter(|&i| psis[i] > 0.25).collect();
    assert_eq!(flagged, vec![0, 1, 3, 7, 21]);
}
