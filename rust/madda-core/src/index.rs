//! Exact kNN over a source set held in pieces (shards), and the exact merge of per-shard results.
//!
//! Contract: an [`Index`] over shards `s_0, s_1, ...` answers as [`knn_search`] and
//! [`knn_predict`] do on their concatenation, bit for bit: the same neighbours in the same order
//! (exact distance, then global index; row `j` of a shard has global index `j` plus the rows of
//! the shards added before it), the same float32 distances and the same vote.
//!
//! Why it holds: `knn_search` returns the first k source rows under a total order, the exact
//! float64 distance ([`exact_distance`]) then the index. Under a total order the global first k
//! lie in the union of every shard's first `min(k, n_shard)` (a row among the global first k has
//! fewer than k rows ahead of it in its own shard), and adding a shard's offset to its indices
//! does not reorder the shard. So sorting that union by the same key and keeping k gives the
//! global answer. The key must be the float64 distance: `knn_search` returns distances rounded to
//! float32, which can make two different distances equal, and ordering those by index would
//! differ from the unsharded search. The index therefore recomputes each candidate's float64
//! distance with the core's own [`exact_distance`], the very bits the unsharded search ranks by.
//!
//! How: the shards are searched one after the other (each search uses the whole thread pool), and
//! after each the running best k of every target row absorb the shard's candidates. A shard's
//! rows are read only while it is searched (its values are checked just before), so a source set
//! larger than memory can be searched from memory-mapped shards as long as one shard fits in the
//! page cache. Extra memory is the running candidates, O(n_tgt * k), on top of [`knn_search`]'s
//! per-thread buffers.
//!
//! Ranks of a distributed job that each hold a shard combine their candidates with [`merge`],
//! which states what they must exchange.
//!
//! [`knn_search`]: crate::knn_search
//! [`knn_predict`]: crate::knn_predict

use std::cmp::Ordering;

use rayon::prelude::*;

use crate::error::Error;
use crate::knn::{self, exact_distance, Neighbors, Rows};
use crate::pool;

/// A row-major `rows x cols` matrix of finite float32 values, borrowed from the caller.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    view: Rows<'a>,
    data: &'a [f32],
    rows: usize,
    cols: usize,
}

impl<'a> Matrix<'a> {
    /// Views `data` as `rows x cols`, checking the length and the values as [`Rows::new`] does.
    pub fn new(arg: &'static str, data: &'a [f32], rows: usize, cols: usize) -> Result<Self, Error> {
        let view = Rows::new(arg, data, rows, cols)?;
        Ok(Matrix { view, data, rows, cols })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// One neighbour: exact distance, global index, label.
type Candidate = (f64, i64, i64);

/// The order of neighbours: exact distance, then index (as in [`knn::knn_search`]).
fn by_key(a: &Candidate, b: &Candidate) -> Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}

/// The k nearest of each target row, row-major `(n_tgt, k)`, each row ordered by (exact
/// distance, global index): the form in which separate searches are exchanged and merged.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidates {
    pub k: usize,
    /// Exact float64 squared distances.
    pub distances: Vec<f64>,
    pub indices: Vec<i64>,
    /// The neighbours' labels: always from an [`Index`]; from [`merge`] when every part had them.
    pub labels: Option<Vec<i64>>,
}

impl Candidates {
    /// What [`knn::knn_search`] returns: the same neighbours, distances rounded to float32.
    pub fn into_neighbors(self) -> Neighbors {
        Neighbors { k: self.k, distances: self.distances.iter().map(|&d| d as f32).collect(), indices: self.indices }
    }

    /// Each row's vote as [`knn::knn_predict`] takes it (a tie goes to the smallest label);
    /// `None` without labels.
    pub fn votes(&self) -> Option<Vec<i64>> {
        vote_rows(self.labels.as_ref()?, self.k).ok()
    }

    fn from_rows(k: usize, rows: &[Candidate], with_labels: bool) -> Self {
        Candidates {
            k,
            distances: rows.iter().map(|c| c.0).collect(),
            indices: rows.iter().map(|c| c.1).collect(),
            labels: with_labels.then(|| rows.iter().map(|c| c.2).collect()),
        }
    }
}

