//! The bfloat16 candidate pass: the same kNN contract as the float32 kernels, found with
//! bf16 products.
//!
//! Contract: a bf16 kernel returns exactly what the portable kernel returns (same neighbours,
//! same float32 distances, same order and tie rule, same vote). The bf16 arithmetic only chooses
//! which source rows are re-ranked with the exact float64 distance; a row whose candidates
//! overflow [`fallback_cap`] is searched again by the float32 kernel, and counted
//! ([`super::SearchStats::fallback_rows`]).
//!
//! How: both sides are centred by the source mean `mu` (distances do not change; the error bound
//! below scales with the norms, and centring makes them the spread of the data rather than its
//! offset from the origin). Each centred value `c` (float32) is split into two bf16 numbers,
//! `hi = bf16(c)` and `lo = bf16(c - hi)`, so `hi + lo` holds 16 significant bits. With
//! `x = t - mu`, `y = s - mu`, the kernel forms `x.y ~ xh.yh + xh.yl + xl.yh` as one bf16 dot
//! product of depth `3d` with float32 accumulation (AVX512-BF16 `vdpbf16ps`, or AMX
//! `tdpbf16ps` on 16 x 16 tiles), then `a = |y|^2 - 2 x.y`, which ranks as `|x - y|^2`.
//! Candidates are kept exactly as in the float32 scan: every source row whose `a` is within
//! `2E` of the row's running k-th `a`, `E` bounding `|a - a_exact|`.
//!
//! The bound `E` of one pair (u = 2^-8, bf16's unit roundoff; v = 2^-24, float32's; m = 2^-126,
//! the smallest normal float32, below which bf16 hardware flushes inputs, products and sums):
//! * representation: the centred float32 value `c` is within `v|c|` of `t - mu`. With
//!   `2^e <= |c|`, `hi` is `c` to 8 significant bits, so `r = c - hi` has `|r| <= 2^(e-8)`
//!   (half an ulp of `hi`), and `lo` is `r` to 8 bits: `r` is `+-2^(e-8)` itself (exact) or lies
//!   below it, in binades whose half ulp is at most `2^(e-17)`. So `hi + lo` is within
//!   `u^2 |c| / 2 + m` of `c` (`lo` flushed to 0 when subnormal), and each element within
//!   `s|x_i| + m` of the truth, `s = u^2 / 2 + 2v`; over the dot product that is at most
//!   `(2s + s^2) sum|x_i y_i| + m (1 + s)(|x|_1 + |y|_1) + d m^2`;
//! * the dropped term `xl.yl`: `|lo| <= 2^(e-8) <= u|c|`, so at most `1.001 u^2 sum|x_i y_i|`;
//! * the float32 accumulation of the `n = 6 ceil(d / 2)` bf16 products that are not padding
//!   (padding adds exact zeros; RNE per Intel's documentation of both instructions, in an order
//!   it does not fix): `gamma_n` times the sum of their magnitudes (`<= 1.02 sum|x_i y_i|`),
//!   `gamma_n = n v / (1 - n v)`, plus `m` for each of the `2n` products and sums that may be
//!   flushed;
//! * `sum|x_i y_i| <= |x| |y|` and `|x|_1 <= sqrt(d) |x|`; `|y| <= Y`, the largest source norm;
//! * `a = N - 2 dot` with `N = f32(|y|^2)` (a float64 sum rounded: `<= 2^-22 Y^2`) and one
//!   fused multiply-add (`<= v (Y^2 + 2 |x| Y)` after the others).
//!
//! `E` is this sum times `1 + 2^-20`, a margin for the float64 arithmetic that evaluates it
//! (a few float64 roundings, each `2^-53`). The bound is within a factor of 2 of the worst case:
//! `tests::error_bound_holds_where_rounding_errors_add_up` builds rows whose approximate
//! distances are more than `E / 2` off. If the true k nearest are `j_1..j_k` (by exact distance,
//! then index), each has
//! `a <= a_exact + E <= a_exact(j_k) + E`, and the running k-th `a` is at least
//! `a_exact(j_k) - E` from the moment k rows have been seen, so no true neighbour is ever
//! outside the window: the candidates contain them, and the exact float64 re-rank of
//! [`super::BlockSearch::exact_top_k`] decides as the float32 path does.
//!
//! Kernels (x86-64 only; [`super::Kernel`] picks at run time): AVX512-BF16 broadcasts target
//! pairs against 32 source rows held as two 16-lane vectors (14 x 2 accumulators); AMX loads
//! 16 x 32 target and 32 x 16 source tiles and accumulates a 32 x 32 block in four tile
//! registers, through inline assembly (Rust has no stable AMX intrinsics), after asking Linux
//! for the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`). Both keep the source in one packed
//! copy shared by every thread (`2d` bf16 per row: as many bytes as the float32 rows).

