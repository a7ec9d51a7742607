//! Reading the CLI's tables in tests: a row's cells, and a check that
//! every column lines up under its header.

/// The cells of the table row whose first cell is `first` (cells hold no
/// two spaces in a row).
pub fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|l| l.split("  ").next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first:?} in\n{table}"))
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// Every cell starts at its header's column: the header's columns begin
/// after two spaces, and on every line that position holds the start of a
/// cell (a non-space after a space).
pub fn assert_aligned(table: &str) {
    let lines: Vec<Vec<char>> = table
        .lines()
        .take_while(|l| !l.is_empty())
        .map(|l| l.chars().collect())
        .collect();
    let header = &lines[0];
    let starts: Vec<usize> = (2..header.len())
        .filter(|&i| header[i] != ' ' && header[i - 1] == ' ' && header[i - 2] == ' ')
        .collect();
    assert!(!starts.is_empty(), "one column only:\n{table}");
    for l in &lines[1..] {
        for &s in &starts {
            assert!(
                l.len() > s && l[s] != ' ' && l[s - 1] == ' ' && l[s - 2] == ' ',
                "column at {s} misaligned in\n{table}"
            );
        }
    }
}
