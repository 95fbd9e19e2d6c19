//! The dense table driver.
//!
//! The table is cut into blocks of rows; each block runs a plan compiled once per call: per step
//! a kernel looping over the block's rows with the step's scalar function (the same functions
//! the one-row driver calls), on working columns that stay in cache. Outputs go straight into
//! one preallocated, zeroed float64 matrix: a one-hot step writes only its 1.0 (or the NaNs of
//! a null category). Blocks run in parallel. Any error falls back to the reference driver, so
//! the error reported is the reference driver's (first failing step, absolute row).

use std::collections::HashMap;
use std::str::FromStr;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use rayon::prelude::*;
use smallvec::SmallVec;

use super::op::{
    apply_num, binary, bucket, filled, hash_bucket, inner_edges, one_hot_cell, ordinal_value,
    scaled, target_value, time_part, vocab_index, BinaryOp, Cat, CatRef, Op, TimePart, Vocab,
};
use super::read::{cats_of, numeric_of, times_of};
use super::Transforms;
use crate::error::{Error, Result};

/// Rows per block: a block's working columns stay in L1/L2.
pub(super) const BLOCK: usize = 512;
/// A null entry of a block's category-index column.
pub(super) const NULL_IDX: u32 = u32::MAX;

/// Memory order of a [`Dense`] matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Row after row (C order), as a model's `predict` takes it.
    RowMajor,
    /// Column after column (Fortran order): every column is one contiguous slice.
    ColumnMajor,
}

/// The result of [`Transforms::transform_dense`]: `rows x cols` float64 values, one column per
/// feature name, NaN = null.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    pub values: Vec<f64>,
    pub rows: usize,
    pub cols: usize,
    pub layout: Layout,
    /// Per column: whether it holds a null (NaN).
    pub has_null: Vec<bool>,
}

impl Dense {
    /// The value at (`row`, `col`).
    pub fn get(&self, row: usize, col: usize) -> f64 {
        match self.layout {
            Layout::RowMajor => self.values[row * self.cols + col],
            Layout::ColumnMajor => self.values[col * self.rows + row],
        }
    }

    /// Column `col`, copied out.
    pub fn column(&self, col: usize) -> Vec<f64> {
        match self.layout {
            Layout::ColumnMajor => self.values[col * self.rows..(col + 1) * self.rows].to_vec(),
            Layout::RowMajor => (0..self.rows).map(|r| self.get(r, col)).collect(),
        }
    }
}