/// The vote of [`knn::knn_predict`] on each row of the row-major `(n, k)` labels: the most
/// frequent label, a tie going to the smallest.
pub fn vote_rows(labels: &[i64], k: usize) -> Result<Vec<i64>, Error> {
    if k == 0 || !labels.chunks_exact(k).remainder().is_empty() {
        return Err(Error::arg(
            "labels",
            format!("expected rows of k >= 1 labels, got {} labels in rows of {k}", labels.len()),
        ));
    }
    let mut row = Vec::with_capacity(k);
    Ok(labels
        .chunks(k)
        .map(|chunk| {
            row.clear();
            row.extend_from_slice(chunk);
            knn::vote(&mut row)
        })
        .collect())
}

/// An exact kNN index over source rows added in pieces; see the module doc for the contract.
#[derive(Clone, Debug)]
pub struct Index<'a> {
    dim: usize,
    pieces: Vec<Piece<'a>>,
    len: usize,
}

/// Rows added by one [`Index::add`], with their labels.
#[derive(Clone, Copy, Debug)]
struct Piece<'a> {
    data: &'a [f32],
    rows: usize,
    labels: &'a [i64],
}

impl<'a> Index<'a> {
    /// An empty index of `dim`-column rows (`dim >= 1`).
    pub fn new(dim: usize) -> Result<Self, Error> {
        if dim == 0 {
            return Err(Error::arg("dim", "expected at least one feature column, got 0"));
        }
        Ok(Index { dim, pieces: Vec::new(), len: 0 })
    }

