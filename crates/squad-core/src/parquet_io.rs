//! Parquet files with string key/value metadata (provenance: source file, sha256, settings),
//! written atomically and read back with errors that name the file.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use polars::prelude::*;

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

/// Key/value metadata stored in the Parquet footer.
pub type Metadata = BTreeMap<String, String>;

/// Footer key naming what a file holds (`examples`, `features`): lets readers reject a file
/// of another kind given in its place.
pub const KIND: &str = "squad_qa.kind";

/// Writes `df` to `path` (zstd) with `metadata` in the footer; temp file + rename.
pub fn write_parquet(path: &Path, df: &mut DataFrame, metadata: &Metadata) -> Result<()> {
    let kv: Vec<(String, String)> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    write_atomic(path, |file| {
        ParquetWriter::new(file)
            .with_compression(ParquetCompression::Zstd(None))
            .with_key_value_metadata(Some(KeyValueMetadata::from_static(kv)))
            .finish(df)
            .map(|_| ())
            .map_err(std::io::Error::other)
    })
}

/// Reads the whole file and its footer metadata.
pub fn read_parquet(path: &Path) -> Result<(DataFrame, Metadata)> {
    let mut reader = open(path)?;
    let metadata = footer_metadata(path, &mut reader)?;
    let df = reader.finish().map_err(|e| parquet_error(path, e))?;
    Ok((df, metadata))
}

/// Reads only the footer metadata (cheap: no column data is decoded).
pub fn read_metadata(path: &Path) -> Result<Metadata> {
    footer_metadata(path, &mut open(path)?)
}

fn open(path: &Path) -> Result<ParquetReader<File>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(ParquetReader::new(file))
}

fn footer_metadata(path: &Path, reader: &mut ParquetReader<File>) -> Result<Metadata> {
    let meta = reader.get_metadata().map_err(|e| parquet_error(path, e))?;
    Ok(meta
        .key_value_metadata()
        .iter()
        .flatten()
        .filter(|kv| kv.key != "ARROW:schema")
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
        .collect())
}

/// Fails unless the file's `squad_qa.kind` metadata is `kind` (made by `producer`).
pub fn expect_kind(path: &Path, metadata: &Metadata, kind: &str, producer: &str) -> Result<()> {
    match metadata.get(KIND).map(String::as_str) {
        Some(k) if k == kind => Ok(()),
        Some(other) => Err(Error::schema(
            path,
            format!("this is a `{other}` file, expected a `{kind}` file (made by {producer})"),
        )),
        None => Err(Error::schema(
            path,
            format!("no squad_qa.kind metadata: not a `{kind}` file made by {producer}"),
        )),
    }
}