/// A numeric input column as the dense driver reads it.
pub(super) enum NumCol<'a> {
    F64(&'a arrow_array::Float64Array),
    /// Any other type: the reference reader on a slice per block.
    Other(&'a ArrayRef),
}

/// A categorical input column as the dense driver reads it (one-hot, ordinal).
pub(super) enum CatCol<'a> {
    Utf8(&'a arrow_array::StringArray),
    LargeUtf8(&'a arrow_array::LargeStringArray),
    View(&'a arrow_array::StringViewArray),
    /// Dictionary-encoded strings, with the vocabulary index of every dictionary value.
    Dict(&'a ArrayRef, Vec<u32>),
    /// Integers, booleans, nulls: the reference reader on a slice per block.
    Other(&'a ArrayRef),
}

/// How a per-category step turns a category into a number.
pub(super) enum CatValue<'a> {
    Hash(u64),
    Target(&'a [(Cat, f64)], f64),
}

/// One step's work on a block. `usize` fields index the block's working columns (`f64`
/// columns, or `u32` vocabulary-index columns for `idx`).
pub(super) enum Kernel<'a> {
    Load {
        col: NumCol<'a>,
        name: &'a str,
        field: String,
        dst: usize,
    },
    Map {
        op: &'a Op,
        src: usize,
        dst: usize,
    },
    NullOfInput {
        nulls: Option<arrow_buffer::NullBuffer>,
        dst: usize,
    },
    NullOf {
        src: usize,
        dst: usize,
    },
    Cell {
        idx: usize,
        k: usize,
        dst: usize,
    },
    Binary {
        kind: BinaryOp,
        on_zero: Option<f64>,
        a: usize,
        b: usize,
        dst: usize,
    },
    Index {
        col: CatCol<'a>,
        vocab: &'a Vocab,
        name: &'a str,
        field: String,
        idx: usize,
    },
    Ordinal {
        idx: usize,
        dst: usize,
    },
    PerCat {
        col: &'a ArrayRef,
        value: CatValue<'a>,
        name: &'a str,
        field: String,
        dst: usize,
    },
    Time {
        col: &'a ArrayRef,
        part: TimePart,
        zone: chrono_tz::Tz,
        cyclical: bool,
        name: &'a str,
        field: String,
        a: usize,
        b: Option<usize>,
    },
}

/// How output column `j` is written from a block.
#[derive(Debug)]
pub(super) enum Emit {
    Num {
        j: usize,
        src: usize,
    },
    /// A whole one-hot step at output columns `j0 .. j0 + width`, in vocabulary order.
    OneHot {
        idx: usize,
        j0: usize,
        width: usize,
    },
    /// One one-hot cell elsewhere (its step's columns are not adjacent, or partly rewritten).
    Cell {
        j: usize,
        idx: usize,
        k: usize,
    },
}

/// What a column name holds at some point of the pipeline.
#[derive(Clone, Copy, Debug)]
pub(super) enum Rep {
    Num(usize),
    /// Cell `k` of the one-hot encoding in index column `idx`.
    Cell {
        idx: usize,
        k: usize,
    },
}

pub(super) struct BlockPlan<'a> {
    kernels: Vec<Kernel<'a>>,
    n_num: usize,
    n_idx: usize,
    emits: Vec<Emit>,
}

pub(super) struct PlanBuilder<'a> {
    batch: &'a RecordBatch,
    /// Columns written by the steps so far.
    cur: HashMap<&'a str, Rep>,
    /// Input columns already read as numbers.
    loaded: HashMap<&'a str, usize>,
    kernels: Vec<Kernel<'a>>,
    n_num: usize,
    /// Per index column: one-hot width (vocabulary size + 1).
    widths: Vec<usize>,
}

impl<'a> PlanBuilder<'a> {
    pub(super) fn num_col(&mut self) -> usize {
        self.n_num += 1;
        self.n_num - 1
    }

    pub(super) fn input(&self, name: &str, field: &str) -> Result<&'a ArrayRef> {
        self.batch
            .column_by_name(name)
            .ok_or_else(|| Error::schema(name, format!("{field}: column not found")))
    }

    /// `name` read as numbers: written by an earlier step, else the input column.
    pub(super) fn num(&mut self, name: &'a str, field: &str) -> Result<usize> {
        match self.cur.get(name) {
            Some(&Rep::Num(c)) => return Ok(c),
            Some(&Rep::Cell { idx, k }) => {
                let dst = self.num_col();
                self.kernels.push(Kernel::Cell { idx, k, dst });
                return Ok(dst);
            }
            None => {}
        }
        if let Some(&c) = self.loaded.get(name) {
            return Ok(c);
        }
        let a = self.input(name, field)?;
        numeric_of(&a.slice(0, 0), name, field)?; // the reference reader's type check
        let col = match a.as_primitive_opt::<arrow_array::types::Float64Type>() {
            Some(f) => NumCol::F64(f),
            None => NumCol::Other(a),
        };
        let dst = self.num_col();
        self.kernels.push(Kernel::Load {
            col,
            name,
            field: field.to_string(),
            dst,
        });
        self.loaded.insert(name, dst);
        Ok(dst)
    }

    /// `name` as a raw categorical input column.
    pub(super) fn cats(&self, name: &'a str, field: &str) -> Result<&'a ArrayRef> {
        if self.cur.contains_key(name) {
            return Err(Error::schema(name, format!("{field} needs the raw categorical input, but an earlier step rewrote it as numbers")));
        }
        let a = self.input(name, field)?;
        cats_of(&a.slice(0, 0), name, field)?;
        Ok(a)
    }

    pub(super) fn set(&mut self, name: &'a str, rep: Rep) {
        self.cur.insert(name, rep);
    }
}

pub(super) fn cat_col<'a>(a: &'a ArrayRef, voc: &Vocab) -> CatCol<'a> {
    match a.data_type() {
        DataType::Utf8 => CatCol::Utf8(a.as_string::<i32>()),
        DataType::LargeUtf8 => CatCol::LargeUtf8(a.as_string::<i64>()),
        DataType::Utf8View => CatCol::View(a.as_string_view()),
        DataType::Dictionary(_, v)
            if matches!(
                v.as_ref(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) =>
        {
            match cats_of(a.as_any_dictionary().values(), "", "") {
                Ok(values) => CatCol::Dict(
                    a,
                    values
                        .iter()
                        .map(|c| c.map_or(NULL_IDX, |c| vocab_index(voc, c) as u32))
                        .collect(),
                ),
                Err(_) => CatCol::Other(a),
            }
        }
        _ => CatCol::Other(a),
    }
}

/// Vocabulary indices of rows `r0 .. r0 + out.len()` of a string column.
pub(super) fn index_strings<'s>(
    nulls: Option<&arrow_buffer::NullBuffer>,
    value: impl Fn(usize) -> &'s str,
    voc: &Vocab,
    r0: usize,
    out: &mut [u32],
) {
    match nulls {
        None => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = vocab_index(voc, CatRef::Str(value(r0 + i))) as u32;
            }
        }
        Some(n) => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = if n.is_null(r0 + i) {
                    NULL_IDX
                } else {
                    vocab_index(voc, CatRef::Str(value(r0 + i))) as u32
                };
            }
        }
    }
}