// The kernels are x86-64 only; elsewhere the packing and bound are compiled but never run.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use super::{BlockSearch, Kernel, Rows};

/// bf16 unit roundoff.
const U: f64 = 1.0 / 256.0;
/// float32 unit roundoff.
const V: f64 = 1.0 / 16_777_216.0;
/// Source rows per packed group (one 16-lane vector, one AMX tile's columns).
pub(super) const GROUP: usize = 16;
/// Depth pairs per chunk (one AMX tile row of 32 bf16); the packed depth is a whole number of chunks.
pub(super) const CHUNK_PAIRS: usize = 16;

/// Candidates a row may keep before the float32 kernel searches it again: more than this many
/// near-ties within the bf16 window cost more to re-rank than a float32 scan of the row.
pub(super) fn fallback_cap(k: usize, n_src: usize) -> usize {
    (8 * k).max(1024).max(n_src / 16)
}

/// `x` rounded to the nearest bf16 (ties to even), as the top 16 bits of a float32; values
/// below the smallest normal become zero, as bf16 hardware would read them.
#[inline(always)]
fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    // finite inputs only (checked by `Rows::new`), so no NaN care is needed; branch-free, so
    // the packing loops vectorise
    let rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
    if x.abs() < f32::MIN_POSITIVE {
        0
    } else {
        rounded
    }
}

