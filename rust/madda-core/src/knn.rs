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
//!
//! On x86-64 the GEMM and the threshold test are fused into one hand-written micro-kernel, the
//! widest the CPU runs (checked at run time; [`Kernel`]). The AVX2+FMA kernel (module `avx2`)
//! packs a task's target rows into panels of 16 (depth-major, so one depth step is two aligned
//! 256-bit loads), then walks the source six rows at a time straight from the caller's
//! row-major data, keeping the 6 x 16 dot products in twelve registers. The AVX-512 kernel
//! (module `avx512`) does the same with panels of 32 and fourteen source rows: 28 of the 32 zmm
//! registers accumulate, and every depth step is two panel loads, fourteen broadcasts and 28
//! FMAs, which keeps both FMA ports of a full-width AVX-512 core busy. (Not yet measured on
//! CPUs that split 512-bit work into 256-bit halves, such as AMD Zen 4; there the arithmetic
//! rate is the AVX2 kernel's, and `MADDA_KNN_KERNEL=avx2` selects that kernel.) At the end of the depth
//! loop the approximate distances are formed in registers and their minimum over the source rows
//! is compared with the target rows' thresholds; memory is written only when some lane passes.
//! The dot products are plain FMA chains over the depth, so the same rounding bound holds. Per
//! thread these paths need only the packed target block (rows x d floats). Elsewhere the
//! `portable` kernel (the `gemm` crate's GEMM, then a threshold pass) runs; every kernel returns
//! identical results, and `MADDA_KNN_KERNEL` can force a lower one.
//!
//! Where the CPU has AMX-BF16 (and Linux grants the tile state), the `amx-bf16` kernel (module
//! `bf16`, whose doc states its error bound) finds the candidates with bf16 tile products
//! instead: both sides centred by the source mean and split into hi + lo bf16 halves, three
//! bf16 products per float32 one, a window `2E` from a rigorous bound on that arithmetic, then
//! the same exact re-rank. A row whose candidates overflow goes through the float32 kernel again
//! ([`SearchStats`] counts them). `avx512-bf16` runs the same pass with `vdpbf16ps`; on the
//! Xeon it was written on it is slower than the AVX-512 kernel, so it runs only when named.

use rayon::prelude::*;

use crate::error::Error;
use crate::pool;

mod bf16;

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
            return Err(Error::arg(
                arg,
                format!("expected {rows} x {cols} = {} values, got {}", rows * cols, data.len()),
            ));
        }
        // Past this magnitude a float32 squared distance (up to 4 d x^2) could overflow.
        let limit = (f32::MAX as f64 / (8.0 * cols.max(1) as f64)).sqrt() as f32;
        // A branch-free pass over chunks (it vectorises; NaN fails `<=`), then a search for the
        // offending value only in a chunk that failed: the check costs a fraction of a scan.
        let bad_chunk = data.chunks(256).position(|c| !c.iter().fold(true, |ok, v| ok & (v.abs() <= limit)));
        if let Some(pos) = bad_chunk
            .and_then(|c| data[c * 256..].iter().position(|v| !v.is_finite() || v.abs() > limit).map(|p| c * 256 + p))
        {
            let (value, row, col) = (data[pos], pos / cols.max(1), pos % cols.max(1));
            let message = if value.is_finite() {
                format!("expected |values| <= {limit:.3e} (squared distances must fit in float32), got {value:e} at row {row}, column {col}; rescale the embeddings")
            } else {
                format!("expected finite values, got {value} at row {row}, column {col}")
            };
            return Err(Error::arg(arg, message));
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

/// Exact kNN search. `threads = None` uses [`pool::default_threads`]; the kernel is
/// [`Kernel::default_for_cpu`] (which honours `MADDA_KNN_KERNEL`).
pub fn knn_search(src: Rows<'_>, tgt: Rows<'_>, k: usize, threads: Option<usize>) -> Result<Neighbors, Error> {
    knn_search_with(src, tgt, k, threads, Kernel::default_for_cpu()?)
}

/// Environment variable that forces the kNN kernel (`amx-bf16`, `avx512-bf16`, `avx512`,
/// `avx2` or `portable`): for measuring one kernel against another, and for testing the lower
/// kernels on a CPU that has the higher ones.
pub const KERNEL_ENV: &str = "MADDA_KNN_KERNEL";

/// The inner loop of the kNN scan. Every kernel returns identical results (same candidates
/// window, same float64 re-rank); they differ only in speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AMX-BF16 tiles find the candidates (module `bf16`), the exact re-rank decides.
    AmxBf16,
    /// AVX512-BF16 `vdpbf16ps` finds the candidates (module `bf16`), the exact re-rank decides.
    Avx512Bf16,
    /// AVX-512F: 32-row target panels, the threshold test fused into the multiply.
    Avx512,
    /// AVX2 + FMA: 16-row target panels, the threshold test fused into the multiply.
    Avx2,
    /// The `gemm` crate's tiled GEMM followed by a separate threshold pass; runs anywhere.
    Portable,
}

impl Kernel {
    /// Every kernel, fastest first (as measured on an Intel Xeon with all of them: the
    /// AVX512-BF16 pass needs three bf16 products per float32 one, and `vdpbf16ps` issues at
    /// half the rate of float32 FMAs there, so it is slower than the AVX-512 kernel and runs
    /// only when named).
    pub const ALL: [Kernel; 5] = [Kernel::AmxBf16, Kernel::Avx512, Kernel::Avx512Bf16, Kernel::Avx2, Kernel::Portable];