#[inline]
pub(super) fn idx_opt(i: u32) -> Option<usize> {
    (i != NULL_IDX).then_some(i as usize)
}

/// `dst[i] = f(src[i])` for a unary numeric step, with the step's scalar function chosen once.
pub(super) fn map_op(op: &Op, src: &[f64], dst: &mut [f64]) {
    pub(super) fn each(src: &[f64], dst: &mut [f64], f: impl Fn(f64) -> f64) {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = f(x);
        }
    }
    match op {
        Op::FillNull { value } => {
            let v = *value;
            each(src, dst, |x| filled(x, v))
        }
        Op::Impute { value, .. } => {
            let v = value.unwrap_or(f64::NAN);
            each(src, dst, |x| filled(x, v))
        }
        Op::StandardScale {
            fitted: Some((m, s)),
        }
        | Op::RobustScale {
            fitted: Some((m, s)),
        }
        | Op::MinMaxScale {
            fitted: Some((m, s)),
        } => {
            let (m, s) = (*m, *s);
            each(src, dst, |x| scaled(x, m, s))
        }
        Op::Bucketize { boundaries } => each(src, dst, |x| bucket(x, boundaries)),
        Op::QuantileBucketize { edges: Some(e), .. } => {
            let inner = inner_edges(e);
            each(src, dst, |x| bucket(x, inner))
        }
        op => each(src, dst, |x| apply_num(op, x)),
    }
}

/// Where a block writes its outputs: element (i, j) of the block is `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub(super) struct OutBlock {
    ptr: *mut f64,
    rs: usize,
    cs: usize,
}

impl OutBlock {
    /// # Safety
    /// (i, j) must lie in this block's rows and the matrix's columns, and no other thread may
    /// write this block's rows.
    #[inline(always)]
    pub(super) unsafe fn put(&self, i: usize, j: usize, v: f64) {
        *self.ptr.add(i * self.rs + j * self.cs) = v;
    }
}

/// The output matrix, shared by the parallel blocks (each writes only its own rows).
#[derive(Clone, Copy)]
pub(super) struct OutMatrix {
    ptr: *mut f64,
    rows: usize,
    cols: usize,
    layout: Layout,
}
// SAFETY: blocks write disjoint row ranges of the matrix (see `Transforms::transform_dense`).
unsafe impl Send for OutMatrix {}
unsafe impl Sync for OutMatrix {}

impl OutMatrix {
    pub(super) fn block(&self, row: usize) -> OutBlock {
        match self.layout {
            // SAFETY (of the `add`s): row < rows, so the offsets stay inside the allocation.
            Layout::RowMajor => OutBlock {
                ptr: unsafe { self.ptr.add(row * self.cols) },
                rs: self.cols,
                cs: 1,
            },
            Layout::ColumnMajor => OutBlock {
                ptr: unsafe { self.ptr.add(row) },
                rs: 1,
                cs: self.rows,
            },
        }
    }
}