fn bf16_value(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// The (hi, lo) bf16 pair of `c`: `hi + lo` is within `u^2 |c| / 2 + m` of `c`.
#[inline(always)]
fn split(c: f32) -> (u16, u16) {
    let hi = bf16_bits(c);
    // exact: hi is c rounded to 8 significant bits, so c - hi fits in float32
    (hi, bf16_bits(c - bf16_value(hi)))
}

/// Two bf16 values as one 32-bit lane of `vdpbf16ps`/`tdpbf16ps`: the even depth in the low half.
fn pair(even: u16, odd: u16) -> u32 {
    even as u32 | (odd as u32) << 16
}

/// The source, prepared once per search and shared by every thread.
pub(super) struct Source {
    /// The source mean (float32), subtracted from both sides.
    pub mean: Vec<f32>,
    /// `f32(|s_j - mu|^2)`, NaN past the last row (padding never passes a threshold).
    pub norms: Vec<f32>,
    /// `Y`: an upper bound on every `|s_j - mu|`.
    pub max_norm: f64,
    /// Depth pairs per segment (hi or lo), padded to whole chunks.
    pub pairs: usize,
    /// Groups of 16 rows: `[group][segment hi, lo][pair][16 lanes]`, zero past the last row.
    pub packed: Vec<u32>,
}

/// One row centred and split: `hi[i] + lo[i]` approximates `row[i] - mean[i]` (each centred value
/// rounded once from float64 to float32, then split); slices past the row's length stay zero.
/// Returns the squared norm of the centred float32 row.
fn centre_split(row: &[f32], mean: &[f32], c: &mut [f32], hi: &mut [u16], lo: &mut [u16]) -> f64 {
    let d = row.len();
    for ((o, &v), &m) in c[..d].iter_mut().zip(row).zip(mean) {
        *o = (v as f64 - m as f64) as f32;
    }
    for ((&v, h), l) in c[..d].iter().zip(&mut hi[..d]).zip(&mut lo[..d]) {
        (*h, *l) = split(v);
    }
    super::sq_norm(&c[..d])
}

/// Inflates a float64 norm computed from centred float32 values to bound the exact one.
fn norm_bound(sq: f64) -> f64 {
    sq.sqrt() * (1.0 + 1e-6)
}

impl Source {
    pub(super) fn new(src: &Rows<'_>, pool: &rayon::ThreadPool) -> Self {
        use rayon::prelude::*;
        let d = src.cols;
        let pairs = d.div_ceil(2).next_multiple_of(CHUNK_PAIRS);
        // whole pairs of groups: the kernels take 32 source rows at a time
        let groups = 2 * src.rows.div_ceil(2 * GROUP);
        let sum = pool.install(|| {
            src.data
                .par_chunks(d * 1024)
                .map(|rows| {
                    let mut sum = vec![0f64; d];
                    for row in rows.chunks_exact(d) {
                        for (a, &v) in sum.iter_mut().zip(row) {
                            *a += v as f64;
                        }
                    }
                    sum
                })
                .reduce(|| vec![0f64; d], |a, b| a.iter().zip(&b).map(|(x, y)| x + y).collect())
        });
        let mean: Vec<f32> = sum.iter().map(|&s| (s / src.rows.max(1) as f64) as f32).collect();
        let mut packed = vec![0u32; groups * 2 * pairs * GROUP];
        let mut norms = vec![f32::NAN; groups * GROUP];
        let max_sq = pool.install(|| {
            packed
                .par_chunks_mut(2 * pairs * GROUP)
                .zip(norms.par_chunks_mut(GROUP))
                .enumerate()
                .map(|(g, (block, norms))| {
                    let (mut c, mut hi, mut lo) = (vec![0f32; d], vec![0u16; d + 1], vec![0u16; d + 1]);
                    let mut max_sq = 0f64;
                    for lane in 0..GROUP.min(src.rows.saturating_sub(g * GROUP)) {
                        let sq = centre_split(src.row(g * GROUP + lane), &mean, &mut c, &mut hi, &mut lo);
                        norms[lane] = sq as f32;
                        max_sq = f64::max(max_sq, sq);
                        for p in 0..d.div_ceil(2) {
                            block[p * GROUP + lane] = pair(hi[2 * p], hi[2 * p + 1]);
                            block[(pairs + p) * GROUP + lane] = pair(lo[2 * p], lo[2 * p + 1]);
                        }
                    }
                    max_sq
                })
                .reduce(|| 0.0, f64::max)
        });
        Source { mean, norms, max_norm: norm_bound(max_sq), pairs, packed }
    }

    /// `E` for a target row whose centred norm is at most `x` (see the module doc).
    pub(super) fn error_bound(&self, x: f64, d: usize) -> f64 {
        let y = self.max_norm;
        let m = f32::MIN_POSITIVE as f64;
        let n = (6 * d.div_ceil(2)) as f64;
        let gamma = n * V / (1.0 - n * V);
        let s = U * U / 2.0 + 2.0 * V;
        let rel = 2.0 * s + s * s + 1.001 * U * U + 1.02 * gamma;
        let dot = rel * x * y + m * ((1.0 + s) * (d as f64).sqrt() * (x + y) + 2.0 * n + d as f64 * m + 1.0);
        let approx = 2.0 * dot + y * y / 4_194_304.0 + V * (y * y + 2.0 * x * y);
        (1.0 + 1.0 / 1_048_576.0) * approx
    }
}

/// Target rows `t0..t0 + rows`, centred and split, with each row's centred norm bound.
pub(super) struct Targets {
    /// Row-major, `[row][segment hi, lo][pair]`; or, for the AMX kernel, whole tiles:
    /// `[16-row panel][segment][chunk][16 rows][16 pairs]`. Rows past `rows` are zero.
    pub rows: Vec<u32>,
    pub norms: Vec<f64>,
}

impl Targets {
    pub(super) fn new(
        tgt: &Rows<'_>,
        t0: usize,
        rows: usize,
        padded_rows: usize,
        source: &Source,
        tiles: bool,
    ) -> Self {
        let (d, pairs) = (tgt.cols, source.pairs);
        let mut packed = vec![0u32; padded_rows * 2 * pairs];
        let mut norms = Vec::with_capacity(rows);
        let (mut c, mut hi, mut lo) = (vec![0f32; d], vec![0u16; d + 1], vec![0u16; d + 1]);
        let chunks = pairs / CHUNK_PAIRS;
        for r in 0..rows {
            norms.push(norm_bound(centre_split(tgt.row(t0 + r), &source.mean, &mut c, &mut hi, &mut lo)));
            for p in 0..d.div_ceil(2) {
                for (seg, v) in [(0, pair(hi[2 * p], hi[2 * p + 1])), (1, pair(lo[2 * p], lo[2 * p + 1]))] {
                    let at = if tiles {
                        let (panel, m, chunk, q) = (r / GROUP, r % GROUP, p / CHUNK_PAIRS, p % CHUNK_PAIRS);
                        (((panel * 2 + seg) * chunks + chunk) * GROUP + m) * CHUNK_PAIRS + q
                    } else {
                        (r * 2 + seg) * pairs + p
                    };
                    packed[at] = v;
                }
            }
        }
        Targets { rows: packed, norms }
    }
}

/// Pushes the lanes of `mask` (source rows `s0..s0 + 16` of target row `r`, approximate
/// distances `approx`) that still pass the row's threshold.
#[cfg(target_arch = "x86_64")]
#[cold]
#[inline(never)]
fn push_lanes(finder: &mut BlockSearch, r: usize, approx: &[f32; GROUP], mut mask: u16, s0: usize) {
    while mask != 0 {
        let lane = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        // read afresh: a push may have pruned and lowered the threshold
        if approx[lane] <= finder.thr32[r] {
            finder.push(r, approx[lane], (s0 + lane) as u32);
        }
    }
}

/// The threshold test of one target row against 32 source rows (two vectors of dot products):
/// `a = |y|^2 - 2 x.y`; NaN norms (padding) never pass.
///
/// # Safety
/// The CPU must support AVX-512F; `r` must be a row of `finder`'s block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn test_row(finder: &mut BlockSearch, r: usize, dots: [__m512; 2], norms: [__m512; 2], s0: usize) {
    let two = _mm512_set1_ps(2.0);
    let thr = _mm512_set1_ps(*finder.thr32.get_unchecked(r));
    let a0 = _mm512_fnmadd_ps(two, dots[0], norms[0]);
    let a1 = _mm512_fnmadd_ps(two, dots[1], norms[1]);
    let m0 = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(a0, thr);
    let m1 = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(a1, thr);
    if (m0 | m1) != 0 {
        let mut approx = [0f32; GROUP];
        _mm512_storeu_ps(approx.as_mut_ptr(), a0);
        push_lanes(finder, r, &approx, m0, s0);
        _mm512_storeu_ps(approx.as_mut_ptr(), a1);
        push_lanes(finder, r, &approx, m1, s0 + GROUP);
    }
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Target rows per AVX512-BF16 micro-tile: 14 x 2 accumulators + 2 source vectors = 30 zmm.
#[cfg(target_arch = "x86_64")]
pub(super) const MR: usize = 14;

/// The three (target segment, source segment) products of the hi/lo split: hi.hi, hi.lo, lo.hi.
const SEGMENTS: [(usize, usize); 3] = [(0, 0), (0, 1), (1, 0)];

/// The AVX512-BF16 candidate scan of one block (rows of `targets` padded to whole `MR`s).
///
/// # Safety
/// The CPU must support AVX-512F and AVX512-BF16; `targets` must come from [`Targets::new`]
/// for `finder`'s block with `padded_rows >= finder.candidates.len().next_multiple_of(MR)`,
/// and `source` from [`Source::new`] for a source of `d` columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
// c[i][j]: target row i, source vector j, as in the float32 kernels
#[allow(clippy::needless_range_loop)]
pub(super) unsafe fn scan_avx512(finder: &mut BlockSearch, targets: &Targets, source: &Source, d: usize) {
    let rows = finder.candidates.len();
    let pairs = source.pairs;
    let used = d.div_ceil(2);
    let groups = source.norms.len() / GROUP;
    let seg = pairs * GROUP;
    for g in (0..groups).step_by(2) {
        let s_base = source.packed.as_ptr().add(g * 2 * seg);
        let norms = [
            _mm512_loadu_ps(source.norms.as_ptr().add(g * GROUP)),
            _mm512_loadu_ps(source.norms.as_ptr().add((g + 1) * GROUP)),
        ];
        for r0 in (0..rows).step_by(MR) {
            let t_base = targets.rows.as_ptr().add(r0 * 2 * pairs);
            let mut c = [[_mm512_setzero_ps(); 2]; MR];
            for (ts, ss) in SEGMENTS {
                let t = t_base.add(ts * pairs);
                // the two groups' segments: group g's `ss` and group g + 1's
                let s0 = s_base.add(ss * seg);
                let s1 = s0.add(2 * seg);
                for p in 0..used {
                    let y = [
                        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(s0.add(p * GROUP) as *const _)),
                        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(s1.add(p * GROUP) as *const _)),
                    ];
                    for i in 0..MR {
                        let x = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                            *t.add(i * 2 * pairs + p) as i32
                        ));
                        for j in 0..2 {
                            c[i][j] = _mm512_dpbf16_ps(c[i][j], x, y[j]);
                        }
                    }
                }
            }
            for i in 0..MR.min(rows - r0) {
                test_row(finder, r0 + i, c[i], norms, g * GROUP);
            }
        }
    }
}

