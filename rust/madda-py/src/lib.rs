//! Thin PyO3 layer over madda-core, built as `madda_rs._core`.
//!
//! The Python wrappers in `madda_rs/__init__.py` coerce dtypes and layout; here we borrow the
//! (now contiguous) NumPy buffers without copying, check what is left, leave the interpreter
//! around the work, and hand the result vectors to NumPy without copying.

use madda_core::knn::Rows;
use madda_core::{Error, Kernel, NegativeMode, TripletOptions};
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

mod index;

/// The one way to run native work: without the GIL, core errors mapped to Python exceptions.
fn run_detached<T: Send>(py: Python<'_>, work: impl FnOnce() -> Result<T, Error> + Send) -> PyResult<T> {
    py.detach(work).map_err(|e| PyValueError::new_err(e.to_string()))
}

fn contiguous<'a, T: numpy::Element, D: numpy::ndarray::Dimension>(
    arg: &str,
    array: &'a numpy::PyReadonlyArray<'_, T, D>,
) -> PyResult<&'a [T]> {
    array
        .as_slice()
        .map_err(|_| PyTypeError::new_err(format!("{arg}: expected a C-contiguous array, got a strided view")))
}

fn rows<'a>(arg: &'static str, array: &'a PyReadonlyArray2<'_, f32>) -> PyResult<Rows<'a>> {
    let (n, d) = (array.shape()[0], array.shape()[1]);
    Rows::new(arg, contiguous(arg, array)?, n, d).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// `knn_search`'s result: (distances, indices), each (n_tgt, k).
type DistancesIndices<'py> = (Bound<'py, PyArray2<f32>>, Bound<'py, PyArray2<i64>>);

/// The kNN kernel to run: the named one (an error if this CPU lacks it), else the default.
fn kernel(name: Option<&str>) -> PyResult<Kernel> {
    let kernel = match name {
        Some(name) => Kernel::parse("kernel", name).and_then(|k| k.require("kernel")),
        None => Kernel::default_for_cpu(),
    };
    kernel.map_err(|e| PyValueError::new_err(e.to_string()))
}

#[pyfunction]
#[pyo3(signature = (src_emb, tgt_emb, k, threads=None, kernel=None))]
fn knn_search<'py>(
    py: Python<'py>,
    src_emb: PyReadonlyArray2<'py, f32>,
    tgt_emb: PyReadonlyArray2<'py, f32>,
    k: usize,
    threads: Option<usize>,
    kernel: Option<&str>,
) -> PyResult<DistancesIndices<'py>> {
    let (src, tgt) = (rows("src_emb", &src_emb)?, rows("tgt_emb", &tgt_emb)?);
    let kernel = self::kernel(kernel)?;
    let nn = run_detached(py, || madda_core::knn_search_with(src, tgt, k, threads, kernel))?;
    let n_tgt = nn.indices.len() / k.max(1);
    let dist = numpy::ndarray::Array2::from_shape_vec((n_tgt, k), nn.distances)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    let idx = numpy::ndarray::Array2::from_shape_vec((n_tgt, k), nn.indices)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok((dist.into_pyarray(py), idx.into_pyarray(py)))
}

/// What the bf16 candidate pass did in one search (rows, candidates, fallback_rows), for
/// benchmarks and tests; the search's answer is the same as `knn_search`'s.
#[pyfunction]
#[pyo3(signature = (src_emb, tgt_emb, k, threads=None, kernel=None))]
fn knn_search_stats(
    py: Python<'_>,
    src_emb: PyReadonlyArray2<'_, f32>,
    tgt_emb: PyReadonlyArray2<'_, f32>,
    k: usize,
    threads: Option<usize>,
    kernel: Option<&str>,
) -> PyResult<(u64, u64, u64)> {
    let (src, tgt) = (rows("src_emb", &src_emb)?, rows("tgt_emb", &tgt_emb)?);
    let kernel = self::kernel(kernel)?;
    let (_, st) = run_detached(py, || madda_core::knn::knn_search_counted(src, tgt, k, threads, kernel))?;
    Ok((st.rows, st.candidates, st.fallback_rows))
}

#[pyfunction]
#[pyo3(signature = (src_emb, src_y, tgt_emb, k, threads=None, kernel=None))]
#[allow(clippy::too_many_arguments)]
fn knn_predict<'py>(
    py: Python<'py>,
    src_emb: PyReadonlyArray2<'py, f32>,
    src_y: PyReadonlyArray1<'py, i64>,
    tgt_emb: PyReadonlyArray2<'py, f32>,
    k: usize,
    threads: Option<usize>,
    kernel: Option<&str>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let (src, tgt) = (rows("src_emb", &src_emb)?, rows("tgt_emb", &tgt_emb)?);
    let labels = contiguous("src_y", &src_y)?;
    let kernel = self::kernel(kernel)?;
    let pred = run_detached(py, || madda_core::knn_predict_with(src, labels, tgt, k, threads, kernel))?;
    Ok(pred.into_pyarray(py))
}

#[pyfunction]
#[pyo3(signature = (labels, seed, negatives, sq_dists, margin, threads=None))]
fn triplets<'py>(
    py: Python<'py>,
    labels: PyReadonlyArray1<'py, i64>,
    seed: u64,
    negatives: &str,
    sq_dists: Option<PyReadonlyArray2<'py, f64>>,
    margin: f64,
    threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let mode = NegativeMode::parse(negatives).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let labels = contiguous("labels", &labels)?;
    let dists = match &sq_dists {
        Some(d) => Some(contiguous("sq_dists", d)?),
        None => None,
    };
    let opts = TripletOptions { mode, seed, sq_dists: dists, margin, threads };
    let flat = run_detached(py, || madda_core::triplets(labels, &opts))?;
    let m = flat.len() / 3;
    let out = numpy::ndarray::Array2::from_shape_vec((m, 3), flat).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(out.into_pyarray(py))
}

/// The thread count used when none is given (`MADDA_NUM_THREADS`, else all CPUs).
#[pyfunction]
fn default_threads() -> usize {
    madda_core::pool::default_threads()
}

/// The kNN kernel a call without `kernel=` runs: the widest this CPU supports, capped by
/// `MADDA_KNN_KERNEL` when set.
#[pyfunction]
fn knn_kernel() -> PyResult<&'static str> {
    Ok(kernel(None)?.name())
}

/// The kNN kernels this CPU runs, fastest first.
#[pyfunction]
fn knn_kernels() -> Vec<&'static str> {
    Kernel::available().iter().map(|k| k.name()).collect()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(knn_search, m)?)?;
    m.add_function(wrap_pyfunction!(knn_predict, m)?)?;
    m.add_function(wrap_pyfunction!(knn_search_stats, m)?)?;
    m.add_function(wrap_pyfunction!(triplets, m)?)?;
    m.add_function(wrap_pyfunction!(default_threads, m)?)?;
    m.add_function(wrap_pyfunction!(knn_kernel, m)?)?;
    m.add_function(wrap_pyfunction!(knn_kernels, m)?)?;
    m.add("MAX_TRIPLETS", madda_core::MAX_TRIPLETS)?;
    m.add_class::<index::KnnIndex>()?;
    m.add_function(wrap_pyfunction!(index::merge_knn, m)?)?;
    m.add_function(wrap_pyfunction!(index::knn_vote, m)?)?;
    Ok(())
}
