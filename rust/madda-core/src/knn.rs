//! Exact k-nearest neighbours under squared Euclidean distance, and mode voting.
//!
//! Contract:
//! * neighbours of a target row are ordered by (exact distance, source index);
//! * the vote returns the most frequent label among the k, ties going to the smallest label
//!   (scikit-learn's `KNeighborsClassifier` with uniform weights does the same);
//! * distances are the float64 value of `sum((t - s)^2)` over the float32 inputs, rounded to float32.
//!
//! How: targets are cut into blocks, one rayon task each. A task walks the source in tiles,
//! computes the tile's dot products with one single-threaded GEMM, and turns them into
//! approximate distances `|s|^2 - 2 t.s` (the row's `|t|^2` does not change the ranking). The
//! GEMM identity loses precision, so every candidate within `2E` of the running k-th approximate
//! distance is kept, `E` being a rigorous bound on the float32 rounding error of one approximate
//! distance; the survivors are then re-ranked with exact float64 differences. Whatever the
//! rounding, no true neighbour can fall outside that window, so the result equals a float64
//! brute-force reference up to the float64 summation itself. Memory is one (block x tile) buffer
//! per thread: the full distance matrix never exists.

use rayon::prelude::*;

use crate::error::Error;
use crate::pool;

/// Rows of targets per task (upper bound; smaller when there are few targets, to feed every thread).
const TARGET_BLOCK: usize = 256;
/// Rows of source per GEMM tile: 256 x 512 float32 dot products is 512 KiB (measured best on 2 cores).
const SOURCE_TILE: usize = 512;

/// A row-major matrix borrowed from the caller.
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
}

impl<'a> Rows<'a> {
    /// Views `data` as `rows x cols`, checking the length and that every value is finite.
    pub fn new(arg: &'static str, data: &'a [f32], rows: usize, cols: usize) -> Result<Self, Error> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::arg(arg, format!("expected {rows} x {cols} = {} values, got {}", rows * cols, data.len())));
        }
        if let Some(pos) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::arg(
                arg,
                format!("expected finite values, got {} at row {}, column {}", data[pos], pos / cols.max(1), pos % cols.max(1)),
            ));
        }
        Ok(Rows { data, rows, cols })
    }

    fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// The k nearest source rows of each target row, row-major `(n_tgt, k)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Neighbors {
    pub k: usize,
    pub distances: Vec<f32>,
    pub indices: Vec<i64>,
}

/// Exact kNN search. `threads = None` uses [`pool::default_threads`].
pub fn knn_search(src: Rows<'_>, tgt: Rows<'_>, k: usize, threads: Option<usize>) -> Result<Neighbors, Error> {
    check_shapes(&src, &tgt, k)?;
    let n_tgt = tgt.rows;
    let mut distances = vec![0f32; n_tgt * k];
    let mut indices = vec![0i64; n_tgt * k];
    if n_tgt == 0 {
        return Ok(Neighbors { k, distances, indices });
    }
    let d = src.cols;
    let src_norms: Vec<f32> = (0..src.rows).map(|j| sq_norm(src.row(j)) as f32).collect();
    let max_src_norm = src_norms.iter().copied().fold(0f32, f32::max) as f64;
    // Rounding bound on one approximate distance: the dot product's (d terms, gamma_d ~ d*u) plus
    // the norm and the subtraction; doubled for safety. u = EPSILON / 2.
    let err_scale = (d as f64 + 8.0) * f32::EPSILON as f64;

    let pool = pool::get(threads);
    let block = TARGET_BLOCK.min(n_tgt.div_ceil(pool.current_num_threads() * 4)).max(8);
    pool.install(|| {
        distances
            .par_chunks_mut(block * k)
            .zip(indices.par_chunks_mut(block * k))
            .enumerate()
            .for_each(|(b, (dist_out, idx_out))| {
                let t0 = b * block;
                let rows = dist_out.len() / k;
                let mut finder = BlockSearch::new(rows, k);
                for s0 in (0..src.rows).step_by(SOURCE_TILE) {
                    let cols = SOURCE_TILE.min(src.rows - s0);
                    finder.scan_tile(&src, &tgt, t0, s0, cols, &src_norms, |t_norm| {
                        err_scale * (t_norm + max_src_norm)
                    });
                }
                for r in 0..rows {
                    let best = finder.exact_top_k(r, tgt.row(t0 + r), &src);
                    for (slot, (dist, j)) in best.into_iter().enumerate() {
                        dist_out[r * k + slot] = dist as f32;
                        idx_out[r * k + slot] = j as i64;
                    }
                }
            });
    });
    Ok(Neighbors { k, distances, indices })
}