/// `len` zeroed float64 values. A large buffer comes straight from the OS as zero pages (not
/// written here); on Linux it is also marked for transparent huge pages, so that the first
/// writes fault it in 2 MB at a time instead of 4 KB (numpy does the same for its arrays):
/// page faults were the largest cost of writing a large output.
pub(super) fn zeroed(len: usize) -> Vec<f64> {
    let v = vec![0f64; len];
    #[cfg(target_os = "linux")]
    advise_huge_pages(&v);
    v
}

#[cfg(target_os = "linux")]
pub(super) fn advise_huge_pages(v: &[f64]) {
    use std::ffi::{c_int, c_void};
    extern "C" {
        fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int;
    }
    const MADV_HUGEPAGE: c_int = 14;
    const PAGE: usize = 4096;
    let bytes = std::mem::size_of_val(v);
    // above glibc's largest mmap threshold (32 MB): the allocation is a mapping of its own
    if bytes < 64 << 20 {
        return;
    }
    let start = (v.as_ptr() as usize).div_ceil(PAGE) * PAGE;
    let end = (v.as_ptr() as usize + bytes) / PAGE * PAGE;
    if end > start {
        // SAFETY: the range lies inside `v`'s allocation; the advice changes no contents (an
        // error, e.g. THP unsupported, just leaves 4 KB pages).
        unsafe { madvise(start as *mut c_void, end - start, MADV_HUGEPAGE) };
    }
}

/// Working columns of one block (reused from block to block by a worker).
pub(super) struct Scratch {
    num: Vec<Vec<f64>>,
    idx: Vec<Vec<u32>>,
}