    /// The name used by `MADDA_KNN_KERNEL` and the Python API.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::AmxBf16 => "amx-bf16",
            Kernel::Avx512Bf16 => "avx512-bf16",
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
            Kernel::Portable => "portable",
        }
    }

    /// Parses a kernel name; `arg` names the argument (or variable) for the error.
    pub fn parse(arg: &'static str, name: &str) -> Result<Kernel, Error> {
        Kernel::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
            Error::arg(
                arg,
                format!("expected one of 'amx-bf16', 'avx512-bf16', 'avx512', 'avx2', 'portable', got {name:?}"),
            )
        })
    }

    /// Whether this CPU can run the kernel (checked at run time).
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => std::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Bf16 => {
                std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::AmxBf16 => std::is_x86_feature_detected!("avx512f") && bf16::amx::available(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The kernels this CPU runs, fastest first.
    pub fn available() -> Vec<Kernel> {
        Kernel::ALL.into_iter().filter(|k| k.is_available()).collect()
    }

    /// The fastest kernel this CPU runs, capped by `MADDA_KNN_KERNEL` when that is set (a named
    /// kernel the CPU lacks is an error, so a forced measurement never silently measures another).
    pub fn default_for_cpu() -> Result<Kernel, Error> {
        match std::env::var(KERNEL_ENV) {
            Ok(name) if !name.trim().is_empty() => Kernel::parse(KERNEL_ENV, name.trim())?.require(KERNEL_ENV),
            _ => Ok(Kernel::available()[0]),
        }
    }

    /// `self` if this CPU runs it, else an error naming `arg`.
    pub fn require(self, arg: &'static str) -> Result<Kernel, Error> {
        if self.is_available() {
            return Ok(self);
        }
        let names: Vec<&str> = Kernel::available().iter().map(|k| k.name()).collect();
        Err(Error::arg(arg, format!("this CPU cannot run the {:?} kernel; it runs {names:?}", self.name())))
    }

    /// Whether the kernel is a bf16 candidate pass (which re-checks with a float32 kernel).
    fn is_bf16(self) -> bool {
        matches!(self, Kernel::AmxBf16 | Kernel::Avx512Bf16)
    }

    /// The float32 kernel behind a bf16 one (for rows whose candidates overflow), else itself.
    fn float32(self) -> Kernel {
        match self {
            Kernel::AmxBf16 | Kernel::Avx512Bf16 => Kernel::Avx512,
            other => other,
        }
    }

    /// Target rows per task, at most: the AMX kernel re-reads the whole source once per block
    /// and is fast enough that this traffic shows, so its blocks are larger (1 MiB of packed
    /// targets at d = 256, within a core's L2).
    fn target_block(self) -> usize {
        match self {
            Kernel::AmxBf16 => 4 * TARGET_BLOCK,
            _ => TARGET_BLOCK,
        }
    }

    /// Target rows per packed panel (the fused kernels' vector width).
    fn panel(self) -> usize {
        match self {
            Kernel::AmxBf16 => 32,
            Kernel::Avx512Bf16 => 14,
            Kernel::Avx512 => 32,
            Kernel::Avx2 => 16,
            Kernel::Portable => 1,
        }
    }
}

/// [`knn_search`] with the kernel chosen by the caller; an error if this CPU cannot run it.
pub fn knn_search_with(
    src: Rows<'_>,
    tgt: Rows<'_>,
    k: usize,
    threads: Option<usize>,
    kernel: Kernel,
) -> Result<Neighbors, Error> {
    knn_search_counted(src, tgt, k, threads, kernel).map(|(nn, _)| nn)
}

/// What the bf16 candidate pass did in one search (all zero for the float32 kernels).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SearchStats {
    /// Target rows whose candidates the bf16 pass found.
    pub rows: u64,
    /// Candidates re-ranked exactly, summed over those rows that did not fall back.
    pub candidates: u64,
    /// Rows whose bf16 candidates overflowed, searched again by the float32 kernel.
    pub fallback_rows: u64,
}

impl std::ops::Add for SearchStats {
    type Output = SearchStats;
    fn add(self, o: SearchStats) -> SearchStats {
        SearchStats {
            rows: self.rows + o.rows,
            candidates: self.candidates + o.candidates,
            fallback_rows: self.fallback_rows + o.fallback_rows,
        }
    }
}

/// Largest source (bytes of float32) the bf16 candidate pass packs; larger ones take the float32
/// kernel. 64 MiB holds 60,000 x 256 embeddings (MNIST's training set), where the pass pays most.
pub const BF16_SOURCE_LIMIT: usize = 64 << 20;

/// [`knn_search_with`], also returning what the bf16 candidate pass did (for benchmarks and tests).
pub fn knn_search_counted(
    src: Rows<'_>,
    tgt: Rows<'_>,
    k: usize,
    threads: Option<usize>,
    kernel: Kernel,
) -> Result<(Neighbors, SearchStats), Error> {
    search(src, tgt, k, threads, kernel, None)
}

/// The search; `cap` overrides [`bf16::fallback_cap`] (tests force the fallback with it).
fn search(
    src: Rows<'_>,
    tgt: Rows<'_>,
    k: usize,
    threads: Option<usize>,
    kernel: Kernel,
    cap: Option<usize>,
) -> Result<(Neighbors, SearchStats), Error> {
    let kernel = kernel.require("kernel")?;
    check_shapes(&src, &tgt, k)?;
    // The bf16 pass packs the whole source (hi + lo halves: as many bytes as the float32 input);
    // past BF16_SOURCE_LIMIT the float32 kernel behind it runs instead (the same answer), so a
    // search never adds more than that much memory, whatever the source's size.
    let kernel =
        if kernel.is_bf16() && src.rows * src.cols * 4 > BF16_SOURCE_LIMIT { kernel.float32() } else { kernel };
    let n_tgt = tgt.rows;
    let mut distances = vec![0f32; n_tgt * k];
    let mut indices = vec![0i64; n_tgt * k];
    if n_tgt == 0 {
        return Ok((Neighbors { k, distances, indices }, SearchStats::default()));
    }
    let d = src.cols;
    let pool = pool::get(threads);
    // The float32 kernels' source norms; a bf16 search needs them only for rows that fall back.
    let src_norms = std::sync::OnceLock::<(Vec<f32>, f64)>::new();
    let float32_norms = || {
        src_norms.get_or_init(|| {
            let norms: Vec<f32> =
                (0..src.rows).into_par_iter().with_min_len(1024).map(|j| sq_norm(src.row(j)) as f32).collect();
            let max = norms.iter().copied().fold(0f32, f32::max) as f64;
            (norms, max)
        })
    };
    // Rounding bound on one approximate distance: the dot product's (d terms, gamma_d ~ d*u) plus
    // the norm and the subtraction; doubled for safety. u = EPSILON / 2.
    let err_scale = (d as f64 + 8.0) * f32::EPSILON as f64;
    // Products in float32's subnormal range carry an absolute error (up to half the smallest
    // subnormal each) that the relative bound above does not cover.
    let err_floor = (d as f64 + 8.0) * 4.0 * f32::from_bits(1) as f64;
    let f32_bound = |t_norm: f64, max_src_norm: f64| err_scale * (t_norm + max_src_norm) + err_floor;
    let source = kernel.is_bf16().then(|| bf16::Source::new(&src, &pool));
    let cap = cap.unwrap_or(bf16::fallback_cap(k, src.rows));

    let mut block = kernel.target_block().min(n_tgt.div_ceil(pool.current_num_threads() * 4)).max(8);
    if kernel != Kernel::Portable {
        block = balanced_block(n_tgt, block, pool.current_num_threads(), kernel.panel());
    }
    let stats = pool.install(|| {
        distances
            .par_chunks_mut(block * k)
            .zip(indices.par_chunks_mut(block * k))
            .enumerate()
            .map(|(b, (dist_out, idx_out))| {
                let t0 = b * block;
                let rows = dist_out.len() / k;
                let mut write = |r: usize, best: Vec<(f64, usize)>| {
                    for (slot, (dist, j)) in best.into_iter().enumerate() {
                        dist_out[r * k + slot] = dist as f32;
                        idx_out[r * k + slot] = j as i64;
                    }
                };
                let Some(source) = &source else {
                    let (norms, max) = float32_norms();
                    let mut finder = BlockSearch::new(&tgt, t0, rows, k, |t| f32_bound(t, *max));
                    scan_source(&mut finder, &src, &tgt, t0, norms, kernel);
                    for r in 0..rows {
                        write(r, finder.exact_top_k(r, tgt.row(t0 + r), &src));
                    }
                    return SearchStats::default();
                };
                let mut stats = SearchStats { rows: rows as u64, ..SearchStats::default() };
                let mut fallback = Vec::new();
                match bf16::scan_block(source, &tgt, t0, rows, k, kernel) {
                    Some(mut finder) => {
                        for r in 0..rows {
                            finder.prune(r);
                            let n = finder.candidates[r].len();
                            if n > cap {
                                fallback.push(r);
                            } else {
                                stats.candidates += n as u64;
                                write(r, finder.exact_top_k(r, tgt.row(t0 + r), &src));
                            }
                        }
                    }
                    None => fallback.extend(0..rows),
                }
                if !fallback.is_empty() {
                    // The overflowing rows, gathered, through the float32 kernel.
                    let data: Vec<f32> = fallback.iter().flat_map(|&r| tgt.row(t0 + r)).copied().collect();
                    let again = Rows { data: &data, rows: fallback.len(), cols: d };
                    let (norms, max) = float32_norms();
                    let mut finder = BlockSearch::new(&again, 0, again.rows, k, |t| f32_bound(t, *max));
                    scan_source(&mut finder, &src, &again, 0, norms, kernel.float32());
                    for (i, &r) in fallback.iter().enumerate() {
                        write(r, finder.exact_top_k(i, again.row(i), &src));
                    }
                    stats.fallback_rows = fallback.len() as u64;
                }
                stats
            })
            .reduce(SearchStats::default, |a, b| a + b)
    });
    Ok((Neighbors { k, distances, indices }, stats))
}

