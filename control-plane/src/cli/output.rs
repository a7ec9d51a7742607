//! How the commands print what the server answered: pretty JSON under
//! `--json`, otherwise tables aligned by display width (comfy-table), the
//! one table style every command uses.

use comfy_table::{presets::NOTHING, Table};
use serde::Serialize;

pub fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A value as one table cell: `-` for nothing, JSON for structures.
pub fn cell<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Null) | Err(_) => "-".into(),
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
    }
}

/// A text cell: `-` for an empty string.
pub fn text(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// Seconds since the epoch as RFC 3339, `-` for none.
pub fn when(t: Option<i64>) -> String {
    t.and_then(|t| u64::try_from(t).ok())
        .map(|t| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(t),
            )
            .to_string()
        })
        .unwrap_or_else(|| "-".into())
}

/// Milliseconds since the epoch as RFC 3339 (to the second), `-` for none.
pub fn when_ms(t: Option<i64>) -> String {
    when(t.filter(|t| *t > 0).map(|t| t / 1000))
}

/// Rows under headers in ASCII capitals, each column as wide as its widest cell
/// (by display width), two spaces between columns, no borders.
pub fn render(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_style(NOTHING);
    t.set_header(headers.iter().map(|h| h.to_ascii_uppercase()));
    for r in rows {
        t.add_row(r);
    }
    let last = headers.len().saturating_sub(1);
    for (i, c) in t.column_iter_mut().enumerate() {
        c.set_padding((0, if i == last { 0 } else { 2 }));
    }
    t.trim_fmt()
}

/// Prints [`render`]'s table.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    println!("{}", render(headers, rows));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Display width of a character (the CJK block is two columns wide).
    fn width(c: char) -> usize {
        if ('\u{4e00}'..='\u{9fff}').contains(&c) {
            2
        } else {
            1
        }
    }

    /// Display columns where each cell of a line starts (cells hold no spaces).
    fn starts(line: &str) -> Vec<usize> {
        let (mut out, mut at, mut prev) = (Vec::new(), 0, ' ');
        for c in line.chars() {
            if c != ' ' && prev == ' ' {
                out.push(at);
            }
            at += width(c);
            prev = c;
        }
        out
    }

    /// Every column starts at the same display offset on every line,
    /// whatever the widths of the cells, wide characters included.
    #[test]
    fn columns_line_up() {
        let text = render(
            &["id", "host", "labels"],
            vec![
                vec!["dev_0123456789abcdef".into(), "h".into(), "{}".into()],
                vec![
                    "d".into(),
                    "a-long-hostname".into(),
                    "{\"site\":\"zürich\"}".into(),
                ],
                vec!["d2".into(), "漢字".into(), "-".into()],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(starts(lines[0]), vec![0, 22, 39], "{text}");
        for l in &lines {
            assert_eq!(starts(l), starts(lines[0]), "{text}");
            assert_eq!(*l, l.trim_end());
        }
    }

    #[test]
    fn nulls_are_dashes() {
        assert_eq!(cell(&None::<u8>), "-");
        assert_eq!(cell(&Some(3)), "3");
        assert_eq!(when_ms(Some(0)), "-");
        assert_eq!(when_ms(Some(1_700_000_000_123)), "2023-11-14T22:13:20Z");
    }
}