impl<'a> BlockPlan<'a> {
    /// Run rows `r0 .. r0 + len` of the plan's batch and write them to `out` (whose row 0 is
    /// row `r0`). Marks in `has_null` the output columns that got a null.
    pub(super) fn run(
        &self,
        r0: usize,
        len: usize,
        s: &mut Scratch,
        out: OutBlock,
        has_null: &mut [bool],
    ) -> Result<()> {
        let non_finite = |name: &str, field: &str| {
            Error::schema(
                name,
                format!("{field}: NaN and infinite inputs are rejected"),
            )
        };
        for k in &self.kernels {
            match k {
                Kernel::Load {
                    col,
                    name,
                    field,
                    dst,
                } => {
                    let d = &mut s.num[*dst][..len];
                    match col {
                        NumCol::F64(f) => {
                            let vals = &f.values()[r0..r0 + len];
                            let mut bad = false;
                            match f.nulls() {
                                None => {
                                    d.copy_from_slice(vals);
                                    bad = vals.iter().fold(false, |e, x| e | !x.is_finite());
                                }
                                Some(n) => {
                                    // nulls are NaN; valid runs are copied and checked
                                    d.fill(f64::NAN);
                                    for (a, b) in n.inner().slice(r0, len).set_slices() {
                                        let v = &vals[a..b];
                                        d[a..b].copy_from_slice(v);
                                        bad |= v.iter().fold(false, |e, x| e | !x.is_finite());
                                    }
                                }
                            }
                            if bad {
                                return Err(non_finite(name, field));
                            }
                        }
                        NumCol::Other(a) => {
                            d.copy_from_slice(&numeric_of(&a.slice(r0, len), name, field)?);
                        }
                    }
                }
                Kernel::Map { op, src, dst } => {
                    let mut d = std::mem::take(&mut s.num[*dst]);
                    map_op(op, &s.num[*src][..len], &mut d[..len]);
                    s.num[*dst] = d;
                }
                Kernel::NullOfInput { nulls, dst } => {
                    for (i, d) in s.num[*dst][..len].iter_mut().enumerate() {
                        let null = nulls.as_ref().is_some_and(|n| n.is_null(r0 + i));
                        *d = if null { 1.0 } else { 0.0 };
                    }
                }
                Kernel::NullOf { src, dst } => {
                    let mut d = std::mem::take(&mut s.num[*dst]);
                    for (d, &x) in d[..len].iter_mut().zip(&s.num[*src][..len]) {
                        *d = if x.is_nan() { 1.0 } else { 0.0 };
                    }
                    s.num[*dst] = d;
                }
                Kernel::Cell { idx, k, dst } => {
                    for (d, &i) in s.num[*dst][..len].iter_mut().zip(&s.idx[*idx][..len]) {
                        *d = one_hot_cell(idx_opt(i), *k);
                    }
                }
                Kernel::Binary {
                    kind,
                    on_zero,
                    a,
                    b,
                    dst,
                } => {
                    let mut d = std::mem::take(&mut s.num[*dst]);
                    let (xa, xb) = (&s.num[*a][..len], &s.num[*b][..len]);
                    for ((d, &x), &y) in d[..len].iter_mut().zip(xa).zip(xb) {
                        *d = binary(*kind, x, y, *on_zero);
                    }
                    s.num[*dst] = d;
                }
                Kernel::Index {
                    col,
                    vocab,
                    name,
                    field,
                    idx,
                } => {
                    let o = &mut s.idx[*idx][..len];
                    match col {
                        CatCol::Utf8(a) => index_strings(a.nulls(), |i| a.value(i), vocab, r0, o),
                        CatCol::LargeUtf8(a) => {
                            index_strings(a.nulls(), |i| a.value(i), vocab, r0, o)
                        }
                        CatCol::View(a) => index_strings(a.nulls(), |i| a.value(i), vocab, r0, o),
                        CatCol::Dict(_, map) if map.is_empty() => o.fill(NULL_IDX), // all null
                        CatCol::Dict(a, map) => {
                            let part = a.slice(r0, len);
                            let d = part.as_any_dictionary();
                            let keys = d.normalized_keys();
                            let nulls = part.logical_nulls();
                            for (i, o) in o.iter_mut().enumerate() {
                                *o = if nulls.as_ref().is_some_and(|n| n.is_null(i)) {
                                    NULL_IDX
                                } else {
                                    map[keys[i]]
                                };
                            }
                        }
                        CatCol::Other(a) => {
                            let part = a.slice(r0, len);
                            let c = cats_of(&part, name, field)?;
                            for (o, c) in o.iter_mut().zip(c) {
                                *o = c.map_or(NULL_IDX, |c| vocab_index(vocab, c) as u32);
                            }
                        }
                    }
                }
                Kernel::Ordinal { idx, dst } => {
                    for (d, &i) in s.num[*dst][..len].iter_mut().zip(&s.idx[*idx][..len]) {
                        *d = ordinal_value(idx_opt(i));
                    }
                }
                Kernel::PerCat {
                    col,
                    value,
                    name,
                    field,
                    dst,
                } => {
                    let part = col.slice(r0, len);
                    let c = cats_of(&part, name, field)?;
                    let d = &mut s.num[*dst][..len];
                    match value {
                        CatValue::Hash(n) => {
                            for (d, c) in d.iter_mut().zip(c) {
                                *d = c.map(|c| hash_bucket(&c, *n)).unwrap_or(f64::NAN);
                            }
                        }
                        CatValue::Target(table, mean) => {
                            for (d, c) in d.iter_mut().zip(c) {
                                *d = target_value(table, *mean, c);
                            }
                        }
                    }
                }
                Kernel::Time {
                    col,
                    part,
                    zone,
                    cyclical,
                    name,
                    field,
                    a,
                    b,
                } => {
                    let t = times_of(&col.slice(r0, len), name, field)?;
                    let mut da = std::mem::take(&mut s.num[*a]);
                    for (i, &t) in t.iter().enumerate() {
                        let (x, y) = time_part(*part, zone, t, *cyclical);
                        da[i] = x;
                        if let Some(b) = b {
                            s.num[*b][i] = y;
                        }
                    }
                    s.num[*a] = da;
                }
            }
        }
        self.emit(s, len, out, has_null);
        Ok(())
    }