/// The candidates of target rows `t0..t0 + rows` under a bf16 kernel; `None` where this build
/// has no such kernel (the caller then searches every row with the float32 kernel).
pub(super) fn scan_block(
    source: &Source,
    tgt: &Rows<'_>,
    t0: usize,
    rows: usize,
    k: usize,
    kernel: Kernel,
) -> Option<BlockSearch> {
    #[cfg(target_arch = "x86_64")]
    {
        let padded = rows.next_multiple_of(if kernel == Kernel::AmxBf16 { 2 * GROUP } else { MR });
        let targets = Targets::new(tgt, t0, rows, padded, source, kernel == Kernel::AmxBf16);
        let windows = targets.norms.iter().map(|&x| 2.0 * source.error_bound(x, tgt.cols)).collect();
        let mut finder = BlockSearch::with_windows(k, windows);
        match kernel {
            // SAFETY: the caller checked `kernel.require`, so the CPU has its features (and Linux
            // granted the tile state); `targets` and `source` were built for this block above.
            Kernel::AmxBf16 => unsafe { amx::scan(&mut finder, &targets, source) },
            // SAFETY: as above.
            Kernel::Avx512Bf16 => unsafe { scan_avx512(&mut finder, &targets, source, tgt.cols) },
            _ => return None,
        }
        Some(finder)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (source, tgt, t0, rows, k, kernel);
        None
    }
}

