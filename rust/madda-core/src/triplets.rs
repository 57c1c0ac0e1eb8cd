//! Per-batch triplet enumeration (M-ADDA, Algorithm 1).
//!
//! For every label in the batch (ascending) and every pair of its members i < j (lexicographic,
//! by batch index), one (anchor i, positive j, negative n) triple. How n is chosen:
//! * `Random`: uniformly among the indices whose label differs (the paper);
//! * `Violating`: uniformly among negatives with d(a,p) - d(a,n) + margin > 0, skipping the pair
//!   when there is none (the authors' released code);
//! * `Hardest`: the violating negative nearest the anchor (smallest index on ties);
//! * `SemiHard`: uniformly among d(a,p) < d(a,n) < d(a,p) + margin (FaceNet), skipping the pair
//!   when there is none.
//!
//! Randomness is counter-based: the draw for pair number q depends only on (seed, q), so output
//! is identical for any thread count.

use rayon::prelude::*;

use crate::error::Error;
use crate::pool;

/// Most triplets one call may return (3 x 8 bytes each: 1.2 GB). A batch of 4096 over 10 classes
/// gives about 0.84 M; one of 4096 over 2 classes about 4.2 M.
pub const MAX_TRIPLETS: usize = 50_000_000;

/// Below this many pairs the work is done on the calling thread: waking a pool costs more.
const PARALLEL_MIN_PAIRS: usize = 1 << 15;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NegativeMode {
    Random,
    Violating,
    Hardest,
    SemiHard,
}

impl NegativeMode {
    /// Parses the Python-facing name.
    pub fn parse(name: &str) -> Result<Self, Error> {
        match name {
            "random" => Ok(Self::Random),
            "violating" => Ok(Self::Violating),
            "hardest" => Ok(Self::Hardest),
            "semihard" => Ok(Self::SemiHard),
            other => Err(Error::arg(
                "negatives",
                format!("expected one of 'random', 'violating', 'hardest', 'semihard', got {other:?}"),
            )),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct TripletOptions<'a> {
    pub mode: NegativeMode,
    pub seed: u64,
    /// Row-major (B x B) squared distances; required by every mode except `Random`.
    pub sq_dists: Option<&'a [f64]>,
    pub margin: f64,
    pub threads: Option<usize>,
}

/// Triplets as a flat row-major (m x 3) array of batch indices.
pub fn triplets(labels: &[i64], opts: &TripletOptions<'_>) -> Result<Vec<i64>, Error> {
    let b = labels.len();
    let dists = check(b, opts)?;
    // Batch positions grouped by label (ascending label, then ascending index).
    let mut order: Vec<u32> = (0..b as u32).collect();
    order.sort_by_key(|&i| (labels[i as usize], i));
    let groups: Vec<(usize, usize)> = {
        let mut out = Vec::new();
        let mut start = 0;
        for end in 1..=b {
            if end == b || labels[order[end] as usize] != labels[order[start] as usize] {
                out.push((start, end));
                start = end;
            }
        }
        out
    };
    if groups.len() < 2 {
        return Ok(Vec::new()); // one label (or none): no negatives exist
    }
    // One task per anchor: (group start, group end, anchor position, index of its first pair).
    let mut tasks = Vec::new();
    let mut pairs = 0usize;
    for &(start, end) in &groups {
        for p in start..end.saturating_sub(1) {
            tasks.push((start, end, p, pairs));
            pairs += end - p - 1;
        }
    }
    if pairs > MAX_TRIPLETS {
        return Err(Error::TooLarge {
            message: format!(
                "labels: this batch has {pairs} same-label pairs, more than the {MAX_TRIPLETS} triplets one call may \
                 return; use a smaller batch or more classes per batch"
            ),
        });
    }
    let ctx = Ctx { labels, order: &order, b, opts, dists, key: mix(opts.seed) };
    let parallel = pairs >= PARALLEL_MIN_PAIRS;
    // One slice of the output per anchor, three values per pair, filled in parallel. Distance
    // modes skip pairs without a qualifying negative: they report how many rows they wrote, and
    // the rows are closed up afterwards (in place: one pass, no second buffer).
    let mut out = vec![0i64; 3 * pairs];
    let mut slices = Vec::with_capacity(tasks.len());
    let mut rest = out.as_mut_slice();
    for &(_, end, p, _) in &tasks {
        let (head, tail) = rest.split_at_mut(3 * (end - p - 1));
        slices.push(head);
        rest = tail;
    }
    let fill = |(task, slice): (&(usize, usize, usize, usize), &mut &mut [i64])| -> usize {
        let &(start, end, p, first) = task;
        if dists.is_none() {
            ctx.random_negatives(start, end, p, first, slice);
            end - p - 1
        } else {
            ctx.mined_negatives(start, end, p, first, slice)
        }
    };
    let written: Vec<usize> = if parallel {
        pool::get(opts.threads).install(|| tasks.par_iter().zip(slices.par_iter_mut()).map(fill).collect())
    } else {
        tasks.iter().zip(slices.iter_mut()).map(fill).collect()
    };
    if dists.is_some() {
        let (mut from, mut to) = (0, 0);
        for (&(_, end, p, _), &rows) in tasks.iter().zip(&written) {
            out.copy_within(from..from + 3 * rows, to);
            from += 3 * (end - p - 1);
            to += 3 * rows;
        }
        out.truncate(to);
    }
    Ok(out)
}

fn check<'a>(b: usize, opts: &TripletOptions<'a>) -> Result<Option<&'a [f64]>, Error> {
    if !opts.margin.is_finite() {
        return Err(Error::arg("margin", format!("expected a finite number, got {}", opts.margin)));
    }
    match (opts.mode, opts.sq_dists) {
        (NegativeMode::Random, None) => Ok(None),
        (NegativeMode::Random, Some(_)) => Err(Error::arg(
            "sq_dists",
            "is only used by negatives='violating', 'hardest' or 'semihard'; got it with negatives='random'",
        )),
        (_, None) => {
            Err(Error::arg("sq_dists", "expected the batch's (B x B) squared distances for this mode, got None"))
        }
        (_, Some(d)) => {
            if d.len() != b * b {
                return Err(Error::arg("sq_dists", format!("expected {b} x {b} = {} values, got {}", b * b, d.len())));
            }
            if let Some(pos) = first_non_finite(d, opts.threads) {
                return Err(Error::arg(
                    "sq_dists",
                    format!("expected finite values, got {} at ({}, {})", d[pos], pos / b, pos % b),
                ));
            }
            Ok(Some(d))
        }
    }
}