    /// Write the block's outputs. The matrix is zeroed: a one-hot step writes only the 1.0 of
    /// a row (or the NaNs of a null category).
    pub(super) fn emit(&self, s: &Scratch, len: usize, out: OutBlock, has_null: &mut [bool]) {
        for e in &self.emits {
            match *e {
                Emit::Num { j, src } => {
                    has_null[j] |= s.num[src][..len].iter().fold(false, |n, x| n | x.is_nan());
                }
                Emit::OneHot { idx, j0, width } => {
                    if s.idx[idx][..len].contains(&NULL_IDX) {
                        has_null[j0..j0 + width].iter_mut().for_each(|n| *n = true);
                    }
                }
                Emit::Cell { j, idx, .. } => {
                    has_null[j] |= s.idx[idx][..len].contains(&NULL_IDX);
                }
            }
        }
        // SAFETY (of every `put`): i < len rows of this block, j < the matrix's columns.
        if out.cs == 1 {
            // row-major: row by row, so that the writes of a row are adjacent
            let nums: SmallVec<[(usize, &[f64]); 32]> = self
                .emits
                .iter()
                .filter_map(|e| match *e {
                    Emit::Num { j, src } => Some((j, &s.num[src][..len])),
                    _ => None,
                })
                .collect();
            let hots: SmallVec<[(usize, usize, &[u32]); 16]> = self
                .emits
                .iter()
                .filter_map(|e| match *e {
                    Emit::OneHot { idx, j0, width } => Some((j0, width, &s.idx[idx][..len])),
                    _ => None,
                })
                .collect();
            for i in 0..len {
                for &(j, v) in &nums {
                    unsafe { out.put(i, j, v[i]) };
                }
                for &(j0, width, c) in &hots {
                    one_hot_row(out, i, j0, width, c[i]);
                }
            }
        } else {
            for e in &self.emits {
                match *e {
                    Emit::Num { j, src } => {
                        for (i, &x) in s.num[src][..len].iter().enumerate() {
                            unsafe { out.put(i, j, x) };
                        }
                    }
                    Emit::OneHot { idx, j0, width } => {
                        for (i, &c) in s.idx[idx][..len].iter().enumerate() {
                            one_hot_row(out, i, j0, width, c);
                        }
                    }
                    Emit::Cell { .. } => {}
                }
            }
        }
        for e in &self.emits {
            if let Emit::Cell { j, idx, k } = *e {
                for (i, &c) in s.idx[idx][..len].iter().enumerate() {
                    unsafe { out.put(i, j, one_hot_cell(idx_opt(c), k)) };
                }
            }
        }
    }
}

/// Row `i` of a one-hot step at columns `j0 .. j0 + width` of a zeroed matrix: the 1.0 of
/// vocabulary index `c`, or NaN in every column for a null category.
#[inline(always)]
pub(super) fn one_hot_row(out: OutBlock, i: usize, j0: usize, width: usize, c: u32) {
    // SAFETY: i is a row of the block; the step's columns are inside the matrix, and
    // c < width (a vocabulary index, or `len(vocabulary)` for other).
    if c == NULL_IDX {
        for k in 0..width {
            unsafe { out.put(i, j0 + k, f64::NAN) };
        }
    } else {
        debug_assert!((c as usize) < width);
        unsafe { out.put(i, j0 + c as usize, 1.0) };
    }
}