/// Exact kNN followed by a mode vote over the neighbours' labels.
pub fn knn_predict(
    src: Rows<'_>,
    src_labels: &[i64],
    tgt: Rows<'_>,
    k: usize,
    threads: Option<usize>,
) -> Result<Vec<i64>, Error> {
    if src_labels.len() != src.rows {
        return Err(Error::arg(
            "src_y",
            format!("expected one label per source row ({}), got {}", src.rows, src_labels.len()),
        ));
    }
    let nn = knn_search(src, tgt, k, threads)?;
    let mut votes = vec![0i64; k];
    Ok(nn
        .indices
        .chunks(k.max(1))
        .map(|row| {
            for (v, &j) in votes.iter_mut().zip(row) {
                *v = src_labels[j as usize];
            }
            vote(&mut votes)
        })
        .collect())
}

/// The most frequent value; a tie goes to the smallest. Reorders `labels`. Empty input gives 0.
pub fn vote(labels: &mut [i64]) -> i64 {
    labels.sort_unstable();
    let (mut best, mut best_count) = (labels.first().copied().unwrap_or(0), 0usize);
    for run in labels.chunk_by(|a, b| a == b) {
        // strictly greater: an equal count later in sorted order is a larger label and loses
        if run.len() > best_count {
            best = run[0];
            best_count = run.len();
        }
    }
    best
}

fn check_shapes(src: &Rows<'_>, tgt: &Rows<'_>, k: usize) -> Result<(), Error> {
    if src.cols == 0 {
        return Err(Error::arg("src_emb", "expected at least one feature column, got 0"));
    }
    if src.rows == 0 {
        return Err(Error::arg("src_emb", "expected at least one source row, got 0"));
    }
    if tgt.cols != src.cols {
        return Err(Error::arg(
            "tgt_emb",
            format!("expected {} feature columns (as src_emb), got {}", src.cols, tgt.cols),
        ));
    }
    if k < 1 || k > src.rows {
        return Err(Error::arg("k", format!("expected 1 <= k <= n_src = {}, got {k}", src.rows)));
    }
    if src.rows > u32::MAX as usize {
        return Err(Error::arg("src_emb", format!("expected at most {} rows, got {}", u32::MAX, src.rows)));
    }
    Ok(())
}

/// Width of the branch-free threshold test in the tile scan.
const LANES: usize = 16;

/// The smallest float32 not below `x`, so a float32 comparison never drops what float64 keeps.
fn f32_at_least(x: f64) -> f32 {
    let y = x as f32;
    if (y as f64) < x {
        y.next_up()
    } else {
        y
    }
}

fn sq_norm(x: &[f32]) -> f64 {
    x.iter().map(|&v| (v as f64) * (v as f64)).sum()
}

fn exact_sq_dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let diff = x as f64 - y as f64;
            diff * diff
        })
        .sum()
}

/// Candidate bookkeeping for one block of target rows.
struct BlockSearch {
    k: usize,
    dots: Vec<f32>,
    /// Per row: (approximate distance without |t|^2, source index).
    candidates: Vec<Vec<(f32, u32)>>,
    /// Per row: keep a source row when its approximate distance is <= this.
    threshold: Vec<f64>,
    /// Per row: prune the candidate list when it grows past this.
    prune_at: Vec<usize>,
    /// Per row: the error window 2E, and |t|^2.
    window: Vec<f64>,
    t_norms: Vec<f64>,
}