/// Exact kNN followed by a mode vote over the neighbours' labels.
pub fn knn_predict(
    src: Rows<'_>,
    src_labels: &[i64],
    tgt: Rows<'_>,
    k: usize,
    threads: Option<usize>,
) -> Result<Vec<i64>, Error> {
    knn_predict_with(src, src_labels, tgt, k, threads, Kernel::default_for_cpu()?)
}

/// [`knn_predict`] with the kernel chosen by the caller; an error if this CPU cannot run it.
pub fn knn_predict_with(
    src: Rows<'_>,
    src_labels: &[i64],
    tgt: Rows<'_>,
    k: usize,
    threads: Option<usize>,
    kernel: Kernel,
) -> Result<Vec<i64>, Error> {
    if src_labels.len() != src.rows {
        return Err(Error::arg(
            "src_y",
            format!("expected one label per source row ({}), got {}", src.rows, src_labels.len()),
        ));
    }
    let nn = knn_search_with(src, tgt, k, threads, kernel)?;
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
/// The widest panel of any kernel: `BlockSearch::thr32` is padded to whole panels of this width.
const MAX_PANEL: usize = 32;

/// A block size for the fused kernels: whole `panel`-row panels (a partial panel wastes kernel
/// lanes), between half of `block` and `block` rounded up, chosen so the blocks spread most
/// evenly over `threads` workers that each take the next block when free (10000 targets on 2
/// threads, 16-row panels: 208-row blocks split the rows 5008 / 4992, 256-row blocks 5120 / 4880).
fn balanced_block(n_tgt: usize, block: usize, threads: usize, panel: usize) -> usize {
    let threads = threads.max(1);
    let max_panels = block.div_ceil(panel).max(1);
    let mut best = (usize::MAX, max_panels);
    for panels in (max_panels.div_ceil(2)..=max_panels).rev() {
        let size = panels * panel;
        let (full, rest) = (n_tgt / size, (n_tgt % size).next_multiple_of(panel));
        // full blocks go round-robin; the short last one to a least-loaded worker
        let (most, least) = (full.div_ceil(threads) * size, (full / threads) * size);
        let makespan = if full % threads == 0 { least + rest } else { most.max(least + rest) };
        if makespan < best.0 {
            best = (makespan, panels);
        }
    }
    best.1 * panel
}

/// Runs the whole source past one block of targets, leaving the candidates in `finder`.
fn scan_source(finder: &mut BlockSearch, src: &Rows<'_>, tgt: &Rows<'_>, t0: usize, src_norms: &[f32], kernel: Kernel) {
    #[cfg(target_arch = "x86_64")]
    {
        let rows = finder.candidates.len();
        // SAFETY: `kernel` passed `Kernel::require`, so the CPU has the features the kernel needs.
        let done = match kernel {
            Kernel::Avx512 => unsafe {
                avx512::scan(finder, &pack_targets(tgt, t0, rows, kernel.panel()), src, src_norms)
            },
            Kernel::Avx2 => unsafe { avx2::scan(finder, &pack_targets(tgt, t0, rows, kernel.panel()), src, src_norms) },
            // (the bf16 kernels scan through `bf16::scan_block`; here they are never asked)
            Kernel::Portable | Kernel::AmxBf16 | Kernel::Avx512Bf16 => false,
        };
        if done {
            return;
        }
    }
    let _ = kernel;
    for s0 in (0..src.rows).step_by(SOURCE_TILE) {
        let cols = SOURCE_TILE.min(src.rows - s0);
        finder.scan_tile(src, tgt, t0, s0, cols, src_norms);
    }
}

/// The smallest float32 not below `x`, so a float32 comparison never drops what float64 keeps.
fn f32_at_least(x: f64) -> f32 {
    let y = x as f32;
    if (y as f64) < x {
        y.next_up()
    } else {
        y
    }
}

/// Float64 accumulators of the exact sums: independent chains, so the sum runs at the adder's
/// throughput rather than its latency (one chain made the re-rank a tenth of a small search).
const SUM_LANES: usize = 8;

/// `sum(term(x_i, y_i))` in a fixed order: lane `i % 8` accumulates term `i`, then the lanes are
/// added ((0+4)+(2+6)) + ((1+5)+(3+7)). No step is fused, so every CPU gets the same bits (the
/// AVX2 copy below keeps this order) and separate searches can be merged exactly.
#[inline(always)]
fn lane_sum(x: &[f32], y: &[f32], term: impl Fn(f64, f64) -> f64) -> f64 {
    let mut acc = [0f64; SUM_LANES];
    let (xs, ys) = (x.chunks_exact(SUM_LANES), y.chunks_exact(SUM_LANES));
    let (x_rest, y_rest) = (xs.remainder(), ys.remainder());
    for (xc, yc) in xs.zip(ys) {
        for l in 0..SUM_LANES {
            acc[l] += term(xc[l] as f64, yc[l] as f64);
        }
    }
    finish_lanes(acc, x_rest, y_rest, term)
}

/// Adds the remainder terms to their lanes and combines the lanes (the order of [`lane_sum`]).
#[inline(always)]
fn finish_lanes(mut acc: [f64; SUM_LANES], x_rest: &[f32], y_rest: &[f32], term: impl Fn(f64, f64) -> f64) -> f64 {
    for (l, (&a, &b)) in x_rest.iter().zip(y_rest).enumerate() {
        acc[l] += term(a as f64, b as f64);
    }
    let [a0, a1, a2, a3, a4, a5, a6, a7] = acc;
    ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))
}

fn sq_diff(a: f64, b: f64) -> f64 {
    let diff = a - b;
    diff * diff
}