impl Transforms {
    /// Compile the fitted pipeline for the dense driver on `batch`'s columns.
    pub(super) fn block_plan<'a>(&'a self, batch: &'a RecordBatch) -> Result<BlockPlan<'a>> {
        let mut b = PlanBuilder {
            batch,
            cur: HashMap::new(),
            loaded: HashMap::new(),
            kernels: Vec::new(),
            n_num: 0,
            widths: Vec::new(),
        };
        for (i, step) in self.steps.iter().enumerate() {
            let field = step.field(i);
            let col = step.column.as_str();
            let name = step.name.as_str();
            match &step.op {
                Op::Passthrough => {
                    let c = b.num(col, &field)?;
                    b.set(name, Rep::Num(c));
                }
                Op::IsNull => {
                    let dst = b.num_col();
                    if b.cur.contains_key(col) {
                        let src = b.num(col, &field)?;
                        b.kernels.push(Kernel::NullOf { src, dst });
                    } else {
                        let a = b.input(col, &field)?;
                        b.kernels.push(Kernel::NullOfInput {
                            nulls: a.logical_nulls(),
                            dst,
                        });
                    }
                    b.set(name, Rep::Num(dst));
                }
                Op::Binary {
                    kind,
                    other,
                    on_zero,
                } => {
                    let x = b.num(col, &field)?;
                    let y = b.num(other, &field)?;
                    let dst = b.num_col();
                    b.kernels.push(Kernel::Binary {
                        kind: *kind,
                        on_zero: *on_zero,
                        a: x,
                        b: y,
                        dst,
                    });
                    b.set(name, Rep::Num(dst));
                }
                Op::HashBucket { n } => {
                    let a = b.cats(col, &field)?;
                    let dst = b.num_col();
                    b.kernels.push(Kernel::PerCat {
                        col: a,
                        value: CatValue::Hash(*n),
                        name: col,
                        field,
                        dst,
                    });
                    b.set(name, Rep::Num(dst));
                }
                Op::TargetEncode { fitted, .. } => {
                    let a = b.cats(col, &field)?;
                    let (table, mean) = fitted
                        .as_ref()
                        .ok_or_else(|| Error::spec(&field, "not fitted"))?;
                    let dst = b.num_col();
                    b.kernels.push(Kernel::PerCat {
                        col: a,
                        value: CatValue::Target(table, *mean),
                        name: col,
                        field,
                        dst,
                    });
                    b.set(name, Rep::Num(dst));
                }
                Op::Time { part, tz, cyclical } => {
                    let zone = chrono_tz::Tz::from_str(tz)
                        .map_err(|_| Error::spec(&field, format!("unknown time zone {tz:?}")))?;
                    let a = b.input(col, &field)?; // the raw input, as in the reference driver
                    times_of(&a.slice(0, 0), col, &field)?;
                    let da = b.num_col();
                    let db = cyclical.then(|| b.num_col());
                    b.kernels.push(Kernel::Time {
                        col: a,
                        part: *part,
                        zone,
                        cyclical: *cyclical,
                        name: col,
                        field,
                        a: da,
                        b: db,
                    });
                    let outs = step.outputs();
                    b.set(&outs[0], Rep::Num(da));
                    if let Some(db) = db {
                        b.set(&outs[1], Rep::Num(db));
                    }
                }
                Op::OneHot { vocab, .. } | Op::Ordinal { vocab, .. } => {
                    let a = b.cats(col, &field)?;
                    let voc = vocab
                        .as_ref()
                        .ok_or_else(|| Error::spec(&field, "not fitted"))?;
                    if voc.cats.len() >= NULL_IDX as usize {
                        return Err(Error::spec(&field, "vocabulary too large"));
                    }
                    let idx = b.widths.len();
                    b.widths.push(voc.cats.len() + 1);
                    b.kernels.push(Kernel::Index {
                        col: cat_col(a, voc),
                        vocab: voc,
                        name: col,
                        field,
                        idx,
                    });
                    if matches!(step.op, Op::OneHot { .. }) {
                        for (k, out) in step.outputs().iter().enumerate() {
                            b.set(out, Rep::Cell { idx, k });
                        }
                    } else {
                        let dst = b.num_col();
                        b.kernels.push(Kernel::Ordinal { idx, dst });
                        b.set(name, Rep::Num(dst));
                    }
                }
                op => {
                    let src = b.num(col, &field)?;
                    let dst = b.num_col();
                    b.kernels.push(Kernel::Map { op, src, dst });
                    b.set(name, Rep::Num(dst));
                }
            }
        }
        let reps: Vec<Rep> = self
            .names
            .iter()
            .map(|n| {
                b.cur
                    .get(n.as_str())
                    .copied()
                    .ok_or_else(|| Error::spec(n, "output was not computed"))
            })
            .collect::<Result<_>>()?;
        let mut emits = Vec::new();
        let mut j = 0;
        while j < reps.len() {
            match reps[j] {
                Rep::Num(src) => emits.push(Emit::Num { j, src }),
                Rep::Cell { idx, k } => {
                    let width = b.widths[idx];
                    let whole = k == 0
                        && j + width <= reps.len()
                        && (0..width).all(|m| {
                            matches!(reps[j + m], Rep::Cell { idx: i, k } if i == idx && k == m)
                        });
                    if whole {
                        emits.push(Emit::OneHot { idx, j0: j, width });
                        j += width;
                        continue;
                    }
                    emits.push(Emit::Cell { j, idx, k });
                }
            }
            j += 1;
        }
        Ok(BlockPlan {
            kernels: b.kernels,
            n_num: b.n_num,
            n_idx: b.widths.len(),
            emits,
        })
    }

