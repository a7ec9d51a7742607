//! Computes a bundle baseline from reference data in CSV (header row =
//! feature names). A column whose every non-empty cell parses as a number is
//! numeric (empty cells are missing); any other column is categorical.

use ferry_protocol::baseline::{Baseline, BaselineError, Column};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum BaselineCsvError {
    #[error("{path}: {reason}")]
    Csv { path: String, reason: String },
    #[error("{path}: line {line}: expected {expected} fields, found {found}")]
    Width {
        path: String,
        line: u64,
        expected: usize,
        found: usize,
    },
    #[error("{path}: no data rows")]
    Empty { path: String },
    #[error("{path}: {columns} columns, but the model input {input:?} has {width} features")]
    ModelWidth {
        path: String,
        columns: usize,
        input: String,
        width: u64,
    },
    #[error(transparent)]
    Baseline(#[from] BaselineError),
}

/// Reads `path` and builds a baseline with `bins` bins per numeric feature.
pub fn from_csv(path: &Path, bins: usize) -> Result<Baseline, BaselineCsvError> {
    let p = path.display().to_string();
    let csv_err = |e: csv::Error| BaselineCsvError::Csv {
        path: p.clone(),
        reason: e.to_string(),
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(csv_err)?;
    let names: Vec<String> = reader
        .headers()
        .map_err(csv_err)?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let mut cells: Vec<Vec<String>> = vec![Vec::new(); names.len()];
    for rec in reader.records() {
        let rec = rec.map_err(csv_err)?;
        if rec.len() != names.len() {
            return Err(BaselineCsvError::Width {
                path: p.clone(),
                line: rec.position().map(|q| q.line()).unwrap_or(0),
                expected: names.len(),
                found: rec.len(),
            });
        }
        for (col, v) in cells.iter_mut().zip(rec.iter()) {
            col.push(v.trim().to_string());
        }
    }
    if cells.first().is_none_or(Vec::is_empty) {
        return Err(BaselineCsvError::Empty { path: p });
    }
    let columns: Vec<(String, Column)> = names
        .into_iter()
        .zip(cells)
        .map(|(name, col)| (name, classify(col)))
        .collect();
    Ok(Baseline::from_columns(&columns, bins)?)
}

fn classify(col: Vec<String>) -> Column {
    let parsed: Option<Vec<f64>> = col
        .iter()
        .map(|s| {
            if s.is_empty() || s.eq_ignore_ascii_case("nan") {
                Some(f64::NAN)
            } else {
                s.parse::<f64>().ok()
            }
        })
        .collect();
    match parsed {
        Some(v) => Column::Numeric(v),
        None => Column::Categorical(col),
    }
}