/// The position of the first NaN or infinity in `values`. A batch of 4096 has 16.8 M distances
/// (134 MB), so the scan is branch-free (vectorised) chunk by chunk, and parallel when large.
fn first_non_finite(values: &[f64], threads: Option<usize>) -> Option<usize> {
    const CHUNK: usize = 1 << 14;
    let clean = |c: &[f64]| c.iter().fold(true, |ok, v| ok & v.is_finite());
    let all_clean = if values.len() >= 1 << 20 {
        pool::get(threads).install(|| values.par_chunks(CHUNK).all(clean))
    } else {
        values.chunks(CHUNK).all(clean)
    };
    if all_clean {
        None
    } else {
        values.iter().position(|v| !v.is_finite())
    }
}

struct Ctx<'a> {
    labels: &'a [i64],
    order: &'a [u32],
    b: usize,
    opts: &'a TripletOptions<'a>,
    dists: Option<&'a [f64]>,
    /// The seed, mixed once so that nearby seeds give unrelated streams.
    key: u64,
}

impl Ctx<'_> {
    /// The r-th negative of group `order[start..end]`: order[..start] ++ order[end..], unbuilt.
    /// Branch-free: r is random, so a branch on it would mispredict half the time.
    fn negative(&self, start: usize, end: usize, r: usize) -> i64 {
        self.order[r + (r >= start) as usize * (end - start)] as i64
    }

    /// Writes the triples whose anchor is `order[p]` with uniformly drawn negatives.
    fn random_negatives(&self, start: usize, end: usize, p: usize, first_pair: usize, out: &mut [i64]) {
        let a = self.order[p] as i64;
        let below = Below::new((self.b - (end - start)) as u64);
        for (q, (&pos, row)) in self.order[p + 1..end].iter().zip(out.chunks_exact_mut(3)).enumerate() {
            let r = below.draw(self.key, (first_pair + q) as u64) as usize;
            row.copy_from_slice(&[a, pos as i64, self.negative(start, end, r)]);
        }
    }

    /// Writes the triples whose anchor is `order[p]`, negatives mined from the distance matrix,
    /// to the front of `out` (three values per pair of this anchor); returns how many it wrote.
    fn mined_negatives(&self, start: usize, end: usize, p: usize, first_pair: usize, out: &mut [i64]) -> usize {
        let Some(dists) = self.dists else { return 0 };
        let a = self.order[p] as usize;
        let row = &dists[a * self.b..(a + 1) * self.b];
        prefetch(row);
        let n_neg = self.b - (end - start);
        let (mode, margin) = (self.opts.mode, self.opts.margin);
        let by_distance = |x: &(f64, i64), y: &(f64, i64)| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1));
        let with_distance = |r: usize| {
            let n = self.negative(start, end, r);
            (row[n as usize], n)
        };
        let positives = &self.order[p + 1..end];
        let mut rows = 0;
        let mut emit = |pos: u32, n: i64| {
            out[3 * rows..3 * rows + 3].copy_from_slice(&[a as i64, pos as i64, n]);
            rows += 1;
        };
        if mode == NegativeMode::Hardest {
            // The nearest negative does not depend on the positive: one scan per anchor.
            let Some((d_min, n_min)) = (0..n_neg).map(with_distance).min_by(by_distance) else { return 0 };
            for &pos in positives {
                if row[pos as usize] - d_min + margin > 0.0 {
                    emit(pos, n_min);
                }
            }
            return rows;
        }
        let admissible =
            |d_ap: f64, d_an: f64| d_ap - d_an + margin > 0.0 && (mode != NegativeMode::SemiHard || d_an > d_ap);
        let tries = rejection_tries(mode);
        let below = Below::new(n_neg as u64);
        // Rejection sampling first: exactly uniform over the admissible set when it succeeds.
        // `NONE_YET` marks the pairs where it failed.
        const NONE_YET: i64 = -1;
        let mut picks = vec![NONE_YET; positives.len()];
        let mut widest = f64::NEG_INFINITY; // the largest d_ap among the pairs left over
        for (q, (&pos, pick)) in positives.iter().zip(picks.iter_mut()).enumerate() {
            let d_ap = row[pos as usize];
            let stream = ((first_pair + q) as u64) * (tries + 1);
            // Eight draws at a time, tested without branches; the first admissible one wins, as
            // if they had been tried one by one (independent draws also keep the CPU busier).
            let mut drawn = None;
            for t0 in (0..tries).step_by(DRAWS_AT_ONCE as usize) {
                let mut found = [0i64; DRAWS_AT_ONCE as usize];
                let mut mask = 0u32;
                for (i, slot) in found.iter_mut().enumerate() {
                    let (d_an, n) = with_distance(below.draw(self.key, stream + t0 + i as u64) as usize);
                    *slot = n;
                    mask |= (admissible(d_ap, d_an) as u32) << i;
                }
                if mask != 0 {
                    drawn = Some(found[mask.trailing_zeros() as usize]);
                    break;
                }
            }
            match drawn {
                Some(n) => *pick = n,
                None => widest = widest.max(d_ap),
            }
        }
        // The rest draw from the anchor's negatives sorted by (distance, index), where the
        // admissible set of a pair is a range: d_ap - d_an + margin > 0 is monotone in d_an and
        // in d_ap (rounding is monotone), so every range lies inside the prefix admitted by the
        // widest pair. Only that prefix is gathered and sorted; the mixture of the two draws is
        // exactly uniform, and each fallback pick is the one a sort of all negatives would give.
        if widest > f64::NEG_INFINITY {
            // Branch-free gather (about half the negatives pass, so a branch would mispredict),
            // keyed by integers in the order of (total_cmp, index): sorting them is about twice
            // as fast as comparing through closures.
            // The row is read in index order (the sort fixes the order anyway), and a negative
            // is any position with another label.
            let label = self.labels[a];
            let mut negs = vec![(0u64, 0i64); self.b];
            let mut len = 0;
            for (n, (&d_an, &l)) in row.iter().zip(self.labels).enumerate() {
                negs[len] = (order_key(d_an), n as i64);
                len += (l != label && widest - d_an + margin > 0.0) as usize;
            }
            negs.truncate(len);
            negs.sort_unstable();
            for (q, (&pos, pick)) in positives.iter().zip(picks.iter_mut()).enumerate() {
                if *pick != NONE_YET {
                    continue;
                }
                let d_ap = row[pos as usize];
                let stream = ((first_pair + q) as u64) * (tries + 1);
                let hi = negs.partition_point(|&(key, _)| d_ap - from_order_key(key) + margin > 0.0);
                let lo = match mode {
                    NegativeMode::SemiHard => negs[..hi].partition_point(|&(key, _)| from_order_key(key) <= d_ap),
                    _ => 0,
                };
                if lo < hi {
                    *pick = negs[lo + uniform_below(self.key, stream + tries, (hi - lo) as u64) as usize].1;
                }
            }
        }
        for (&pos, &n) in positives.iter().zip(&picks) {
            if n != NONE_YET {
                emit(pos, n);
            }
        }
        rows
    }
}