    /// Appends the row-major `rows x cols` matrix `emb`, with one label per row, after the rows
    /// already added. Only shapes are checked here: the values (finite, not too large, as in
    /// [`Rows::new`]) are checked when a search reaches the piece, the one time it is read, so a
    /// memory-mapped piece is not read twice. Check them up front with [`Matrix::new`] if wanted.
    pub fn add(&mut self, emb: &'a [f32], rows: usize, cols: usize, labels: &'a [i64]) -> Result<(), Error> {
        if cols != self.dim {
            return Err(Error::arg(
                "emb",
                format!("expected {} feature columns (the index's dim), got {cols}", self.dim),
            ));
        }
        if rows.checked_mul(cols) != Some(emb.len()) {
            return Err(Error::arg("emb", format!("expected {rows} x {cols} values, got {}", emb.len())));
        }
        if labels.len() != rows {
            return Err(Error::arg(
                "labels",
                format!("expected one label per row of emb ({rows}), got {}", labels.len()),
            ));
        }
        // knn_search numbers a piece's rows in u32; global indices are i64.
        if rows > u32::MAX as usize {
            return Err(Error::arg(
                "emb",
                format!("expected at most {} rows per piece, got {rows}; add it in smaller pieces", u32::MAX),
            ));
        }
        let len = self
            .len
            .checked_add(rows)
            .filter(|&n| n <= i64::MAX as usize)
            .ok_or_else(|| Error::arg("emb", "expected at most 2**63 - 1 rows in all"))?;
        if rows > 0 {
            self.pieces.push(Piece { data: emb, rows, labels });
        }
        self.len = len;
        Ok(())
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Rows added so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The k nearest rows of each target row, with exact float64 distances, global indices and
    /// labels. `threads = None` uses [`pool::default_threads`].
    pub fn candidates(&self, tgt: Matrix<'_>, k: usize, threads: Option<usize>) -> Result<Candidates, Error> {
        if self.len == 0 {
            return Err(Error::arg("index", "expected at least one source row, got 0; add() rows first"));
        }
        if tgt.cols != self.dim {
            return Err(Error::arg(
                "tgt",
                format!("expected {} feature columns (the index's dim), got {}", self.dim, tgt.cols),
            ));
        }
        if k < 1 || k > self.len {
            return Err(Error::arg(
                "k",
                format!("expected 1 <= k <= ntotal = {} (rows in the index), got {k}", self.len),
            ));
        }
        let n_tgt = tgt.rows;
        let pool = pool::get(threads);
        // best[r * width..][..width]: row r's running nearest, `width` = min(k, rows seen so far).
        let (mut best, mut width, mut offset) = (Vec::<Candidate>::new(), 0usize, 0i64);
        for (p, piece) in self.pieces.iter().enumerate() {
            let (shard, labels) = (Matrix::new("emb", piece.data, piece.rows, self.dim), piece.labels);
            let shard = shard.map_err(|e| Error::InvalidArgument {
                arg: "index",
                message: format!("piece {p} (rows {offset}..{}): {e}", offset + piece.rows as i64),
            })?;
            let kc = k.min(shard.rows);
            let nn = knn::knn_search(shard.view, tgt.view, kc, threads)?;
            let next_width = k.min(width + kc);
            let mut next = vec![(0.0, 0, 0); n_tgt * next_width];
            pool.install(|| {
                next.par_chunks_mut(next_width).enumerate().for_each_init(Vec::new, |row, (r, out)| {
                    let t = tgt.row(r);
                    row.clear();
                    row.extend_from_slice(&best[r * width..(r + 1) * width]);
                    row.extend(nn.indices[r * kc..(r + 1) * kc].iter().map(|&j| {
                        let j = j as usize;
                        (exact_distance(t, shard.row(j)), offset + j as i64, labels[j])
                    }));
                    row.sort_unstable_by(by_key);
                    out.copy_from_slice(&row[..next_width]);
                });
            });
            (best, width) = (next, next_width);
            offset += shard.rows as i64;
        }
        Ok(Candidates::from_rows(k, &best, true))
    }

    /// As [`knn::knn_search`] on the concatenated rows.
    pub fn search(&self, tgt: Matrix<'_>, k: usize, threads: Option<usize>) -> Result<Neighbors, Error> {
        Ok(self.candidates(tgt, k, threads)?.into_neighbors())
    }

    /// As [`knn::knn_predict`] on the concatenated rows and labels.
    pub fn predict(&self, tgt: Matrix<'_>, k: usize, threads: Option<usize>) -> Result<Vec<i64>, Error> {
        let cands = self.candidates(tgt, k, threads)?;
        Ok(cands.votes().unwrap_or_default())
    }
}

/// One search's candidates for [`merge`], row-major `rows x cols` (target rows x candidates).
#[derive(Clone, Copy, Debug)]
pub struct Part<'a> {
    pub rows: usize,
    pub cols: usize,
    /// Exact float64 squared distances, as [`Candidates::distances`] (not rounded to float32).
    pub distances: &'a [f64],
    pub indices: &'a [i64],
    pub labels: Option<&'a [i64]>,
    /// Added to `indices` to make them global.
    pub offset: i64,
}