/// [`lane_sum`] of `sq_diff` (or of `x^2` when `square_of_difference` is false) with lanes 0-3
/// and 4-7 in two 256-bit registers: the same operations on the same lanes, so the same bits.
///
/// # Safety
/// The CPU must support AVX2; `y` must be at least as long as `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lane_sum_avx2(x: &[f32], y: &[f32], square_of_difference: bool) -> f64 {
    use std::arch::x86_64::*;
    let whole = x.len() - x.len() % SUM_LANES;
    let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    for i in (0..whole).step_by(SUM_LANES) {
        let xv = _mm256_loadu_ps(x.as_ptr().add(i));
        let (mut dlo, mut dhi) =
            (_mm256_cvtps_pd(_mm256_castps256_ps128(xv)), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(xv)));
        if square_of_difference {
            let yv = _mm256_loadu_ps(y.as_ptr().add(i));
            dlo = _mm256_sub_pd(dlo, _mm256_cvtps_pd(_mm256_castps256_ps128(yv)));
            dhi = _mm256_sub_pd(dhi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(yv)));
        }
        lo = _mm256_add_pd(lo, _mm256_mul_pd(dlo, dlo));
        hi = _mm256_add_pd(hi, _mm256_mul_pd(dhi, dhi));
    }
    let mut acc = [0f64; SUM_LANES];
    _mm256_storeu_pd(acc.as_mut_ptr(), lo);
    _mm256_storeu_pd(acc.as_mut_ptr().add(4), hi);
    if square_of_difference {
        finish_lanes(acc, &x[whole..], &y[whole..x.len()], sq_diff)
    } else {
        finish_lanes(acc, &x[whole..], &x[whole..], |a, _| a * a)
    }
}

fn sum_dispatch(x: &[f32], y: &[f32], square_of_difference: bool) -> f64 {
    let y = &y[..x.len()];
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above) and `y` is as long as `x`.
        return unsafe { lane_sum_avx2(x, y, square_of_difference) };
    }
    if square_of_difference {
        lane_sum(x, y, sq_diff)
    } else {
        lane_sum(x, y, |a, _| a * a)
    }
}

fn sq_norm(x: &[f32]) -> f64 {
    sum_dispatch(x, x, false)
}

fn exact_sq_dist(a: &[f32], b: &[f32]) -> f64 {
    sum_dispatch(a, b, true)
}

/// The exact key neighbours are ranked by (ahead of the source index): the float64 sum, in the
/// fixed order of `lane_sum`, of the squared float64 differences; returned distances are this
/// value rounded to float32. Public so that separate searches (shards of one source set) can be merged by the
/// very same bits; see [`crate::index`].
pub fn exact_distance(a: &[f32], b: &[f32]) -> f64 {
    exact_sq_dist(a, b)
}

/// Candidate bookkeeping for one block of target rows.
struct BlockSearch {
    k: usize,
    dots: Vec<f32>,
    /// Per row: (approximate distance without |t|^2, source index).
    candidates: Vec<Vec<(f32, u32)>>,
    /// Per row: keep a source row when its approximate distance is <= this.
    threshold: Vec<f64>,
    /// `threshold` rounded up to float32, padded with NaN (which passes no test) to whole
    /// `MAX_PANEL`s for the fused kernels.
    thr32: Vec<f32>,
    /// Per row: prune the candidate list when it grows past this.
    prune_at: Vec<usize>,
    /// Per row: the error window 2E.
    window: Vec<f64>,
    /// Per row, when `k <= RUNNING_K`: the k smallest approximate distances pushed so far,
    /// ascending (+inf until k have come), so each push that enters them lowers the threshold
    /// at once instead of at the next prune.
    kbest: Vec<f32>,
}

/// Largest k for which [`BlockSearch`] keeps a running k-best per row: each push that enters it
/// costs an insertion of up to k moves, and such pushes come about k ln(n / k) times per row.
const RUNNING_K: usize = 64;

impl BlockSearch {
    /// Bookkeeping for target rows `t0..t0 + rows`; `error_bound(|t|^2)` bounds the rounding
    /// error of one approximate distance of that row.
    fn new(tgt: &Rows<'_>, t0: usize, rows: usize, k: usize, error_bound: impl Fn(f64) -> f64) -> Self {
        let window = (0..rows).map(|r| 2.0 * error_bound(sq_norm(tgt.row(t0 + r)))).collect();
        BlockSearch::with_windows(k, window)
    }

    /// Bookkeeping for `window.len()` target rows, given each row's window `2E`.
    fn with_windows(k: usize, window: Vec<f64>) -> Self {
        let rows = window.len();
        // Until a row's first prune its threshold is infinite and every source row is pushed; a low
        // trigger ends that phase early (measured: 64 cost about 5% more than 16 at 2000 x 1800).
        let first_prune = (2 * k).max(16);
        let mut thr32 = vec![f32::NAN; rows.next_multiple_of(MAX_PANEL)];
        thr32[..rows].fill(f32::INFINITY);
        BlockSearch {
            k,
            dots: Vec::new(),
            // (not `vec![v; rows]`: a clone of an empty Vec drops its capacity)
            candidates: (0..rows).map(|_| Vec::with_capacity(2 * first_prune + 1)).collect(),
            threshold: vec![f64::INFINITY; rows],
            thr32,
            prune_at: vec![first_prune; rows],
            window,
            kbest: if k <= RUNNING_K { vec![f32::INFINITY; rows * k] } else { Vec::new() },
        }
    }

    /// Records source row `j` (approximate distance `a`) as a candidate of row `r`.
    #[inline]
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn push(&mut self, r: usize, a: f32, j: u32) {
        self.candidates[r].push((a, j));
        let k = self.k;
        if let Some(best) = self.kbest.get_mut(r * k..(r + 1) * k) {
            if a < best[k - 1] {
                // insertion into the ascending k-best from its end (k is small: a loop of moves
                // is cheaper here than a search and a memmove call)
                let mut at = k - 1;
                while at > 0 && best[at - 1] > a {
                    best[at] = best[at - 1];
                    at -= 1;
                }
                best[at] = a;
                if best[k - 1] < f32::INFINITY {
                    // the same threshold a prune would set now: the k-th smallest plus 2E
                    let thr = best[k - 1] as f64 + self.window[r];
                    self.threshold[r] = thr;
                    self.thr32[r] = f32_at_least(thr);
                }
            }
        }
        if self.candidates[r].len() > self.prune_at[r] {
            self.prune(r);
        }
    }

    fn scan_tile(&mut self, src: &Rows<'_>, tgt: &Rows<'_>, t0: usize, s0: usize, cols: usize, src_norms: &[f32]) {
        let rows = self.candidates.len();
        let d = src.cols;
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
        if self.kbest.get(r * k + k - 1).is_some_and(|&kth| kth < f32::INFINITY) {
            // the running k-best has set the threshold already (see `push`)
            let thr = self.threshold[r];
            cands.retain(|c| (c.0 as f64) <= thr);
        } else if cands.len() >= k {
            let (_, kth, _) = cands.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
            let thr = kth.0 as f64 + self.window[r];
            self.threshold[r] = thr;
            self.thr32[r] = f32_at_least(thr);
            cands.retain(|c| (c.0 as f64) <= thr);
        }
        // Many near-ties can keep the list long; double the trigger so pruning stays amortised O(1).
        self.prune_at[r] = self.prune_at[r].max(2 * cands.len());
    }