impl BlockSearch {
    fn new(rows: usize, k: usize) -> Self {
        let first_prune = (4 * k).max(64);
        BlockSearch {
            k,
            dots: Vec::new(),
            candidates: vec![Vec::with_capacity(first_prune + SOURCE_TILE); rows],
            threshold: vec![f64::INFINITY; rows],
            prune_at: vec![first_prune; rows],
            window: vec![0.0; rows],
            t_norms: Vec::new(),
        }
    }

    fn scan_tile(
        &mut self,
        src: &Rows<'_>,
        tgt: &Rows<'_>,
        t0: usize,
        s0: usize,
        cols: usize,
        src_norms: &[f32],
        error_bound: impl Fn(f64) -> f64,
    ) {
        let rows = self.candidates.len();
        let d = src.cols;
        if self.t_norms.is_empty() {
            self.t_norms = (0..rows).map(|r| sq_norm(tgt.row(t0 + r))).collect();
            for r in 0..rows {
                self.window[r] = 2.0 * error_bound(self.t_norms[r]);
            }
        }
        self.dots.resize(rows * cols, 0.0);
        // SAFETY: dims and strides describe the live slices: lhs = targets t0.. (rows x d,
        // row-major), rhs = transpose of sources s0.. (d x cols), dst = rows x cols row-major.
        unsafe {
            gemm::gemm(
                rows,
                cols,
                d,
                self.dots.as_mut_ptr(),
                1,
                cols as isize,
                false,
                tgt.data[t0 * d..].as_ptr(),
                1,
                d as isize,
                src.data[s0 * d..].as_ptr(),
                d as isize,
                1,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        let norms = &src_norms[s0..s0 + cols];
        for r in 0..rows {
            let dots = &self.dots[r * cols..(r + 1) * cols];
            let thr = f32_at_least(self.threshold[r]);
            let cands = &mut self.candidates[r];
            // Almost every entry fails the threshold once the first tile is pruned; test 16 at a
            // time with branch-free (vectorisable) code and look closer only at chunks with a hit.
            for (chunk, (dots, norms)) in dots.chunks(LANES).zip(norms.chunks(LANES)).enumerate() {
                let mut approx = [0f32; LANES];
                let mut hit = false;
                for ((a, &dot), &norm) in approx.iter_mut().zip(dots).zip(norms) {
                    *a = norm - 2.0 * dot;
                    hit |= *a <= thr;
                }
                if hit {
                    for (c, &a) in approx[..dots.len()].iter().enumerate() {
                        if a <= thr {
                            cands.push((a, (s0 + chunk * LANES + c) as u32));
                        }
                    }
                }
            }
            if cands.len() > self.prune_at[r] {
                self.prune(r);
            }
        }
    }

    /// Drops candidates that can no longer be among the k nearest.
    fn prune(&mut self, r: usize) {
        let k = self.k;
        let cands = &mut self.candidates[r];
        if cands.len() >= k {
            let (_, kth, _) = cands.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
            let thr = kth.0 as f64 + self.window[r];
            self.threshold[r] = thr;
            cands.retain(|c| (c.0 as f64) <= thr);
        }
        // Many near-ties can keep the list long; double the trigger so pruning stays amortised O(1).
        self.prune_at[r] = self.prune_at[r].max(2 * cands.len());
    }

    /// The k nearest by exact distance among the surviving candidates, ordered by (distance, index).
    fn exact_top_k(&mut self, r: usize, t: &[f32], src: &Rows<'_>) -> Vec<(f64, usize)> {
        self.prune(r);
        let mut exact: Vec<(f64, usize)> = self.candidates[r]
            .iter()
            .map(|&(_, j)| (exact_sq_dist(t, src.row(j as usize)), j as usize))
            .collect();
        exact.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        exact.truncate(self.k);
        exact
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(src: &[f32], tgt: &[f32], d: usize, k: usize) -> Vec<Vec<usize>> {
        tgt.chunks(d)
            .map(|t| {
                let mut all: Vec<(f64, usize)> =
                    src.chunks(d).enumerate().map(|(j, s)| (exact_sq_dist(t, s), j)).collect();
                all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                all.into_iter().take(k).map(|x| x.1).collect()
            })
            .collect()
    }

    /// Small deterministic pseudo-random integers, so distances are exact and ties are common.
    fn lcg_ints(n: usize, seed: u64, range: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) % range) as f32
            })
            .collect()
    }

    #[test]
    fn matches_brute_force_with_ties_across_tiles() {
        let (n_src, n_tgt, d) = (2500, 300, 7);
        let src = lcg_ints(n_src * d, 1, 4);
        let tgt = lcg_ints(n_tgt * d, 2, 4);
        for k in [1, 5, 64] {
            let got = knn_search(
                Rows::new("src_emb", &src, n_src, d).unwrap(),
                Rows::new("tgt_emb", &tgt, n_tgt, d).unwrap(),
                k,
                Some(2),
            )
            .unwrap();
            let want = brute(&src, &tgt, d, k);
            for (i, w) in want.iter().enumerate() {
                let g: Vec<usize> = got.indices[i * k..(i + 1) * k].iter().map(|&j| j as usize).collect();
                assert_eq!(&g, w, "row {i}, k {k}");
            }
        }
    }

    #[test]
    fn large_offset_still_exact() {
        // Points far from the origin make the GEMM identity lose most digits; re-ranking must fix it.
        let d = 4;
        let src: Vec<f32> = (0..400).map(|i| 1000.0 + (i % 97) as f32 * 0.01).collect();
        let tgt: Vec<f32> = (0..40).map(|i| 1000.0 + (i % 13) as f32 * 0.013).collect();
        let got = knn_search(Rows::new("s", &src, 100, d).unwrap(), Rows::new("t", &tgt, 10, d).unwrap(), 3, Some(1))
            .unwrap();
        let want = brute(&src, &tgt, d, 3);
        for (i, w) in want.iter().enumerate() {
            let g: Vec<usize> = got.indices[i * 3..(i + 1) * 3].iter().map(|&j| j as usize).collect();
            assert_eq!(&g, w);
        }
    }

    #[test]
    fn vote_breaks_ties_toward_smallest_label() {
        assert_eq!(vote(&mut [3, 1, 3, 1]), 1);
        assert_eq!(vote(&mut [7, 2, 7]), 7);
        assert_eq!(vote(&mut [-5]), -5);
        assert_eq!(vote(&mut [9, 8, 7]), 7);
    }

    #[test]
    fn predict_votes_over_neighbours() {
        let src = [0.0f32, 1.0, 2.0, 10.0, 11.0];
        let labels = [4i64, 4, 9, 1, 1];
        let tgt = [0.4f32, 10.6];
        let pred = knn_predict(Rows::new("s", &src, 5, 1).unwrap(), &labels, Rows::new("t", &tgt, 2, 1).unwrap(), 3, None)
            .unwrap();
        assert_eq!(pred, vec![4, 1]);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let src = [0.0f32; 6];
        let s = Rows::new("src_emb", &src, 3, 2).unwrap();
        let t = Rows::new("tgt_emb", &src[..4], 2, 2).unwrap();
        assert!(matches!(knn_search(s, t, 0, None), Err(Error::InvalidArgument { arg: "k", .. })));
        assert!(matches!(knn_search(s, t, 4, None), Err(Error::InvalidArgument { arg: "k", .. })));
        let t3 = Rows::new("tgt_emb", &src, 2, 3).unwrap();
        assert!(matches!(knn_search(s, t3, 1, None), Err(Error::InvalidArgument { arg: "tgt_emb", .. })));
        assert!(Rows::new("src_emb", &[f32::NAN, 0.0], 1, 2).is_err());
        assert!(Rows::new("src_emb", &src, 4, 2).is_err());
        assert!(matches!(knn_predict(s, &[1, 2], t, 1, None), Err(Error::InvalidArgument { arg: "src_y", .. })));
        let empty = knn_search(s, Rows::new("tgt_emb", &[], 0, 2).unwrap(), 2, None).unwrap();
        assert!(empty.indices.is_empty());
    }
}