/// Merges candidate lists of separate searches over disjoint pieces of one source set into the
/// k nearest of each target row, ordered by (exact distance, global index).
///
/// The result equals the unsharded search (bit for bit, see the module doc) when, for every
/// target row, each piece contributes its own first `min(k, n_piece)` rows by (distance, index),
/// with float64 distances as [`Index::candidates`] gives them (not the float32 of
/// [`knn::knn_search`]) and global indices (`indices + offset`, the offset being the rows of the
/// pieces before it in the concatenation whose answer is wanted). Fewer candidates, rounded
/// distances, or pieces that overlap break exactness; overlap that repeats a global index in a
/// row is reported as an error. The parts may come in any order and need not be sorted.
pub fn merge(parts: &[Part<'_>], k: usize, threads: Option<usize>) -> Result<Candidates, Error> {
    let first = parts.first().ok_or_else(|| Error::arg("parts", "expected at least one part, got none"))?;
    let with_labels = first.labels.is_some();
    for (p, part) in parts.iter().enumerate() {
        check_part(p, part, first.rows, with_labels)?;
    }
    let total: usize = parts.iter().map(|p| p.cols).sum();
    if k < 1 || k > total {
        return Err(Error::arg(
            "k",
            format!("expected 1 <= k <= {total} (the candidates per target row, summed over the parts), got {k}"),
        ));
    }
    let n_tgt = first.rows;
    let mut out = vec![(0.0, 0, 0); n_tgt * k];
    let duplicates: Vec<Option<i64>> = pool::get(threads).install(|| {
        out.par_chunks_mut(k)
            .enumerate()
            .map_init(
                || (Vec::new(), Vec::new()),
                |(row, seen), (r, out)| {
                    row.clear();
                    for part in parts {
                        let span = r * part.cols..(r + 1) * part.cols;
                        let labels = part.labels.map(|l| &l[span.clone()]);
                        for (c, (&d, &j)) in
                            part.distances[span.clone()].iter().zip(&part.indices[span.clone()]).enumerate()
                        {
                            row.push((d, j + part.offset, labels.map_or(0, |l| l[c])));
                        }
                    }
                    seen.clear();
                    seen.extend(row.iter().map(|c| c.1));
                    seen.sort_unstable();
                    let dup = seen.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]);
                    row.sort_unstable_by(by_key);
                    out.copy_from_slice(&row[..k]);
                    dup
                },
            )
            .collect()
    });
    if let Some((r, j)) = duplicates.iter().enumerate().find_map(|(r, d)| d.map(|j| (r, j))) {
        return Err(Error::arg(
            "parts",
            format!("global index {j} appears more than once in row {r}; each source row must belong to one part (check the offsets)"),
        ));
    }
    Ok(Candidates::from_rows(k, &out, with_labels))
}

