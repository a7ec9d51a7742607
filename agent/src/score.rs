//! Offline batch scoring: a verified bundle's model over a CSV or NDJSON
//! file, streaming, in batches, on every core.
//!
//! A reader thread cuts the input into blocks of whole lines; worker threads
//! parse, run and format a block each; the writer puts blocks back in input
//! order. Memory stays bounded by the channel depth whatever the file size.
//! Output goes to a temporary file renamed into place only on success.

use crate::engine::PlanFor;
use crate::engine::{Engine, Input, Output};
use crate::serving::{verify_and_load_for, ActivateError};
use ferry_protocol::{DType, Schema, TensorData, TrustRoot};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Ndjson,
}

impl Format {
    /// From a file extension: `.csv`, `.ndjson`/`.jsonl`/`.json`.
    pub fn from_path(p: &Path) -> Option<Self> {
        match p.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "ndjson" | "jsonl" | "json" => Some(Format::Ndjson),
            _ => None,
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "csv" => Ok(Format::Csv),
            "ndjson" | "jsonl" => Ok(Format::Ndjson),
            _ => Err(format!("unknown format {s:?} (csv or ndjson)")),
        }
    }
}

pub struct ScoreOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    /// Input format; from the extension when `None`.
    pub input_format: Option<Format>,
    /// Output format; from the extension when `None`.
    pub output_format: Option<Format>,
    pub skip_bad_rows: bool,
    /// Target rows per batch (lines per block).
    pub batch_rows: usize,
    /// Worker threads; all cores when 0.
    pub threads: usize,
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Bundle(#[from] ActivateError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("line {line}: {reason} (use --skip-bad-rows to skip such rows)")]
    BadRow { line: u64, reason: String },
    #[error("cannot tell the format of {0}; use --format csv|ndjson")]
    UnknownFormat(PathBuf),
    #[error("batch scoring needs one input of shape [N, F] with F fixed; this model has {0}")]
    Schema(String),
    #[error("line {line}: header has {got} columns, the model takes {want} features")]
    Header { line: u64, got: usize, want: usize },
    #[error("model failed on the batch starting at line {line}: {reason}")]
    Run { line: u64, reason: String },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScoreSummary {
    pub rows: u64,
    pub bad_rows: u64,
    /// Line numbers of the first skipped rows (at most 20).
    pub bad_lines: Vec<u64>,
}

/// Loads `bundle` (verified against `trust` at `now_unix`) and scores with
/// it.
pub fn score_bundle(
    bundle: &Path,
    trust: &TrustRoot,
    now_unix: u64,
    opts: &ScoreOptions,
) -> Result<ScoreSummary, ScoreError> {
    let loaded = verify_and_load_for(
        trust,
        bundle,
        now_unix,
        |_| None,
        PlanFor::Blocks(opts.batch_rows),
    )?;
    score(&loaded.engine, loaded.manifest.accepts_non_finite(), opts)
}

struct Block {
    index: u64,
    first_line: u64,
    bytes: Vec<u8>,
}

struct Done {
    out: Vec<u8>,
    rows: u64,
    bad: Vec<u64>,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ScoreError + 'a {
    move |source| ScoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The per-run constants workers need.
struct Job {
    engine: Engine,
    width: usize,
    dtype: DType,
    input_format: Format,
    output_format: Format,
    skip: bool,
    /// Refuse rows with NaN (missing) or infinite values: the model's
    /// manifest does not accept them.
    finite_only: bool,
}

/// Scores `opts.input` with `engine`; rows with a missing (NaN) or
/// infinite value are bad rows unless `accepts_non_finite` (the model's
/// signed manifest says so).
pub fn score(
    engine: &Engine,
    accepts_non_finite: bool,
    opts: &ScoreOptions,
) -> Result<ScoreSummary, ScoreError> {
    let schema = engine.schema().clone();
    let input_spec = match schema.inputs.as_slice() {
        [one] => one.clone(),
        _ => {
            return Err(ScoreError::Schema(format!(
                "{} inputs",
                schema.inputs.len()
            )))
        }
    };
    let width = input_spec
        .feature_width()
        .ok_or_else(|| ScoreError::Schema(input_spec.shape_string()))? as usize;
    if !matches!(input_spec.dtype, DType::F32 | DType::F64) {
        return Err(ScoreError::Schema(format!(
            "input type {}",
            input_spec.dtype
        )));
    }
    let input_format = opts
        .input_format
        .or_else(|| Format::from_path(&opts.input))
        .ok_or_else(|| ScoreError::UnknownFormat(opts.input.clone()))?;
    let output_format = opts
        .output_format
        .or_else(|| Format::from_path(&opts.output))
        .unwrap_or(input_format);
    let file = File::open(&opts.input).map_err(io("opening", &opts.input))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let progress = if opts.progress {
        let pb = ProgressBar::new(total);
        pb.set_style(
            ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb
    } else {
        ProgressBar::hidden()
    };
    let mut reader = BufReader::with_capacity(1 << 20, progress.wrap_read(file));

    // A CSV header is a first line that is not all numbers.
    let mut first_line = 1u64;
    let mut pending = Vec::new();
    if input_format == Format::Csv {
        reader
            .read_until(b'\n', &mut pending)
            .map_err(io("reading", &opts.input))?;
        let mut header = csv::ByteRecord::new();
        let mut first = csv_reader(&pending);
        // An unreadable first line is left to the row parser, which says why.
        let has_row = first.read_byte_record(&mut header).unwrap_or(false);
        let numeric = header.iter().all(|f| parse_field(f).is_some());
        if has_row && !numeric {
            if header.len() != width {
                return Err(ScoreError::Header {
                    line: 1,
                    got: header.len(),
                    want: width,
                });
            }
            pending.clear();
            first_line = 2;
        }
    }

    let tmp = opts.output.with_extension("partial");
    let out = File::create(&tmp).map_err(io("creating", &tmp))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    let header = output_header(&schema, output_format);
    let result = (|| {
        out.write_all(header.as_bytes())
            .map_err(io("writing", &tmp))?;
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            opts.threads
        };
        let job = Arc::new(Job {
            engine: engine.clone(),
            width,
            dtype: input_spec.dtype,
            input_format,
            output_format,
            skip: opts.skip_bad_rows,
            finite_only: !accepts_non_finite,
        });
        run_pipeline(
            &mut reader,
            pending,
            first_line,
            opts.batch_rows.max(1),
            threads,
            job,
            &mut out,
            &opts.input,
            &tmp,
        )
    })();
    progress.finish_and_clear();
    match result {
        Ok(summary) => {
            out.flush().map_err(io("writing", &tmp))?;
            drop(out);
            std::fs::rename(&tmp, &opts.output).map_err(io("renaming output to", &opts.output))?;
            Ok(summary)
        }
        Err(e) => {
            drop(out);
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_pipeline(
    reader: &mut (impl BufRead + Send),
    mut pending: Vec<u8>,
    first_line: u64,
    batch_rows: usize,
    threads: usize,
    job: Arc<Job>,
    out: &mut impl Write,
    input: &Path,
    tmp: &Path,
) -> Result<ScoreSummary, ScoreError> {
    let (block_tx, block_rx) = sync_channel::<Block>(threads * 2);
    let (done_tx, done_rx) = sync_channel::<(u64, Result<Done, ScoreError>)>(threads * 2);
    let block_rx = Arc::new(Mutex::new(block_rx));
    let mut workers = Vec::new();
    for _ in 0..threads {
        let rx: Arc<Mutex<Receiver<Block>>> = block_rx.clone();
        let tx = done_tx.clone();
        let job = job.clone();
        workers.push(std::thread::spawn(move || loop {
            let block = {
                let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
                guard.recv()
            };
            let Ok(block) = block else { break };
            let r = process(&job, &block);
            if tx.send((block.index, r)).is_err() {
                break;
            }
        }));
    }
    drop(done_tx);
    // Only workers hold the receiver now: if they stop, the feeder's send
    // fails instead of blocking forever.
    drop(block_rx);
    // Reader: blocks of `batch_rows` whole lines.
    let input = input.to_path_buf();
    let reader_result = std::thread::scope(|s| {
        let feeder = s.spawn(move || -> Result<(), ScoreError> {
            let mut index = 0u64;
            let mut line = first_line;
            loop {
                let mut lines = usize::from(!pending.is_empty());
                let mut buf = std::mem::take(&mut pending);
                while lines < batch_rows {
                    let n = reader
                        .read_until(b'\n', &mut buf)
                        .map_err(io("reading", &input))?;
                    if n == 0 {
                        break;
                    }
                    lines += 1;
                }
                if lines == 0 {
                    return Ok(());
                }
                let block = Block {
                    index,
                    first_line: line,
                    bytes: buf,
                };
                if block_tx.send(block).is_err() {
                    return Ok(()); // writer stopped on an error
                }
                index += 1;
                line += lines as u64;
            }
        });
        // Writer: in input order.
        let mut summary = ScoreSummary::default();
        let mut next = 0u64;
        let mut held: BTreeMap<u64, Done> = BTreeMap::new();
        let mut failure = None;
        for (index, r) in done_rx.iter() {
            match r {
                Ok(d) => {
                    held.insert(index, d);
                }
                // Report the earliest failing block; later ones may finish
                // first.
                Err(e) => {
                    if failure.as_ref().is_none_or(|(i, _)| index < *i) {
                        failure = Some((index, e));
                    }
                }
            }
            let stop_at = failure.as_ref().map_or(u64::MAX, |(i, _)| *i);
            while next < stop_at {
                let Some(d) = held.remove(&next) else { break };
                out.write_all(&d.out).map_err(io("writing", tmp))?;
                summary.rows += d.rows;
                summary.bad_rows += d.bad.len() as u64;
                for l in d.bad {
                    if summary.bad_lines.len() < 20 {
                        summary.bad_lines.push(l);
                    }
                }
                next += 1;
            }
            if next == stop_at {
                break;
            }
        }
        drop(done_rx);
        let fed = feeder.join();
        if let Some((_, e)) = failure {
            return Err(e);
        }
        match fed {
            Ok(r) => r?,
            Err(_) => {
                return Err(ScoreError::Run {
                    line: 0,
                    reason: "reader thread panicked".into(),
                })
            }
        }
        Ok(summary)
    });
    for w in workers {
        let _ = w.join();
    }
    reader_result
}

/// A reader for one block of CSV lines: no header (the first line is
/// handled apart), fields trimmed, rows of any width (checked per row so the
/// error names the line).
fn csv_reader(bytes: &[u8]) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes)
}

/// A numeric field; empty and `NaN` are missing values.
fn parse_field(f: &[u8]) -> Option<f64> {
    let f = std::str::from_utf8(f).ok()?;
    if f.is_empty() || f.eq_ignore_ascii_case("nan") {
        Some(f64::NAN)
    } else {
        f.parse::<f64>().ok()
    }
}

fn parse_csv_row(rec: &csv::ByteRecord, width: usize, row: &mut Vec<f64>) -> Result<(), String> {
    row.clear();
    if rec.len() != width {
        let found = if rec.len() > width {
            "more".to_string()
        } else {
            rec.len().to_string()
        };
        return Err(format!("expected {width} fields, found {found}"));
    }
    for (i, f) in rec.iter().enumerate() {
        let x = parse_field(f).ok_or_else(|| {
            format!(
                "field {} ({:?}) is not a number",
                i + 1,
                String::from_utf8_lossy(f)
            )
        })?;
        row.push(x);
    }
    Ok(())
}

fn parse_json_row(line: &str, width: usize, row: &mut Vec<f64>) -> Result<(), String> {
    row.clear();
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let arr = match &v {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(o) => match o.get("input").or_else(|| o.get("features")) {
            Some(serde_json::Value::Array(a)) => a,
            _ => return Err("expected a JSON array of numbers or {\"input\": [...]}".into()),
        },
        _ => return Err("expected a JSON array of numbers".into()),
    };
    if arr.len() != width {
        return Err(format!("expected {width} values, found {}", arr.len()));
    }
    for (i, x) in arr.iter().enumerate() {
        row.push(match x {
            serde_json::Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
            serde_json::Value::Null => f64::NAN,
            _ => return Err(format!("value {} is not a number", i + 1)),
        });
    }
    Ok(())
}

/// Why a parsed row cannot go to a model that takes only finite numbers:
/// its first missing (NaN) or infinite value, by column (from 1), as the
/// model's input type holds it.
fn non_finite(row: &[f64], dtype: DType) -> Option<String> {
    let (i, x) = row
        .iter()
        .enumerate()
        .find(|(_, x)| !x.is_finite() || (dtype == DType::F32 && !(**x as f32).is_finite()))?;
    let what = if x.is_nan() {
        "is missing (empty, NaN or null)".to_string()
    } else if x.is_infinite() {
        "is infinite".to_string()
    } else {
        format!("is {x:e}, beyond FP32's range")
    };
    Some(format!(
        "column {} {what}; this model takes only finite numbers (its manifest does not tag {}={})",
        i + 1,
        ferry_protocol::manifest::NON_FINITE_TAG,
        ferry_protocol::manifest::NON_FINITE_ACCEPT
    ))
}

fn process(job: &Job, block: &Block) -> Result<Done, ScoreError> {
    let mut values: Vec<f64> = Vec::with_capacity(job.width * 1024);
    let mut lines: Vec<u64> = Vec::new();
    let mut bad = Vec::new();
    let mut row = Vec::with_capacity(job.width);
    let mut keep =
        |line: u64, parsed: Result<(), String>, row: &[f64]| match parsed.and_then(|()| {
            match job
                .finite_only
                .then(|| non_finite(row, job.dtype))
                .flatten()
            {
                Some(reason) => Err(reason),
                None => Ok(()),
            }
        }) {
            Ok(()) => {
                values.extend_from_slice(row);
                lines.push(line);
                Ok(())
            }
            Err(reason) if job.skip => {
                tracing::debug!(line, %reason, "skipped bad row");
                bad.push(line);
                Ok(())
            }
            Err(reason) => Err(ScoreError::BadRow { line, reason }),
        };
    match job.input_format {
        Format::Csv => {
            // The csv crate handles quoting and skips blank lines. Its line
            // counter lags on CRLF, so a record's line is counted here from
            // the first byte of its content.
            let mut reader = csv_reader(&block.bytes);
            let mut rec = csv::ByteRecord::new();
            let (mut counted_to, mut line) = (0usize, block.first_line);
            let mut line_at = |byte: usize| {
                let end = byte.min(block.bytes.len());
                if end > counted_to {
                    let newlines = block.bytes[counted_to..end]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count();
                    line += newlines as u64;
                    counted_to = end;
                }
                line
            };
            loop {
                let at = line_at(reader.position().byte() as usize);
                match reader.read_byte_record(&mut rec) {
                    Ok(false) => break,
                    Ok(true) => {
                        // The recorded start may sit before the previous
                        // terminator's `\n` (CRLF) or blank lines: skip them.
                        let mut start = rec.position().map_or(0, |p| p.byte() as usize);
                        while block
                            .bytes
                            .get(start)
                            .is_some_and(|b| matches!(b, b'\r' | b'\n'))
                        {
                            start += 1;
                        }
                        let line = line_at(start);
                        let parsed = parse_csv_row(&rec, job.width, &mut row);
                        keep(line, parsed, &row)?;
                    }
                    // Reading bytes from memory with flexible widths has no
                    // error case left but a malformed record; say where.
                    Err(e) => {
                        keep(at, Err(format!("unreadable CSV ({e})")), &row)?;
                        break;
                    }
                }
            }
        }
        Format::Ndjson => {
            let text = std::str::from_utf8(&block.bytes).map_err(|e| ScoreError::BadRow {
                line: block.first_line,
                reason: format!("not UTF-8 ({e})"),
            })?;
            for (k, l) in text.split_terminator('\n').enumerate() {
                let l = l.strip_suffix('\r').unwrap_or(l);
                if l.trim().is_empty() {
                    continue;
                }
                let parsed = parse_json_row(l, job.width, &mut row);
                keep(block.first_line + k as u64, parsed, &row)?;
            }
        }
    }
    let n = lines.len();
    let mut out = Vec::with_capacity(n * 48);
    if n > 0 {
        let run_err = |reason: String| ScoreError::Run {
            line: block.first_line,
            reason,
        };
        // `score` takes float32 or float64 inputs only (checked at start).
        let outputs = match job.dtype {
            DType::F64 => job.engine.run(vec![Input {
                shape: vec![n, job.width],
                data: TensorData::F64(values),
            }]),
            _ => {
                // Parsed values go straight into the engine's tensor: no
                // float32 vector to copy in afterwards.
                let mut t = tract_onnx::prelude::Tensor::zero::<f32>(&[n, job.width])
                    .map_err(|e| run_err(e.to_string()))?;
                {
                    let mut plain = t
                        .try_as_plain_ram_mut()
                        .map_err(|e| run_err(e.to_string()))?;
                    let slots = plain
                        .as_slice_mut::<f32>()
                        .map_err(|e| run_err(e.to_string()))?;
                    for (slot, v) in slots.iter_mut().zip(&values) {
                        *slot = *v as f32;
                    }
                }
                job.engine.run_block(t)
            }
        }
        .map_err(|e| run_err(e.to_string()))?;
        format_rows(&outputs, &lines, job.output_format, &mut out);
    }
    Ok(Done {
        out,
        rows: n as u64,
        bad,
    })
}

fn output_header(schema: &Schema, format: Format) -> String {
    if format == Format::Ndjson {
        return String::new();
    }
    let mut h = String::from("line");
    for o in &schema.outputs {
        match o.shape.get(1) {
            Some(ferry_protocol::Dim::Fixed(c)) if o.shape.len() == 2 => {
                for j in 0..*c {
                    let _ = write!(h, ",{}_{j}", o.name);
                }
            }
            _ => {
                let _ = write!(h, ",{}", o.name);
            }
        }
    }
    h.push('\n');
    h
}

fn push_value(s: &mut String, d: &TensorData, i: usize) {
    let _ = match d {
        TensorData::F32(v) => write!(s, "{}", v[i]),
        TensorData::F64(v) => write!(s, "{}", v[i]),
        TensorData::I64(v) => write!(s, "{}", v[i]),
        TensorData::I32(v) => write!(s, "{}", v[i]),
        TensorData::Bool(v) => write!(s, "{}", v[i]),
        TensorData::Bytes(v) => write!(s, "{:?}", String::from_utf8_lossy(&v[i])),
    };
}

/// Writes one output line per scored row.
fn format_rows(outputs: &[Output], lines: &[u64], format: Format, out: &mut Vec<u8>) {
    let n = lines.len();
    let mut s = String::with_capacity(64);
    for (r, line) in lines.iter().enumerate() {
        s.clear();
        match format {
            Format::Csv => {
                let _ = write!(s, "{line}");
                for o in outputs {
                    let per_row = o.data.len() / n.max(1);
                    for j in 0..per_row {
                        s.push(',');
                        push_value(&mut s, &o.data, r * per_row + j);
                    }
                }
            }
            Format::Ndjson => {
                let _ = write!(s, "{{\"line\":{line}");
                for o in outputs {
                    let per_row = o.data.len() / n.max(1);
                    let _ = write!(s, ",{}:", serde_json::Value::String(o.name.clone()));
                    if o.shape.len() <= 1 {
                        push_value(&mut s, &o.data, r);
                    } else {
                        s.push('[');
                        for j in 0..per_row {
                            if j > 0 {
                                s.push(',');
                            }
                            push_value(&mut s, &o.data, r * per_row + j);
                        }
                        s.push(']');
                    }
                }
                s.push('}');
            }
        }
        s.push('\n');
        out.extend_from_slice(s.as_bytes());
    }
}
