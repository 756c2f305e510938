//! `--format`: what `eval`, `grad` and `analyze` print on stdout. `table` is for reading;
//! `csv` (a header line, then one line per row, RFC 4180 quoting) and `json` (JSON lines: one
//! object per row, keys in column order) are for programs: `pandas.read_csv`,
//! `pandas.read_json(lines=True)`. Rows are printed as they complete, so both stream.
//!
//! Numbers are printed in full: the shortest text that reads back to the same f64. A NaN is
//! `NaN` in csv (read_csv's default NA marker) and `null` in json, which has no NaN; an
//! infinity is `inf` / `-inf` in csv and `null` in json.
use clap::ValueEnum;
use std::io::Write;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// Aligned columns, for reading (the default).
    #[default]
    Table,
    /// Comma-separated values with a header line.
    Csv,
    /// JSON lines: one object per row.
    Json,
}

/// One printed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    I(i64),
    F(f64),
    S(String),
}

impl From<i64> for Val {
    fn from(v: i64) -> Val {
        Val::I(v)
    }
}

impl From<usize> for Val {
    fn from(v: usize) -> Val {
        Val::I(v as i64)
    }
}

impl From<f64> for Val {
    fn from(v: f64) -> Val {
        Val::F(v)
    }
}

impl From<&str> for Val {
    fn from(v: &str) -> Val {
        Val::S(v.to_string())
    }
}

impl From<String> for Val {
    fn from(v: String) -> Val {
        Val::S(v)
    }
}

/// A csv field: quoted where it holds a comma, a quote or a line break (quotes doubled).
fn csv_field(v: &Val) -> String {
    match v {
        Val::I(i) => i.to_string(),
        Val::F(f) if f.is_nan() => "NaN".into(),
        // Debug is the shortest round-trip text (`0.1`, `1e-7`, `inf`).
        Val::F(f) => format!("{f:?}"),
        Val::S(s) if s.contains([',', '"', '\n', '\r']) => {
            format!("\"{}\"", s.replace('"', "\"\""))
        }
        Val::S(s) => s.clone(),
    }
}

fn json_value(v: &Val) -> serde_json::Value {
    match v {
        Val::I(i) => (*i).into(),
        // Non-finite numbers become null.
        Val::F(f) => (*f).into(),
        Val::S(s) => s.as_str().into(),
    }
}

/// The csv header line of `columns`.
pub fn csv_header(columns: &[&str]) -> String {
    columns
        .iter()
        .map(|c| csv_field(&Val::from(*c)))
        .collect::<Vec<_>>()
        .join(",")
}

/// One row, `columns` and `values` in the same order, as a csv or json line (`None` for table,
/// which each subcommand lays out itself).
pub fn line(format: Format, columns: &[&str], values: &[Val]) -> Option<String> {
    debug_assert_eq!(columns.len(), values.len());
    match format {
        Format::Table => None,
        Format::Csv => Some(values.iter().map(csv_field).collect::<Vec<_>>().join(",")),
        Format::Json => {
            let fields: Vec<String> = columns
                .iter()
                .zip(values)
                .map(|(c, v)| format!("{}:{}", serde_json::Value::from(*c), json_value(v)))
                .collect();
            Some(format!("{{{}}}", fields.join(",")))
        }
    }
}

/// Prints the header csv needs (nothing for json and table).
pub fn print_header(format: Format, columns: &[&str]) {
    if format == Format::Csv {
        println!("{}", csv_header(columns));
    }
}

/// Prints one csv or json row and flushes it, so that a reader of the pipe sees each row as it
/// completes.
pub fn print_row(format: Format, columns: &[&str], values: &[Val]) {
    if let Some(l) = line(format, columns, values) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{l}");
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_numbers() {
        let cols = ["step", "loss", "checkpoint"];
        let v = [Val::I(5), Val::F(0.1), Val::from("a,\"b\".safetensors")];
        assert_eq!(csv_header(&cols), "step,loss,checkpoint");
        assert_eq!(
            line(Format::Csv, &cols, &v).unwrap(),
            "5,0.1,\"a,\"\"b\"\".safetensors\""
        );
        let nan = [Val::I(-1), Val::F(f64::NAN), Val::from("x")];
        assert_eq!(line(Format::Csv, &cols, &nan).unwrap(), "-1,NaN,x");
    }

    #[test]
    fn json_lines_keep_column_order_and_null_for_nan() {
        let cols = ["step", "loss", "checkpoint"];
        let v = [Val::I(5), Val::F(f64::NAN), Val::from("c\"1")];
        assert_eq!(
            line(Format::Json, &cols, &v).unwrap(),
            r#"{"step":5,"loss":null,"checkpoint":"c\"1"}"#
        );
        assert_eq!(line(Format::Table, &cols, &v), None);
    }
}
