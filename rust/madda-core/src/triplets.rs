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
    let ctx = Ctx { order: &order, b, opts, dists, key: mix(opts.seed) };
    let parallel = pairs >= PARALLEL_MIN_PAIRS;
    if dists.is_none() {
        // Every pair yields exactly one triple: write straight into the output, one slice per anchor.
        let mut out = vec![0i64; 3 * pairs];
        let mut slices = Vec::with_capacity(tasks.len());
        let mut rest = out.as_mut_slice();
        for &(_, end, p, _) in &tasks {
            let (head, tail) = rest.split_at_mut(3 * (end - p - 1));
            slices.push(head);
            rest = tail;
        }
        let fill = |(task, slice): (&(usize, usize, usize, usize), &mut &mut [i64])| {
            let &(start, end, p, first) = task;
            ctx.random_negatives(start, end, p, first, slice);
        };
        if parallel {
            pool::get(opts.threads).install(|| tasks.par_iter().zip(slices.par_iter_mut()).for_each(fill));
        } else {
            tasks.iter().zip(slices.iter_mut()).for_each(fill);
        }
        return Ok(out);
    }
    // Distance modes skip pairs without a qualifying negative, so sizes are known only afterwards.
    let per_anchor = |&(start, end, p, first): &(usize, usize, usize, usize)| ctx.mined_negatives(start, end, p, first);
    let chunks: Vec<Vec<i64>> = if parallel {
        pool::get(opts.threads).install(|| tasks.par_iter().map(per_anchor).collect())
    } else {
        tasks.iter().map(per_anchor).collect()
    };
    Ok(chunks.concat())
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
            if let Some(pos) = d.iter().position(|v| !v.is_finite()) {
                return Err(Error::arg(
                    "sq_dists",
                    format!("expected finite values, got {} at ({}, {})", d[pos], pos / b, pos % b),
                ));
            }
            Ok(Some(d))
        }
    }
}

struct Ctx<'a> {
    order: &'a [u32],
    b: usize,
    opts: &'a TripletOptions<'a>,
    dists: Option<&'a [f64]>,
    /// The seed, mixed once so that nearby seeds give unrelated streams.
    key: u64,
}

impl Ctx<'_> {
    /// The r-th negative of group `order[start..end]`: order[..start] ++ order[end..], unbuilt.
    fn negative(&self, start: usize, end: usize, r: usize) -> i64 {
        (if r < start { self.order[r] } else { self.order[r + end - start] }) as i64
    }

    /// Writes the triples whose anchor is `order[p]` with uniformly drawn negatives.
    fn random_negatives(&self, start: usize, end: usize, p: usize, first_pair: usize, out: &mut [i64]) {
        let a = self.order[p] as i64;
        let n_neg = (self.b - (end - start)) as u64;
        for (q, (&pos, row)) in self.order[p + 1..end].iter().zip(out.chunks_exact_mut(3)).enumerate() {
            let r = uniform_below(self.key, (first_pair + q) as u64, n_neg) as usize;
            row.copy_from_slice(&[a, pos as i64, self.negative(start, end, r)]);
        }
    }

    /// The triples whose anchor is `order[p]`, negatives mined from the distance matrix.
    fn mined_negatives(&self, start: usize, end: usize, p: usize, first_pair: usize) -> Vec<i64> {
        let Some(dists) = self.dists else { return Vec::new() };
        let a = self.order[p] as usize;
        let row = &dists[a * self.b..(a + 1) * self.b];
        let n_neg = self.b - (end - start);
        let (mode, margin) = (self.opts.mode, self.opts.margin);
        let by_distance = |x: &(f64, i64), y: &(f64, i64)| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1));
        let with_distance = |r: usize| {
            let n = self.negative(start, end, r);
            (row[n as usize], n)
        };
        let positives = &self.order[p + 1..end];
        let mut out = Vec::new();
        if mode == NegativeMode::Hardest {
            // The nearest negative does not depend on the positive: one scan per anchor.
            let Some((d_min, n_min)) = (0..n_neg).map(with_distance).min_by(by_distance) else { return out };
            for &pos in positives {
                if row[pos as usize] - d_min + margin > 0.0 {
                    out.extend_from_slice(&[a as i64, pos as i64, n_min]);
                }
            }
            return out;
        }
        let admissible =
            |d_ap: f64, d_an: f64| d_ap - d_an + margin > 0.0 && (mode != NegativeMode::SemiHard || d_an > d_ap);
        // Built only when rejection sampling fails for some pair of this anchor.
        let mut sorted: Option<Vec<(f64, i64)>> = None;
        for (q, &pos) in positives.iter().enumerate() {
            let d_ap = row[pos as usize];
            let stream = ((first_pair + q) as u64) * (REJECTION_TRIES + 1);
            // Rejection sampling is exactly uniform over the admissible set when it succeeds, and
            // so is the sorted fallback: the mixture of the two is uniform as well.
            let drawn = (0..REJECTION_TRIES).find_map(|t| {
                let (d_an, n) = with_distance(uniform_below(self.key, stream + t, n_neg as u64) as usize);
                admissible(d_ap, d_an).then_some(n)
            });
            let pick = drawn.or_else(|| {
                let negs = sorted.get_or_insert_with(|| {
                    let mut v: Vec<(f64, i64)> = (0..n_neg).map(with_distance).collect();
                    v.sort_unstable_by(by_distance);
                    v
                });
                // d_ap - d_an + margin > 0 is monotone in d_an (rounding is monotone): a prefix.
                let hi = negs.partition_point(|&(d_an, _)| d_ap - d_an + margin > 0.0);
                let lo = match mode {
                    NegativeMode::SemiHard => negs[..hi].partition_point(|&(d_an, _)| d_an <= d_ap),
                    _ => 0,
                };
                (lo < hi)
                    .then(|| negs[lo + uniform_below(self.key, stream + REJECTION_TRIES, (hi - lo) as u64) as usize].1)
            });
            if let Some(n) = pick {
                out.extend_from_slice(&[a as i64, pos as i64, n]);
            }
        }
        out
    }
}

/// Uniform draws tried per pair before falling back to sorting the anchor's negatives.
const REJECTION_TRIES: u64 = 8;

const GOLDEN: u64 = 0x9e3779b97f4a7c15;

/// SplitMix64's finaliser: a bijective mix, good enough for sampling.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// An exactly uniform integer in [0, n) from position `counter` of the SplitMix64 stream keyed
/// by `key` (Lemire's multiply-and-reject; the division runs only in the rare rejection zone).
/// `n` must be positive.
fn uniform_below(key: u64, counter: u64, n: u64) -> u64 {
    let mut state = key.wrapping_add(counter.wrapping_mul(GOLDEN));
    loop {
        state = state.wrapping_add(GOLDEN);
        let wide = (mix(state) as u128) * (n as u128);
        let low = wide as u64;
        if low >= n || low >= n.wrapping_neg() % n {
            return (wide >> 64) as u64;
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
    fn uniform_below_is_in_range_and_spread() {
        let mut counts = [0usize; 7];
        for c in 0..70_000 {
            counts[uniform_below(1, c, 7) as usize] += 1;
        }
        assert!(counts.iter().all(|&n| (9_000..11_000).contains(&n)), "{counts:?}");
    }
}