/// The AMX-BF16 kernel: a 32 x 32 block of dot products in four tile registers.
#[cfg(target_arch = "x86_64")]
pub(super) mod amx {
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use super::{test_row, BlockSearch, Source, Targets, CHUNK_PAIRS, GROUP, SEGMENTS};

    /// Whether the CPU has AMX-BF16 and Linux lets this process use the tile registers
    /// (asked once; a refusal leaves the AVX512-BF16 and float32 kernels).
    pub(in crate::knn) fn available() -> bool {
        static GRANTED: OnceLock<bool> = OnceLock::new();
        *GRANTED.get_or_init(|| {
            // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
            let leaf7 = __cpuid_count(7, 0);
            std::is_x86_feature_detected!("avx512f")
                && leaf7.edx & (1 << 22) != 0
                && leaf7.edx & (1 << 24) != 0
                && request_tile_state()
        })
    }

    /// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: Linux (5.16 and later) enables the
    /// 8 KiB tile state only for processes that ask; without it the first tile instruction faults.
    #[cfg(target_os = "linux")]
    fn request_tile_state() -> bool {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
        const XFEATURE_XTILEDATA: u64 = 18;
        let ret: i64;
        // SAFETY: a plain system call; the kernel clobbers only rax, rcx and r11.
        unsafe {
            asm!("syscall", inlateout("rax") SYS_ARCH_PRCTL => ret, in("rdi") ARCH_REQ_XCOMP_PERM,
                 in("rsi") XFEATURE_XTILEDATA, lateout("rcx") _, lateout("r11") _, options(nostack));
        }
        ret == 0
    }

    #[cfg(not(target_os = "linux"))]
    fn request_tile_state() -> bool {
        false
    }

    /// The `ldtilecfg` operand: palette 1, tiles 0-7 all 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    /// Four 16 x 16 float32 tiles, stored for the threshold test.
    #[repr(C, align(64))]
    struct Block([[f32; GROUP * GROUP]; 4]);

    macro_rules! load {
        ($tile:literal, $ptr:expr, $stride:expr) => {
            asm!(concat!("tileloadd tmm", $tile, ", [{p} + {s}*1]"), p = in(reg) $ptr, s = in(reg) $stride,
                 options(nostack, readonly, preserves_flags))
        };
    }
    macro_rules! dot {
        ($c:literal, $a:literal, $b:literal) => {
            asm!(concat!("tdpbf16ps tmm", $c, ", tmm", $a, ", tmm", $b), options(nostack, nomem, preserves_flags))
        };
    }