fn check_part(p: usize, part: &Part<'_>, rows: usize, with_labels: bool) -> Result<(), Error> {
    let n = part.rows.checked_mul(part.cols);
    if n != Some(part.distances.len()) || n != Some(part.indices.len()) {
        return Err(Error::arg(
            "parts",
            format!(
                "part {p}: expected {} x {} distances and indices, got {} and {}",
                part.rows,
                part.cols,
                part.distances.len(),
                part.indices.len()
            ),
        ));
    }
    if part.rows != rows {
        return Err(Error::arg(
            "parts",
            format!("part {p}: expected {rows} target rows (as part 0), got {}", part.rows),
        ));
    }
    match part.labels {
        Some(l) if !with_labels || Some(l.len()) != n => {
            return Err(Error::arg(
                "parts",
                format!(
                    "part {p}: expected {} (as part 0), got {} labels",
                    if with_labels { format!("{} x {} labels", part.rows, part.cols) } else { "no labels".to_string() },
                    l.len()
                ),
            ))
        }
        None if with_labels => {
            return Err(Error::arg("parts", format!("part {p}: expected labels (as part 0), got none")))
        }
        _ => {}
    }
    let cols = part.cols.max(1);
    if let Some(pos) = part.distances.iter().position(|d| !(d.is_finite() && *d >= 0.0)) {
        return Err(Error::arg(
            "parts",
            format!(
                "part {p}: expected finite distances >= 0, got {} at row {}, column {}",
                part.distances[pos],
                pos / cols,
                pos % cols
            ),
        ));
    }
    if let Some(pos) = part.indices.iter().position(|&j| j < 0 || j.checked_add(part.offset).is_none_or(|g| g < 0)) {
        return Err(Error::arg(
            "parts",
            format!(
                "part {p}: expected indices >= 0 whose sum with the offset {} fits in int64 and is >= 0, got {} at row {}, column {}",
                part.offset,
                part.indices[pos],
                pos / cols,
                pos % cols
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{knn_predict, knn_search};

    /// Pseudo-random integers in [0, range): exact distances, many ties.
    fn ints(n: usize, seed: u64, range: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(7);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) % range) as f32
            })
            .collect()
    }

    /// Pseudo-random floats in [-1, 1).
    fn floats(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(3);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32) / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Checks an index over `src` cut at `cuts` against the unsharded search and vote.
    fn check(src: &[f32], labels: &[i64], tgt: &[f32], d: usize, cuts: &[usize], k: usize) {
        let (n_src, n_tgt) = (src.len() / d, tgt.len() / d);
        let whole = Rows::new("src", src, n_src, d).unwrap();
        let t = Rows::new("tgt", tgt, n_tgt, d).unwrap();
        let tm = Matrix::new("tgt", tgt, n_tgt, d).unwrap();
        let mut index = Index::new(d).unwrap();
        let mut start = 0;
        for &end in cuts.iter().chain([n_src].iter()) {
            index.add(&src[start * d..end * d], end - start, d, &labels[start..end]).unwrap();
            start = end;
        }
        assert_eq!(index.len(), n_src);
        let want = knn_search(whole, t, k, Some(2)).unwrap();
        assert_eq!(index.search(tm, k, Some(2)).unwrap(), want, "cuts {cuts:?}, k {k}");
        let want = knn_predict(whole, labels, t, k, Some(2)).unwrap();
        assert_eq!(index.predict(tm, k, Some(1)).unwrap(), want);
    }

    #[test]
    fn sharded_equals_unsharded_with_ties() {
        let (n_src, n_tgt, d) = (1300, 70, 3);
        let src = ints(n_src * d, 1, 3);
        let tgt = ints(n_tgt * d, 2, 3);
        let labels: Vec<i64> = (0..n_src as i64).map(|i| (i * 7) % 5).collect();
        for cuts in [vec![], vec![1], vec![0, 0, 600], vec![5, 6, 7, 513, 1299], (1..n_src).step_by(97).collect()] {
            for k in [1, 4, 64, n_src] {
                check(&src, &labels, &tgt, d, &cuts, k);
            }
        }
    }

    #[test]
    fn sharded_equals_unsharded_on_real_values_far_from_the_origin() {
        let (n_src, n_tgt, d) = (900, 40, 17);
        let src: Vec<f32> = floats(n_src * d, 5).iter().map(|v| 1000.0 + 0.01 * v).collect();
        let tgt: Vec<f32> = floats(n_tgt * d, 6).iter().map(|v| 1000.0 + 0.01 * v).collect();
        let labels: Vec<i64> = (0..n_src as i64).map(|i| i % 3).collect();
        for cuts in [vec![450], vec![1, 2, 3, 899], (0..n_src).step_by(64).collect()] {
            for k in [1, 5, 100] {
                check(&src, &labels, &tgt, d, &cuts, k);
            }
        }
    }

    #[test]
    fn float32_ties_of_different_float64_distances_keep_the_distance_order() {
        // Both distances round to 1.0 in float32, but row 0's is 1 + 2^-26 in float64: the
        // unsharded search puts row 1 first, which merging by (float32 distance, index) would not.
        let (src, tgt) = ([1.0f32, 2f32.powi(-13), 1.0, 0.0], [0.0f32, 0.0]);
        let mut index = Index::new(2).unwrap();
        for i in 0..2 {
            index.add(&src[2 * i..2 * i + 2], 1, 2, &[0, 1][i..i + 1]).unwrap();
        }
        let t = Matrix::new("tgt", &tgt, 1, 2).unwrap();
        let got = index.search(t, 2, None).unwrap();
        assert_eq!(got.indices, vec![1, 0]);
        assert_eq!(got.distances, vec![1.0, 1.0]);
        check(&src, &[0, 1], &tgt, 2, &[1], 2);
    }

    #[test]
    fn merge_of_parts_equals_index_and_reports_overlap() {
        let (n_src, n_tgt, d, k) = (500, 30, 4, 7);
        let src = ints(n_src * d, 3, 4);
        let tgt = ints(n_tgt * d, 4, 4);
        let labels: Vec<i64> = (0..n_src as i64).map(|i| i % 10).collect();
        let tm = Matrix::new("tgt", &tgt, n_tgt, d).unwrap();
        let mut whole = Index::new(d).unwrap();
        whole.add(&src, n_src, d, &labels).unwrap();
        let want = whole.candidates(tm, k, None).unwrap();
        // Two "ranks", each with its own index over its shard, numbering rows from 0.
        let cut = 123;
        let shard_cands: Vec<Candidates> = [(0, cut), (cut, n_src)]
            .iter()
            .map(|&(a, b)| {
                let mut index = Index::new(d).unwrap();
                index.add(&src[a * d..b * d], b - a, d, &labels[a..b]).unwrap();
                index.candidates(tm, k, None).unwrap()
            })
            .collect();
        fn part(c: &Candidates, offset: i64) -> Part<'_> {
            Part {
                rows: c.indices.len() / c.k,
                cols: c.k,
                distances: &c.distances,
                indices: &c.indices,
                labels: c.labels.as_deref(),
                offset,
            }
        }
        let parts = [part(&shard_cands[1], cut as i64), part(&shard_cands[0], 0)];
        assert_eq!(merge(&parts, k, None).unwrap(), want);
        let overlapping = [part(&shard_cands[1], 0), part(&shard_cands[0], 0)];
        let err = merge(&overlapping, k, None).unwrap_err();
        assert!(err.to_string().contains("check the offsets"), "{err}");
        let err = merge(&parts, 2 * k + 1, None).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { arg: "k", .. }), "{err}");
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(Index::new(0).is_err());
        let data = [0.0f32; 6];
        let mut index = Index::new(2).unwrap();
        let t = Matrix::new("tgt", &data[..2], 1, 2).unwrap();
        let err = index.search(t, 1, None).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { arg: "index", .. }));
        assert!(matches!(index.add(&data, 2, 3, &[0, 0]), Err(Error::InvalidArgument { arg: "emb", .. })));
        assert!(matches!(index.add(&data, 2, 2, &[0, 0]), Err(Error::InvalidArgument { arg: "emb", .. })));
        assert!(matches!(index.add(&data, 3, 2, &[0, 0]), Err(Error::InvalidArgument { arg: "labels", .. })));
        index.add(&data, 3, 2, &[0, 1, 2]).unwrap();
        // values are checked when a search reads the piece
        let nan = [0.0f32, f32::NAN];
        let mut poisoned = index.clone();
        poisoned.add(&nan, 1, 2, &[0]).unwrap();
        let err = poisoned.search(t, 1, None).unwrap_err().to_string();
        assert!(err.starts_with("index: piece 1 (rows 3..4): emb: expected finite"), "{err}");
        assert!(matches!(index.search(t, 4, None), Err(Error::InvalidArgument { arg: "k", .. })));
        assert!(matches!(index.search(t, 0, None), Err(Error::InvalidArgument { arg: "k", .. })));
        let t3 = Matrix::new("tgt", &data[..3], 1, 3).unwrap();
        assert!(matches!(index.search(t3, 1, None), Err(Error::InvalidArgument { arg: "tgt", .. })));
        let empty = Matrix::new("tgt", &[], 0, 2).unwrap();
        assert!(index.search(empty, 2, None).unwrap().indices.is_empty());

        assert!(merge(&[], 1, None).is_err());
        let part = Part { rows: 1, cols: 2, distances: &[0.0, f64::NAN], indices: &[0, 1], labels: None, offset: 0 };
        let err = merge(&[part], 1, None).unwrap_err().to_string();
        assert!(err.contains("finite distances"), "{err}");
        let part = Part { distances: &[0.0, 1.0], indices: &[0, -1], ..part };
        assert!(merge(&[part], 1, None).unwrap_err().to_string().contains("indices >= 0"));
        let part = Part { indices: &[0, 1], offset: i64::MAX, ..part };
        assert!(merge(&[part], 1, None).unwrap_err().to_string().contains("fits in int64"));
        let good = Part { offset: 0, ..part };
        let short = Part { rows: 2, ..good };
        assert!(merge(&[short], 1, None).unwrap_err().to_string().contains("expected 2 x 2"));
        let labelled = Part { labels: Some(&[1, 2]), ..good };
        assert!(merge(&[good, labelled], 1, None).unwrap_err().to_string().contains("no labels"));
        assert!(merge(&[labelled, good], 1, None).unwrap_err().to_string().contains("got none"));
    }
}