    /// The k nearest by exact distance among the surviving candidates, ordered by (distance, index).
    fn exact_top_k(&mut self, r: usize, t: &[f32], src: &Rows<'_>) -> Vec<(f64, usize)> {
        self.prune(r);
        let mut exact: Vec<(f64, usize)> =
            self.candidates[r].iter().map(|&(_, j)| (exact_sq_dist(t, src.row(j as usize)), j as usize)).collect();
        exact.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        exact.truncate(self.k);
        exact
    }
}

/// Sixteen floats on one cache line: the unit of the packed target panels.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Line([f32; 16]);

/// Packs target rows `t0..t0 + rows` into `ceil(rows / panel)` panels of `d` depth steps each
/// (`panel` a multiple of 16): step `kk` of panel `p` holds column `kk` of rows
/// `panel * p..panel * (p + 1)`, so one depth step is `panel / 16` aligned vector loads. Missing
/// rows are zero.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn pack_targets(tgt: &Rows<'_>, t0: usize, rows: usize, panel: usize) -> Vec<Line> {
    let d = tgt.cols;
    let lines = panel / 16;
    let mut packed = vec![Line([0.0; 16]); rows.div_ceil(panel) * d * lines];
    for r in 0..rows {
        let (p, lane) = (r / panel, r % panel);
        let steps = &mut packed[p * d * lines..(p + 1) * d * lines];
        for (kk, &v) in tgt.row(t0 + r).iter().enumerate() {
            steps[kk * lines + lane / 16].0[lane % 16] = v;
        }
    }
    packed
}

/// The AVX2+FMA kernel with the threshold test fused in (see the module doc).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{push_hits, BlockSearch, Line, Rows};

    /// Target rows per packed panel: two 8-lane registers.
    const SIMD_PANEL: usize = 16;
    /// Source rows per micro-tile: 6 x 2 accumulators + 2 panel loads + 1 broadcast = 15 ymm.
    const MR: usize = 6;

    /// Runs every source row past the packed targets of `finder`'s block. Returns false, having
    /// done nothing, when the buffers do not match the shapes (a bug; the caller falls back).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA. `packed` must come from [`pack_targets`] for this
    /// block (`finder.candidates.len()` rows of `src.cols` columns), and `src_norms` must hold
    /// one norm per source row.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scan(finder: &mut BlockSearch, packed: &[Line], src: &Rows<'_>, src_norms: &[f32]) -> bool {
        let d = src.cols;
        let n_src = src.rows;
        let panels = finder.candidates.len().div_ceil(SIMD_PANEL);
        if d == 0
            || packed.len() != panels * d
            || src_norms.len() != n_src
            || src.data.len() != n_src * d
            || finder.thr32.len() < panels * SIMD_PANEL
        {
            return false;
        }
        let base = src.data.as_ptr();
        let two = _mm256_set1_ps(2.0);
        for s in (0..n_src).step_by(MR) {
            // A short last group repeats row s (always valid) and gets NaN norms: NaN <= x is false.
            let mut rows = [base.add(s * d); MR];
            let mut norms = [f32::NAN; MR];
            for i in 0..MR.min(n_src - s) {
                rows[i] = base.add((s + i) * d);
                norms[i] = src_norms[s + i];
            }
            for p in 0..panels {
                let mut a = packed.as_ptr().add(p * d) as *const f32;
                let mut c = [_mm256_setzero_ps(); 2 * MR];
                for kk in 0..d {
                    let lo = _mm256_load_ps(a);
                    let hi = _mm256_load_ps(a.add(8));
                    for i in 0..MR {
                        let x = _mm256_broadcast_ss(&*rows[i].add(kk));
                        c[2 * i] = _mm256_fmadd_ps(x, lo, c[2 * i]);
                        c[2 * i + 1] = _mm256_fmadd_ps(x, hi, c[2 * i + 1]);
                    }
                    a = a.add(SIMD_PANEL);
                }
                // approx = |s|^2 - 2 t.s (2 t.s is exact, so one rounding, as in the scalar scan).
                // One test for the whole tile: a lane of some row passes iff the lane's minimum
                // over the rows does. min_ps(a, m) gives m when a is NaN, and m starts at +inf,
                // so NaN rows (the padding) drop out without poisoning the minimum.
                for i in 0..MR {
                    let norm = _mm256_set1_ps(norms[i]);
                    c[2 * i] = _mm256_fnmadd_ps(two, c[2 * i], norm);
                    c[2 * i + 1] = _mm256_fnmadd_ps(two, c[2 * i + 1], norm);
                }
                let (mut min_lo, mut min_hi) = (_mm256_set1_ps(f32::INFINITY), _mm256_set1_ps(f32::INFINITY));
                for i in 0..MR {
                    min_lo = _mm256_min_ps(c[2 * i], min_lo);
                    min_hi = _mm256_min_ps(c[2 * i + 1], min_hi);
                }
                let thr = finder.thr32.as_ptr().add(p * SIMD_PANEL);
                let hit_lo = _mm256_cmp_ps::<_CMP_LE_OQ>(min_lo, _mm256_loadu_ps(thr));
                let hit_hi = _mm256_cmp_ps::<_CMP_LE_OQ>(min_hi, _mm256_loadu_ps(thr.add(8)));
                if _mm256_movemask_ps(_mm256_or_ps(hit_lo, hit_hi)) != 0 {
                    let mut approx = [0f32; 2 * MR * 8];
                    for (i, v) in c.iter().enumerate() {
                        _mm256_storeu_ps(approx.as_mut_ptr().add(8 * i), *v);
                    }
                    push_hits(finder, p * SIMD_PANEL, &approx, SIMD_PANEL, s, n_src);
                }
            }
        }
        true
    }
}

/// Pushes every (target row `r0 + lane`, source row `s + i`) of a fused kernel's tile whose
/// approximate distance `approx[panel * i + lane]` passes the row's current threshold.
#[cold]
#[inline(never)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn push_hits(finder: &mut BlockSearch, r0: usize, approx: &[f32], panel: usize, s: usize, n_src: usize) {
    let lanes = panel.min(finder.candidates.len().saturating_sub(r0));
    for (i, row) in approx.chunks_exact(panel).enumerate().take(n_src.saturating_sub(s)) {
        for (lane, &a) in row.iter().enumerate().take(lanes) {
            // read afresh: a push may have pruned and lowered the threshold
            if a <= finder.thr32[r0 + lane] {
                finder.push(r0 + lane, a, (s + i) as u32);
            }
        }
    }
}