fn parquet_error(path: &Path, e: PolarsError) -> Error {
    Error::Parquet {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Typed column access with schema errors that name the file and the column.
pub struct Columns<'a> {
    path: &'a Path,
    df: &'a DataFrame,
}

impl<'a> Columns<'a> {
    pub fn new(path: &'a Path, df: &'a DataFrame) -> Self {
        Columns { path, df }
    }

    fn column(&self, name: &str) -> Result<&'a Series> {
        self.df
            .column(name)
            .map(|c| c.as_materialized_series())
            .map_err(|_| {
                Error::schema(
                    self.path,
                    format!("missing column `{name}` (is this the right kind of file?)"),
                )
            })
    }

    fn wrong_type(&self, name: &str, want: &str, got: &DataType) -> Error {
        Error::schema(
            self.path,
            format!("column `{name}` has type {got}, expected {want}"),
        )
    }

    fn null_in(&self, name: &str, row: usize) -> Error {
        Error::schema(self.path, format!("column `{name}` is null at row {row}"))
    }

    pub fn strings(&self, name: &str) -> Result<Vec<String>> {
        let s = self.column(name)?;
        let ca = s
            .str()
            .map_err(|_| self.wrong_type(name, "string", s.dtype()))?;
        ca.iter()
            .enumerate()
            .map(|(row, v)| v.map(str::to_owned).ok_or_else(|| self.null_in(name, row)))
            .collect()
    }

    pub fn bools(&self, name: &str) -> Result<Vec<bool>> {
        let s = self.column(name)?;
        let ca = s
            .bool()
            .map_err(|_| self.wrong_type(name, "bool", s.dtype()))?;
        ca.iter()
            .enumerate()
            .map(|(row, v)| v.ok_or_else(|| self.null_in(name, row)))
            .collect()
    }

    pub fn i32s(&self, name: &str) -> Result<Vec<i32>> {
        let s = self.column(name)?;
        let ca = s
            .i32()
            .map_err(|_| self.wrong_type(name, "i32", s.dtype()))?;
        ca.iter()
            .enumerate()
            .map(|(row, v)| v.ok_or_else(|| self.null_in(name, row)))
            .collect()
    }

    pub fn u32s(&self, name: &str) -> Result<Vec<u32>> {
        let s = self.column(name)?;
        let ca = s
            .u32()
            .map_err(|_| self.wrong_type(name, "u32", s.dtype()))?;
        ca.iter()
            .enumerate()
            .map(|(row, v)| v.ok_or_else(|| self.null_in(name, row)))
            .collect()
    }

    pub fn string_lists(&self, name: &str) -> Result<Vec<Vec<String>>> {
        let s = self.column(name)?;
        let wrong = || self.wrong_type(name, "list<string>", s.dtype());
        let ca = s.list().map_err(|_| wrong())?;
        ca.amortized_iter()
            .enumerate()
            .map(|(row, item)| {
                let item = item.ok_or_else(|| self.null_in(name, row))?;
                let inner = item.as_ref().str().map_err(|_| wrong())?;
                inner
                    .iter()
                    .map(|v| v.map(str::to_owned).ok_or_else(|| self.null_in(name, row)))
                    .collect()
            })
            .collect()
    }

    pub fn i32_lists(&self, name: &str) -> Result<Vec<Vec<i32>>> {
        let s = self.column(name)?;
        let wrong = || self.wrong_type(name, "list<i32>", s.dtype());
        let ca = s.list().map_err(|_| wrong())?;
        ca.amortized_iter()
            .enumerate()
            .map(|(row, item)| {
                let item = item.ok_or_else(|| self.null_in(name, row))?;
                let inner = item.as_ref().i32().map_err(|_| wrong())?;
                inner
                    .iter()
                    .map(|v| v.ok_or_else(|| self.null_in(name, row)))
                    .collect()
            })
            .collect()
    }
}

impl Columns<'_> {
    pub fn f32_lists(&self, name: &str) -> Result<Vec<Vec<f32>>> {
        let s = self.column(name)?;
        let wrong = || self.wrong_type(name, "list<f32>", s.dtype());
        let ca = s.list().map_err(|_| wrong())?;
        ca.amortized_iter()
            .enumerate()
            .map(|(row, item)| {
                let item = item.ok_or_else(|| self.null_in(name, row))?;
                let inner = item.as_ref().f32().map_err(|_| wrong())?;
                inner
                    .iter()
                    .map(|v| v.ok_or_else(|| self.null_in(name, row)))
                    .collect()
            })
            .collect()
    }
}

/// Builds a `list<string>` column.
pub fn string_list_column<'a>(
    name: &str,
    rows: impl ExactSizeIterator<Item = &'a [String]>,
) -> Column {
    let mut builder = ListStringChunkedBuilder::new(name.into(), rows.len(), rows.len());
    for row in rows {
        builder.append_values_iter(row.iter().map(String::as_str));
    }
    builder.finish().into_series().into()
}

/// Builds a `list<i32>` column.
pub fn i32_list_column<'a>(name: &str, rows: impl ExactSizeIterator<Item = &'a [i32]>) -> Column {
    let mut builder = ListPrimitiveChunkedBuilder::<Int32Type>::new(
        name.into(),
        rows.len(),
        rows.len(),
        DataType::Int32,
    );
    for row in rows {
        builder.append_slice(row);
    }
    builder.finish().into_series().into()
}