    /// Apply the fitted pipeline to a table given as record batches (all of one schema), into
    /// one dense float64 matrix: a column per feature name, a row per input row, NaN = null.
    /// Bit-identical to the one-row driver and to [`Transforms::transform_reference`]; parallel
    /// over blocks of rows. An error is the one the reference driver reports.
    pub fn transform_dense(&self, batches: &[RecordBatch], layout: Layout) -> Result<Dense> {
        if !self.is_fitted() {
            return Err(Error::spec(
                "transforms",
                "not fitted: call fit(table) first",
            ));
        }
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let cols = self.names.len();
        let result = self.dense_blocks(batches, rows, cols, layout);
        match result {
            Ok((values, has_null)) => Ok(Dense {
                values,
                rows,
                cols,
                layout,
                has_null,
            }),
            Err(e) => {
                // the reference driver's error: the first failing step, with row numbers in
                // the whole table
                match batches {
                    [] => Err(e),
                    [b] => self.apply(b).and(Err(e)),
                    [b, ..] => match arrow_select::concat::concat_batches(&b.schema(), batches) {
                        Ok(all) => self.apply(&all).and(Err(e)),
                        Err(_) => Err(e),
                    },
                }
            }
        }
    }

    pub(super) fn dense_blocks(
        &self,
        batches: &[RecordBatch],
        rows: usize,
        cols: usize,
        layout: Layout,
    ) -> Result<(Vec<f64>, Vec<bool>)> {
        let plans: Vec<BlockPlan<'_>> = batches
            .iter()
            .map(|b| self.block_plan(b))
            .collect::<Result<_>>()?;
        let len = rows
            .checked_mul(cols)
            .ok_or_else(|| Error::spec("transforms", "output too large"))?;
        if len == 0 {
            return Ok((Vec::new(), vec![false; cols])); // (the plans checked the columns)
        }
        // zeroed (fresh pages from the OS for a large matrix): one-hot writes only its 1.0s
        let mut values = zeroed(len);
        let out = OutMatrix {
            ptr: values.as_mut_ptr(),
            rows,
            cols,
            layout,
        };
        // (plan, first row in the batch, first row in the matrix, rows)
        let mut blocks: Vec<(usize, usize, usize, usize)> = Vec::new();
        let mut at = 0;
        for (p, b) in batches.iter().enumerate() {
            let n = b.num_rows();
            for r0 in (0..n).step_by(BLOCK) {
                blocks.push((p, r0, at + r0, BLOCK.min(n - r0)));
            }
            at += n;
        }
        let (n_num, n_idx) = plans
            .iter()
            .fold((0, 0), |(a, b), p| (a.max(p.n_num), b.max(p.n_idx)));
        let scratch = || Scratch {
            num: vec![vec![0.0; BLOCK]; n_num],
            idx: vec![vec![0; BLOCK]; n_idx],
        };
        let run = |s: &mut Scratch, &(p, r0, row, n): &(usize, usize, usize, usize)| {
            let mut has_null = vec![false; cols];
            plans[p].run(r0, n, s, out.block(row), &mut has_null)?;
            Ok(has_null)
        };
        let merge = |mut a: Vec<bool>, b: Vec<bool>| -> Result<Vec<bool>> {
            a.iter_mut().zip(b).for_each(|(a, b)| *a |= b);
            Ok(a)
        };
        let has_null = if blocks.len() <= 1 {
            let mut s = scratch();
            blocks
                .iter()
                .try_fold(vec![false; cols], |a, b| merge(a, run(&mut s, b)?))?
        } else {
            crate::pool::install(|| {
                blocks
                    .par_iter()
                    .map_init(scratch, run)
                    .try_reduce(|| vec![false; cols], merge)
            })?
        };
        Ok((values, has_null))
    }
}

impl Transforms {
    /// Apply the fitted pipeline: one column per feature name (NaN = null). Runs the dense
    /// driver ([`Transforms::transform_dense`]) and copies the columns out.
    pub fn transform(&self, batch: &RecordBatch) -> Result<Vec<Vec<f64>>> {
        let d = self.transform_dense(std::slice::from_ref(batch), Layout::ColumnMajor)?;
        Ok((0..d.cols).map(|j| d.column(j)).collect())
    }
}