    /// The AMX candidate scan of one block: tiles 4 and 5 hold 16 target rows each (32 bf16 of
    /// depth per row), tiles 6 and 7 sixteen source rows each (as depth pairs), tiles 0-3 the
    /// 32 x 32 float32 sums.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and AMX-BF16, with the tile state granted
    /// ([`available`]); `targets` must come from [`Targets::new`] for `finder`'s block with
    /// rows padded to a multiple of 32, and `source` from [`Source::new`].
    #[target_feature(enable = "avx512f")]
    pub(in crate::knn) unsafe fn scan(finder: &mut BlockSearch, targets: &Targets, source: &Source) {
        let mut cfg = Config { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
        cfg.colsb[..8].fill(64);
        cfg.rows[..8].fill(16);
        asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly, preserves_flags));
        let rows = finder.candidates.len();
        let pairs = source.pairs;
        let seg = pairs * GROUP;
        let chunks = pairs / CHUNK_PAIRS;
        // one tile of targets: 16 rows of one chunk, 1 KiB contiguous
        let tile = GROUP * CHUNK_PAIRS;
        // Two result buffers: a block's threshold test runs while the tiles multiply the next
        // block, so the AVX-512 work overlaps the AMX work instead of waiting for it.
        let mut out = [Block([[0.0; GROUP * GROUP]; 4]), Block([[0.0; GROUP * GROUP]; 4])];
        let mut pending: Option<(usize, usize, usize)> = None;
        let test_block = |finder: &mut BlockSearch, out: &Block, g: usize, r0: usize| {
            let norms = [
                _mm512_loadu_ps(source.norms.as_ptr().add(g * GROUP)),
                _mm512_loadu_ps(source.norms.as_ptr().add((g + 1) * GROUP)),
            ];
            for m in 0..(2 * GROUP).min(rows - r0) {
                let (a, b) = if m < GROUP { (0, 1) } else { (2, 3) };
                let row = (m % GROUP) * GROUP;
                let dots = [_mm512_loadu_ps(out.0[a][row..].as_ptr()), _mm512_loadu_ps(out.0[b][row..].as_ptr())];
                test_row(finder, r0 + m, dots, norms, g * GROUP);
            }
        };
        let mut slot = 0;
        for g in (0..source.norms.len() / GROUP).step_by(2) {
            let s0 = source.packed.as_ptr().add(g * 2 * seg);
            let s1 = s0.add(2 * seg);
            for r0 in (0..rows).step_by(2 * GROUP) {
                let ta = targets.rows.as_ptr().add(r0 * 2 * pairs);
                let tb = ta.add(GROUP * 2 * pairs);
                let t_lo = chunks * tile;
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem, preserves_flags)
                );
                for c in 0..chunks {
                    let (to, so) = (c * tile, c * CHUNK_PAIRS * GROUP);
                    let [_, (_, sl), (tl, _)] = SEGMENTS;
                    let (bh0, bh1) = (s0.add(so), s1.add(so));
                    // hi.lo, then hi.hi (new source tiles only), then lo.hi (new target tiles
                    // only): a tile register is not renamed, so a load waits for the multiplies
                    // that read its old contents; reloading half the operands per step keeps
                    // the other half's multiplies running meanwhile.
                    load!(4, ta.add(to), 64usize);
                    load!(6, s0.add(sl * seg + so), 64usize);
                    dot!(0, 4, 6);
                    load!(7, s1.add(sl * seg + so), 64usize);
                    dot!(1, 4, 7);
                    load!(5, tb.add(to), 64usize);
                    dot!(2, 5, 6);
                    dot!(3, 5, 7);
                    load!(6, bh0, 64usize);
                    dot!(0, 4, 6);
                    dot!(2, 5, 6);
                    load!(7, bh1, 64usize);
                    dot!(1, 4, 7);
                    dot!(3, 5, 7);
                    load!(4, ta.add(tl * t_lo + to), 64usize);
                    dot!(0, 4, 6);
                    dot!(1, 4, 7);
                    load!(5, tb.add(tl * t_lo + to), 64usize);
                    dot!(2, 5, 6);
                    dot!(3, 5, 7);
                }
                if let Some((pg, pr0, ps)) = pending {
                    test_block(finder, &out[ps], pg, pr0);
                }
                let o = out[slot].0.as_mut_ptr() as *mut f32;
                asm!("tilestored [{o} + {s}*1], tmm0", "tilestored [{o1} + {s}*1], tmm1",
                     "tilestored [{o2} + {s}*1], tmm2", "tilestored [{o3} + {s}*1], tmm3",
                     o = in(reg) o, o1 = in(reg) o.add(256), o2 = in(reg) o.add(512), o3 = in(reg) o.add(768),
                     s = in(reg) 64usize, options(nostack, preserves_flags));
                pending = Some((g, r0, slot));
                slot ^= 1;
            }
        }
        if let Some((pg, pr0, ps)) = pending {
            test_block(finder, &out[ps], pg, pr0);
        }
        asm!("tilerelease", options(nostack, nomem, preserves_flags));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Positive values whose split errs most, all the same way: just above a power of two (so
    /// the relative errors are largest), the 16 bits below `hi`'s 0111_1111_1011_1111, so `hi`
    /// rounds down, `lo` is just under half an ulp of `hi` (the dropped `lo.lo` term near
    /// `u^2`) and `lo` itself rounds down by just under half its ulp (the `hi + lo` residual near
    /// `u^2 / 2`). Paired with such values (or their negatives) every element's errors add up.
    fn worst_split(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let top = ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 30) << 16;
                f32::from_bits(0x3F80_0000 | top | 0x7FBF)
            })
            .collect()
    }

    /// Every approximate distance of a bf16 kernel is within the bound `E` of the exact one, on
    /// rows built so that the rounding errors add up; returns the largest |error| / E seen.
    fn worst_error_ratio(kernel: Kernel, d: usize) -> f64 {
        // Sources y and -y around a zero mean, so the centred values are the crafted ones.
        let half = worst_split(40 * d, 1);
        let src: Vec<f32> = half.iter().copied().chain(half.iter().map(|v| -v)).collect();
        let tgt = worst_split(20 * d, 7);
        let (s, t) = (Rows::new("s", &src, 80, d).unwrap(), Rows::new("t", &tgt, 20, d).unwrap());
        let pool = crate::pool::get(Some(1));
        let source = Source::new(&s, &pool);
        assert!(source.mean.iter().all(|&m| m == 0.0));
        // k = every source row: nothing is pruned, so every pair's approximate distance is kept.
        let finder = scan_block(&source, &t, 0, 20, 80, kernel).unwrap();
        let mut worst = 0f64;
        for (r, cands) in finder.candidates.iter().enumerate() {
            assert_eq!(cands.len(), 80);
            let x = t.row(r);
            let bound = finder.window[r] / 2.0;
            for &(a, j) in cands {
                let y = s.row(j as usize);
                let exact: f64 = y.iter().map(|&v| v as f64 * v as f64).sum::<f64>()
                    - 2.0 * x.iter().zip(y).map(|(&p, &q)| p as f64 * q as f64).sum::<f64>();
                worst = worst.max((a as f64 - exact).abs() / bound);
            }
        }
        worst
    }

    /// The bound holds, and is not loose by a factor of 2: on these rows some approximate
    /// distance is more than `E / 2` off, so a halved bound would fail. (At depth 256 and more
    /// the accumulation term, a worst case that rounding rarely approaches, dominates `E`.)
    #[test]
    fn error_bound_holds_where_rounding_errors_add_up() {
        for kernel in [Kernel::AmxBf16, Kernel::Avx512Bf16] {
            if !kernel.is_available() {
                continue;
            }
            let mut largest = 0f64;
            for d in [1, 16, 256, 1000] {
                let ratio = worst_error_ratio(kernel, d);
                println!("{kernel:?} d={d}: largest error / E = {ratio:.3}");
                assert!(ratio <= 1.0, "{kernel:?}, d {d}: an approximate distance is {ratio:.2} E from the exact one");
                largest = largest.max(ratio);
            }
            assert!(largest > 0.5, "{kernel:?}: errors reach only {largest:.2} E; the bound is loose by 2x");
        }
    }

    #[test]
    fn split_holds_sixteen_bits() {
        for &c in &[1.0f32, -3.7, 1e-30, 123456.78, 0.1, -2.5e7, 1.1754944e-38, 3e-39] {
            let (h, l) = split(c);
            let got = bf16_value(h) as f64 + bf16_value(l) as f64;
            let err = (got - c as f64).abs();
            assert!(err <= U * U / 2.0 * (c.abs() as f64) + f32::MIN_POSITIVE as f64, "{c}: {got} ({err:e})");
        }
        // ties to even
        assert_eq!(bf16_bits(f32::from_bits(0x3F80_8000)), 0x3F80);
        assert_eq!(bf16_bits(f32::from_bits(0x3F81_8000)), 0x3F82);
    }
}