/// Asks the CPU to bring `row` into cache. The draws below read it at random positions, and a
/// row of a large batch (32 KiB at B = 4096) is usually in memory, not cache: streaming it in
/// once is far cheaper than a cache miss on every draw.
fn prefetch(row: &[f64]) {
    #[cfg(target_arch = "x86_64")]
    for line in row.chunks(8) {
        // SAFETY: prefetching never faults, and SSE is part of x86-64.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// Draws evaluated together; must divide both counts of `rejection_tries`.
const DRAWS_AT_ONCE: u64 = 8;

/// Uniform draws tried per pair before falling back to the sorted negatives. A pair whose
/// admissible negatives are a fraction f of all falls back with probability (1 - f)^tries, and
/// an anchor with any such pair gathers and sorts the negatives the widest of them admits, which
/// costs far more than a draw. Violators are usually a large fraction: with 128 draws a pair
/// whose violator fraction is uniformly spread falls back about 1 time in 129, and the pairs that
/// do have few violators, so the gathered prefix is short. Semi-hard negatives are a small
/// fraction, where more draws cost more than they save (8 also keeps their output as before).
fn rejection_tries(mode: NegativeMode) -> u64 {
    match mode {
        NegativeMode::Violating => 128,
        _ => 8,
    }
}

/// An integer whose order is `f64::total_cmp`'s (the transform `total_cmp` itself uses).
fn order_key(x: f64) -> u64 {
    let bits = x.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

/// The inverse of [`order_key`].
fn from_order_key(key: u64) -> f64 {
    f64::from_bits(if key >> 63 == 1 { key & !(1 << 63) } else { !key })
}

const GOLDEN: u64 = 0x9e3779b97f4a7c15;

/// SplitMix64's finaliser: a bijective mix, good enough for sampling.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// An exactly uniform integer in [0, n) from position `counter` of the SplitMix64 stream keyed
/// by `key` (Lemire's multiply-and-reject). `n` must be positive.
fn uniform_below(key: u64, counter: u64, n: u64) -> u64 {
    Below::new(n).draw(key, counter)
}

/// [`uniform_below`] for many draws with the same `n`: the rejection threshold (a 64-bit
/// division) is computed once, not on every draw, where a compiler may hoist it out of the
/// branch that usually skips it.
#[derive(Clone, Copy)]
struct Below {
    n: u64,
    /// Lemire's threshold 2^64 mod n: a low half below it is rejected.
    threshold: u64,
}

impl Below {
    fn new(n: u64) -> Self {
        Below { n, threshold: n.wrapping_neg() % n }
    }

    fn draw(self, key: u64, counter: u64) -> u64 {
        let mut state = key.wrapping_add(counter.wrapping_mul(GOLDEN));
        loop {
            state = state.wrapping_add(GOLDEN);
            let wide = (mix(state) as u128) * (self.n as u128);
            if wide as u64 >= self.threshold {
                return (wide >> 64) as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(mode: NegativeMode, sq_dists: Option<&[f64]>) -> TripletOptions<'_> {
        TripletOptions { mode, seed: 7, sq_dists, margin: 1.0, threads: Some(2) }
    }

    #[test]
    fn random_gives_one_valid_triple_per_pair() {
        let labels = [2i64, 0, 2, 1, 0, 2];
        let t = triplets(&labels, &opts(NegativeMode::Random, None)).unwrap();
        let rows: Vec<&[i64]> = t.chunks(3).collect();
        let pairs: Vec<(i64, i64)> = rows.iter().map(|r| (r[0], r[1])).collect();
        assert_eq!(pairs, vec![(1, 4), (0, 2), (0, 5), (2, 5)]);
        for r in rows {
            assert_eq!(labels[r[0] as usize], labels[r[1] as usize]);
            assert_ne!(labels[r[0] as usize], labels[r[2] as usize]);
        }
    }

    #[test]
    fn same_seed_same_output_any_thread_count() {
        let labels: Vec<i64> = (0..600).map(|i| (i * 7 % 10) as i64).collect();
        let mut o = opts(NegativeMode::Random, None);
        let a = triplets(&labels, &o).unwrap();
        o.threads = Some(1);
        assert_eq!(a, triplets(&labels, &o).unwrap());
        o.seed = 8;
        assert_ne!(a, triplets(&labels, &o).unwrap());
    }

    #[test]
    fn distance_modes_respect_their_conditions() {
        let labels = [0i64, 0, 1, 1, 2];
        let pos = [0.0f64, 0.5, 0.9, 3.0, 1.2];
        let d: Vec<f64> = (0..25).map(|i| (pos[i / 5] - pos[i % 5]).powi(2)).collect();
        for mode in [NegativeMode::Violating, NegativeMode::Hardest, NegativeMode::SemiHard] {
            let t = triplets(&labels, &opts(mode, Some(&d))).unwrap();
            for r in t.chunks(3) {
                let (a, p, n) = (r[0] as usize, r[1] as usize, r[2] as usize);
                let (ap, an) = (d[a * 5 + p], d[a * 5 + n]);
                assert!(ap - an + 1.0 > 0.0);
                if mode == NegativeMode::SemiHard {
                    assert!(an > ap);
                }
            }
        }
        // anchor 0, positive 1: d_ap = 0.25; negatives 2 (0.81), 4 (1.44), 3 (9): hardest is 2.
        let t = triplets(&labels, &opts(NegativeMode::Hardest, Some(&d))).unwrap();
        assert_eq!(&t[..3], &[0, 1, 2]);
    }

    #[test]
    fn degenerate_and_bad_input() {
        assert!(triplets(&[3, 3, 3], &opts(NegativeMode::Random, None)).unwrap().is_empty());
        assert!(triplets(&[], &opts(NegativeMode::Random, None)).unwrap().is_empty());
        assert!(triplets(&[0, 1, 2], &opts(NegativeMode::Random, None)).unwrap().is_empty());
        assert!(triplets(&[0, 1], &opts(NegativeMode::Violating, None)).is_err());
        assert!(triplets(&[0, 1], &opts(NegativeMode::Violating, Some(&[0.0; 3]))).is_err());
        assert!(triplets(&[0, 1], &opts(NegativeMode::Violating, Some(&[0.0, f64::NAN, 0.0, 0.0]))).is_err());
        assert!(NegativeMode::parse("nearest").is_err());
        let big: Vec<i64> = vec![0; 20_000].into_iter().chain([1]).collect();
        assert!(matches!(triplets(&big, &opts(NegativeMode::Random, None)), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn order_key_orders_as_total_cmp_and_inverts() {
        let xs =
            [f64::NEG_INFINITY, -1e300, -1.0, -f64::MIN_POSITIVE, -0.0, 0.0, 5e-324, 1.0, 2.5, 1e300, f64::INFINITY];
        for (i, &x) in xs.iter().enumerate() {
            assert_eq!(from_order_key(order_key(x)).to_bits(), x.to_bits());
            for &y in &xs[i..] {
                assert_eq!(order_key(x).cmp(&order_key(y)), x.total_cmp(&y), "{x} {y}");
            }
        }
    }

    #[test]
    fn below_draws_as_the_lemire_loop() {
        // The threshold test equals the textbook `low >= n || low >= (2^64 - n) % n`.
        for n in [1u64, 2, 3, 7, 1000, (1 << 63) + 5, u64::MAX] {
            let below = Below::new(n);
            for c in 0..200u64 {
                let mut state = 9u64.wrapping_add(c.wrapping_mul(GOLDEN));
                let want = loop {
                    state = state.wrapping_add(GOLDEN);
                    let wide = (mix(state) as u128) * (n as u128);
                    let low = wide as u64;
                    if low >= n || low >= n.wrapping_neg() % n {
                        break (wide >> 64) as u64;
                    }
                };
                assert_eq!(below.draw(9, c), want);
            }
        }
    }

    #[test]
    fn uniform_below_is_in_range_and_spread() {
        let mut counts = [0usize; 7];
        for c in 0..70_000 {
            counts[uniform_below(1, c, 7) as usize] += 1;
        }
        assert!(counts.iter().all(|&n| (9_000..11_000).contains(&n)), "{counts:?}");
    }
}