/// The AVX-512 kernel: the AVX2 kernel's design at twice the width (see the module doc).
#[cfg(target_arch = "x86_64")]
// The register tile is indexed like the maths, c[i][j]: source row i, target vector j.
#[allow(clippy::needless_range_loop)]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BlockSearch, Line, Rows};

    /// Registers per target panel step (16 lanes each).
    const NV: usize = 2;
    /// Target rows per packed panel.
    const PANEL: usize = 16 * NV;
    /// Source rows per micro-tile: 14 x 2 accumulators + 2 panel loads = 30 of the 32 zmm
    /// registers; the source values are broadcast straight from memory.
    const MR: usize = 14;

    /// Runs every source row past the packed targets of `finder`'s block. Returns false, having
    /// done nothing, when the buffers do not match the shapes (a bug; the caller falls back).
    ///
    /// # Safety
    /// The CPU must support AVX-512F. `packed` must come from [`super::pack_targets`] with a
    /// panel of 32 for this block (`finder.candidates.len()` rows of `src.cols` columns), and
    /// `src_norms` must hold one norm per source row.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scan(finder: &mut BlockSearch, packed: &[Line], src: &Rows<'_>, src_norms: &[f32]) -> bool {
        let d = src.cols;
        let n_src = src.rows;
        let panels = finder.candidates.len().div_ceil(PANEL);
        if d == 0
            || packed.len() != panels * d * NV
            || src_norms.len() != n_src
            || src.data.len() != n_src * d
            || finder.thr32.len() < panels * PANEL
        {
            return false;
        }
        // The short last group of source rows runs from a zero-padded copy, so the hot loop
        // addresses every group's rows as base + i * d; the padding rows get NaN norms
        // (NaN <= x is false).
        let full = n_src - n_src % MR;
        let mut tail = vec![0f32; if full < n_src { MR * d } else { 0 }];
        tail[..(n_src - full) * d].copy_from_slice(&src.data[full * d..]);
        let two = _mm512_set1_ps(2.0);
        let mut approx = [0f32; MR * PANEL];
        for s in (0..n_src).step_by(MR) {
            let base = if s < full { src.data.as_ptr().add(s * d) } else { tail.as_ptr() };
            let mut norms = [f32::NAN; MR];
            norms[..MR.min(n_src - s)].copy_from_slice(&src_norms[s..(s + MR).min(n_src)]);
            for p in 0..panels {
                let mut a = packed.as_ptr().add(p * d * NV) as *const f32;
                let mut b = base;
                let mut c = [[_mm512_setzero_ps(); NV]; MR];
                for _ in 0..d {
                    let mut t = [_mm512_setzero_ps(); NV];
                    for j in 0..NV {
                        t[j] = _mm512_load_ps(a.add(16 * j));
                    }
                    for i in 0..MR {
                        let x = _mm512_set1_ps(*b.add(i * d));
                        for j in 0..NV {
                            c[i][j] = _mm512_fmadd_ps(x, t[j], c[i][j]);
                        }
                    }
                    a = a.add(PANEL);
                    b = b.add(1);
                }
                // approx = |s|^2 - 2 t.s, then one test for the tile through the lane minimum
                // (see the AVX2 kernel).
                let mut min = [_mm512_set1_ps(f32::INFINITY); NV];
                for i in 0..MR {
                    let norm = _mm512_set1_ps(norms[i]);
                    for j in 0..NV {
                        c[i][j] = _mm512_fnmadd_ps(two, c[i][j], norm);
                        min[j] = _mm512_min_ps(c[i][j], min[j]);
                    }
                }
                let thr = finder.thr32.as_ptr().add(p * PANEL);
                let mut hit: __mmask16 = 0;
                for j in 0..NV {
                    hit |= _mm512_cmp_ps_mask::<_CMP_LE_OQ>(min[j], _mm512_loadu_ps(thr.add(16 * j)));
                }
                if hit != 0 {
                    for i in 0..MR {
                        for j in 0..NV {
                            _mm512_storeu_ps(approx.as_mut_ptr().add(PANEL * i + 16 * j), c[i][j]);
                        }
                    }
                    push_hits_masked(finder, p * PANEL, &approx, s);
                }
            }
        }
        true
    }

    /// [`push_hits`] for the AVX-512 kernel: one masked compare finds the passing lanes of 16
    /// target rows, so a tile with a single hit costs a few instructions rather than a scalar
    /// test of each of its pairs. Padding (rows past the source, lanes past the block) is NaN in
    /// `approx` or in the thresholds, and never passes.
    #[cold]
    #[inline(never)]
    #[target_feature(enable = "avx512f")]
    unsafe fn push_hits_masked(finder: &mut BlockSearch, r0: usize, approx: &[f32; MR * PANEL], s: usize) {
        for (i, row) in approx.chunks_exact(PANEL).enumerate() {
            for (j, chunk) in row.chunks_exact(16).enumerate() {
                let lane0 = r0 + 16 * j;
                let thr = _mm512_loadu_ps(finder.thr32.as_ptr().add(lane0));
                let mut hits = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(_mm512_loadu_ps(chunk.as_ptr()), thr);
                while hits != 0 {
                    let lane = hits.trailing_zeros() as usize;
                    hits &= hits - 1;
                    // read afresh: a push may have pruned and lowered the threshold
                    if chunk[lane] <= finder.thr32[lane0 + lane] {
                        finder.push(lane0 + lane, chunk[lane], (s + i) as u32);
                    }
                }
            }
        }
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
    fn exact_sums_have_the_same_bits_on_every_path() {
        // Values spread over many magnitudes, so any change of summation order shows in the bits.
        let mut s = 7u64;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let m = ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
            m * 10f32.powi(((s >> 20) % 9) as i32 - 4)
        };
        for n in 0..70 {
            let x: Vec<f32> = (0..n).map(|_| next()).collect();
            let y: Vec<f32> = (0..n).map(|_| next()).collect();
            assert_eq!(exact_sq_dist(&x, &y).to_bits(), lane_sum(&x, &y, sq_diff).to_bits(), "n = {n}");
            assert_eq!(sq_norm(&x).to_bits(), lane_sum(&x, &x, |a, _| a * a).to_bits(), "n = {n}");
            let serial: f64 = x.iter().zip(&y).map(|(&a, &b)| sq_diff(a as f64, b as f64)).sum();
            assert!((exact_sq_dist(&x, &y) - serial).abs() <= 1e-12 * serial.max(1e-300), "n = {n}");
        }
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

    /// Checks every kernel this CPU runs against brute force: indices and distances.
    fn check_both_paths(src: &[f32], tgt: &[f32], d: usize, k: usize, threads: Option<usize>) {
        let (n_src, n_tgt) = (src.len() / d, tgt.len() / d);
        let want = brute(src, tgt, d, k);
        let mut results = Vec::new();
        for kernel in Kernel::available() {
            let got = knn_search_with(
                Rows::new("src_emb", src, n_src, d).unwrap(),
                Rows::new("tgt_emb", tgt, n_tgt, d).unwrap(),
                k,
                threads,
                kernel,
            )
            .unwrap();
            for (i, w) in want.iter().enumerate() {
                let g: Vec<usize> = got.indices[i * k..(i + 1) * k].iter().map(|&j| j as usize).collect();
                assert_eq!(&g, w, "row {i}, k {k}, d {d}, n_src {n_src}, kernel {kernel:?}");
                let t = &tgt[i * d..(i + 1) * d];
                for (slot, &j) in w.iter().enumerate() {
                    let exact = exact_sq_dist(t, &src[j * d..(j + 1) * d]) as f32;
                    assert_eq!(got.distances[i * k + slot], exact, "row {i}, slot {slot}, kernel {kernel:?}");
                }
            }
            results.push(got);
        }
        for r in &results[1..] {
            assert_eq!(&results[0], r);
        }
    }

    /// Pseudo-random floats in [-1, 1).
    fn lcg_floats(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32) / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn simd_and_fallback_match_brute_force_on_awkward_shapes() {
        // n_src not a multiple of 6 or 16, n_tgt not a multiple of 6 or 16, odd depths
        for &d in &[1usize, 3, 17, 256] {
            for &(n_src, n_tgt) in &[(1usize, 1usize), (5, 7), (37, 23), (601, 45)] {
                let src = lcg_floats(n_src * d, (d * 1000 + n_src) as u64);
                let tgt = lcg_floats(n_tgt * d, (d * 7 + n_tgt) as u64);
                for k in [1, 2.min(n_src), n_src] {
                    check_both_paths(&src, &tgt, d, k, Some(2));
                }
            }
        }
    }

    #[test]
    fn simd_and_fallback_match_brute_force_with_many_ties() {
        for &d in &[1usize, 3, 17, 256] {
            let (n_src, n_tgt) = (1003, 101);
            let src = lcg_ints(n_src * d, d as u64, 3);
            let tgt = lcg_ints(n_tgt * d, d as u64 + 100, 3);
            for k in [1, 5, 70] {
                check_both_paths(&src, &tgt, d, k, Some(2));
            }
        }
        // every source row identical: all distances tie, order is by index
        let d = 5;
        let src = vec![2.0f32; 203 * d];
        let tgt = lcg_ints(13 * d, 9, 4);
        for k in [1, 17, 203] {
            check_both_paths(&src, &tgt, d, k, Some(1));
        }
    }

    #[test]
    fn simd_and_fallback_exact_with_large_offsets() {
        for &d in &[1usize, 3, 17, 256] {
            let (n_src, n_tgt) = (777, 31);
            let src: Vec<f32> = lcg_floats(n_src * d, 5 + d as u64).iter().map(|v| 1000.0 + 0.01 * v).collect();
            let tgt: Vec<f32> = lcg_floats(n_tgt * d, 6 + d as u64).iter().map(|v| 1000.0 + 0.01 * v).collect();
            for k in [1, 4, n_src] {
                check_both_paths(&src, &tgt, d, k, Some(2));
            }
        }
    }

    #[test]
    fn simd_and_fallback_agree_across_thread_counts() {
        let (n_src, n_tgt, d) = (3001, 517, 33);
        let src = lcg_floats(n_src * d, 11);
        let tgt = lcg_floats(n_tgt * d, 12);
        for threads in [Some(1), Some(2), Some(3)] {
            check_both_paths(&src, &tgt, d, 10, threads);
        }
    }

    /// Rows built so that bf16 arithmetic cannot see the difference between neighbours: tight
    /// clusters of copies that differ by a few float32 ulps in a few columns (so the hi + lo
    /// split rounds them alike), around centres far from the origin, with duplicates.
    fn near_tie_clusters(n_src: usize, n_tgt: usize, d: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let centres = lcg_floats(8 * d, seed).iter().map(|v| 50.0 + 10.0 * v).collect::<Vec<f32>>();
        let noise = lcg_ints(n_src * d + n_tgt * d, seed + 1, 7);
        let pick = lcg_ints(n_src + n_tgt, seed + 2, 8);
        let row = |i: usize, out: &mut Vec<f32>| {
            let c = &centres[pick[i] as usize * d..(pick[i] as usize + 1) * d];
            for (col, &v) in c.iter().enumerate() {
                // one column of four moved: by a few float32 ulps (below bf16's resolution) in
                // odd rows, by up to 3/8 of a bf16 ulp in even rows (so bf16 rounds neighbours
                // apart in either direction); the rest exact copies
                let step = if i.is_multiple_of(2) { 1 << 13 } else { 1 };
                let ulps = if col % 4 == i % 4 { (noise[i * d + col] as i32 - 3) * step } else { 0 };
                out.push(f32::from_bits((v.to_bits() as i32 + ulps) as u32));
            }
        };
        let (mut src, mut tgt) = (Vec::new(), Vec::new());
        (0..n_src).for_each(|i| row(i, &mut src));
        (n_src..n_src + n_tgt).for_each(|i| row(i, &mut tgt));
        (src, tgt)
    }

    /// The bf16 (hi only) distance, as one bf16 rounding of each side would give it.
    fn bf16_only_distance(t: &[f32], s: &[f32]) -> f64 {
        let r = |v: f32| f32::from_bits((v.to_bits() + 0x7FFF + ((v.to_bits() >> 16) & 1)) & 0xFFFF_0000) as f64;
        t.iter().zip(s).map(|(&a, &b)| (r(a) - r(b)).powi(2)).sum()
    }

    #[test]
    fn every_kernel_exact_where_bf16_rounding_reorders_neighbours() {
        for &d in &[3usize, 16, 64] {
            let (src, tgt) = near_tie_clusters(1500, 60, d, d as u64);
            // The data is adversarial: plain bf16 rounding ranks some true neighbours wrongly.
            let want = brute(&src, &tgt, d, 5);
            let swapped = want.iter().enumerate().any(|(i, w)| {
                let t = &tgt[i * d..(i + 1) * d];
                w.windows(2).any(|p| {
                    let (a, b) = (&src[p[0] * d..(p[0] + 1) * d], &src[p[1] * d..(p[1] + 1) * d]);
                    exact_sq_dist(t, a) < exact_sq_dist(t, b) && bf16_only_distance(t, a) > bf16_only_distance(t, b)
                })
            });
            assert!(swapped || d == 3, "d {d}: no neighbour pair that bf16 rounding reorders");
            for k in [1, 5, 40] {
                check_both_paths(&src, &tgt, d, k, Some(2));
            }
        }
    }

    #[test]
    fn every_kernel_exact_on_duplicates_and_extreme_magnitudes() {
        let d = 24;
        let base = lcg_floats(300 * d, 21);
        // duplicates: every source row three times, so ties go by index
        let src: Vec<f32> = base.chunks(d).flat_map(|r| r.iter().chain(r).chain(r)).copied().collect();
        let tgt = lcg_floats(50 * d, 22);
        check_both_paths(&src, &tgt, d, 7, Some(2));
        // huge: near the largest accepted magnitude, spread small against the offset
        let limit = (f32::MAX as f64 / (8.0 * d as f64)).sqrt() as f32;
        let huge = |v: &f32| 0.5 * limit + 0.01 * limit * v;
        check_both_paths(
            &src.iter().map(huge).collect::<Vec<_>>(),
            &tgt.iter().map(huge).collect::<Vec<_>>(),
            d,
            4,
            Some(2),
        );
        // tiny: squared distances in float32's subnormal range
        let tiny = |v: &f32| 1e-21 * v;
        check_both_paths(
            &src.iter().map(tiny).collect::<Vec<_>>(),
            &tgt.iter().map(tiny).collect::<Vec<_>>(),
            d,
            4,
            Some(2),
        );
    }

    #[test]
    fn bf16_rows_that_overflow_fall_back_and_stay_exact() {
        let d = 16;
        let bf16: Vec<Kernel> = Kernel::available().into_iter().filter(|k| k.is_bf16()).collect();
        let (src, tgt) = (lcg_floats(1300 * d, 31), lcg_floats(77 * d, 32));
        let s = Rows::new("src_emb", &src, 1300, d).unwrap();
        let t = Rows::new("tgt_emb", &tgt, 77, d).unwrap();
        let want = knn_search_with(s, t, 6, Some(2), Kernel::Portable).unwrap();
        for &kernel in &bf16 {
            // Normal data: a handful of candidates per row, no fallback.
            let (got, stats) = search(s, t, 6, Some(2), kernel, None).unwrap();
            assert_eq!(got, want, "{kernel:?}");
            assert_eq!((stats.rows, stats.fallback_rows), (77, 0), "{kernel:?}");
            assert!(stats.candidates >= 77 * 6 && stats.candidates < 77 * 40, "{kernel:?}: {stats:?}");
            // A cap of zero: every row through the float32 kernel, the same answer.
            let (got, stats) = search(s, t, 6, Some(2), kernel, Some(0)).unwrap();
            assert_eq!(got, want, "{kernel:?}");
            assert_eq!(stats.fallback_rows, 77, "{kernel:?}");
        }
        // Tiny values: the bound's absolute floor makes every source row a candidate, more than
        // the cap (1024), so every row falls back on its own.
        let (src, tgt) =
            (src.iter().map(|v| 1e-25 * v).collect::<Vec<_>>(), tgt.iter().map(|v| 1e-25 * v).collect::<Vec<_>>());
        let s = Rows::new("src_emb", &src, 1300, d).unwrap();
        let t = Rows::new("tgt_emb", &tgt, 77, d).unwrap();
        let want = knn_search_with(s, t, 6, Some(2), Kernel::Portable).unwrap();
        for &kernel in &bf16 {
            let (got, stats) = search(s, t, 6, Some(2), kernel, None).unwrap();
            assert_eq!(got, want, "{kernel:?}");
            assert_eq!(stats.fallback_rows, 77, "{kernel:?}");
        }
    }

    #[test]
    fn sources_past_the_bf16_limit_take_the_float32_kernel() {
        let d = 64;
        let rows = BF16_SOURCE_LIMIT / (4 * d) + 1;
        let src = lcg_floats(rows * d, 41);
        let tgt = lcg_floats(3 * d, 42);
        let s = Rows::new("src_emb", &src, rows, d).unwrap();
        let t = Rows::new("tgt_emb", &tgt, 3, d).unwrap();
        let small = Rows::new("src_emb", &src[..(rows - 1) * d], rows - 1, d).unwrap();
        for kernel in Kernel::available().into_iter().filter(|k| k.is_bf16()) {
            let (got, stats) = search(s, t, 2, Some(2), kernel, None).unwrap();
            assert_eq!(stats, SearchStats::default(), "{kernel:?}: no bf16 pass over {rows} rows");
            assert_eq!(got, knn_search_with(s, t, 2, Some(2), Kernel::Portable).unwrap());
            assert_eq!(search(small, t, 2, Some(2), kernel, None).unwrap().1.rows, 3, "{kernel:?} at the limit");
        }
    }

    #[test]
    fn kernel_names_round_trip_and_portable_always_runs() {
        for kernel in Kernel::ALL {
            assert_eq!(Kernel::parse("kernel", kernel.name()), Ok(kernel));
        }
        assert!(matches!(Kernel::parse("kernel", "sse2"), Err(Error::InvalidArgument { arg: "kernel", .. })));
        assert_eq!(Kernel::available().last(), Some(&Kernel::Portable));
        assert_eq!(Kernel::Portable.require("kernel"), Ok(Kernel::Portable));
    }

    #[test]
    fn balanced_block_is_whole_panels_and_in_range() {
        assert_eq!(balanced_block(10000, 256, 2, 16), 208);
        for panel in [16, 32] {
            for n_tgt in [1usize, 7, 16, 100, 999, 10000, 123457] {
                for threads in [1usize, 2, 3, 8, 64] {
                    let block = TARGET_BLOCK.min(n_tgt.div_ceil(threads * 4)).max(8);
                    let b = balanced_block(n_tgt, block, threads, panel);
                    assert_eq!(b % panel, 0);
                    assert!(b >= block / 2 && b <= block.next_multiple_of(panel), "{n_tgt} {threads} {block} {b}");
                }
            }
        }
    }

    /// The figure behind the module's speed claim (faiss-cpu IndexFlatL2 took about 2.05 s for
    /// this on the 2-core AVX2 reference machine). Run with
    /// `cargo test -p madda-core --release -- --ignored --nocapture timing`.
    #[test]
    #[ignore]
    fn timing_60000x10000x256() {
        time_both_paths(60000, 10000, 256, 5, &[2]);
    }

    /// The small size of the benchmarks, where fixed costs show.
    #[test]
    #[ignore]
    fn timing_2000x1800x256() {
        for _ in 0..20 {
            time_both_paths(2000, 1800, 256, 5, &[2]);
        }
    }

    /// Deep rows: the kernel does not block the depth, so its panels leave L1; check it still
    /// keeps up with the `gemm` crate.
    #[test]
    #[ignore]
    fn timing_deep_rows_20000x2000x2048() {
        time_both_paths(20000, 2000, 2048, 5, &[1]);
    }

    fn time_both_paths(n_src: usize, n_tgt: usize, d: usize, k: usize, thread_counts: &[usize]) {
        let src = lcg_floats(n_src * d, 1);
        let tgt = lcg_floats(n_tgt * d, 2);
        let s = Rows::new("src_emb", &src, n_src, d).unwrap();
        let t = Rows::new("tgt_emb", &tgt, n_tgt, d).unwrap();
        let mut reference: Option<Neighbors> = None;
        // MADDA_KNN_KERNEL times one kernel only
        let kernels = match std::env::var(KERNEL_ENV) {
            Ok(_) => vec![Kernel::default_for_cpu().unwrap()],
            Err(_) => Kernel::available(),
        };
        for &threads in thread_counts {
            for &kernel in &kernels {
                let mut best = f64::INFINITY;
                let mut stats = SearchStats::default();
                for _ in 0..3 {
                    let start = std::time::Instant::now();
                    let (got, st) = knn_search_counted(s, t, k, Some(threads), kernel).unwrap();
                    best = best.min(start.elapsed().as_secs_f64());
                    stats = st;
                    match &reference {
                        Some(r) => assert_eq!(r, &got),
                        None => reference = Some(got),
                    }
                }
                let gflops = 2.0 * (n_src * n_tgt * d) as f64 / best / 1e9;
                println!(
                    "{n_src}x{n_tgt}x{d} k={k}, {threads} thread(s), {} kernel: {best:.3} s (best of 3), {gflops:.0} GFLOP/s, {stats:?}",
                    kernel.name()
                );
            }
        }
    }

    #[test]
    fn magnitudes_that_overflow_float32_are_refused() {
        // Too large: squared distances would overflow float32, so the input is refused.
        let err = Rows::new("src_emb", &[1e19, 0.0], 1, 2).unwrap_err();
        assert!(err.to_string().contains("rescale"), "{err}");
        // (Tiny values are covered by tests/test_knn.py::test_tiny_magnitudes_exact.)
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
        let pred =
            knn_predict(Rows::new("s", &src, 5, 1).unwrap(), &labels, Rows::new("t", &tgt, 2, 1).unwrap(), 3, None)
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
