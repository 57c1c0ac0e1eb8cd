//! `KnnIndex`, `merge_knn` and `knn_vote`: exact kNN over a source set added in pieces
//! (`madda_core::index`). The index keeps references to the caller's arrays, not copies, and
//! borrows them again for each search, so memory-mapped pieces stay on disk until searched.

use std::sync::{Mutex, MutexGuard};

use madda_core::index::{self, Candidates, Index, Matrix, Part};
use numpy::ndarray::Array2;
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::{contiguous, run_detached};

fn value_error(e: madda_core::Error) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn matrix<'py, T: numpy::Element>(
    n: usize,
    k: usize,
    values: Vec<T>,
    py: Python<'py>,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    let array = Array2::from_shape_vec((n, k), values).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(array.into_pyarray(py))
}

/// `(distances, indices)`, each `(n_tgt, k)`, as `knn_search` returns them.
type NeighborArrays<'py> = (Bound<'py, PyArray2<f32>>, Bound<'py, PyArray2<i64>>);

/// `(distances, indices, labels)`, each `(n_tgt, k)`: what `KnnIndex.candidates` returns.
type LabelledCandidates<'py> = (Bound<'py, PyArray2<f64>>, Bound<'py, PyArray2<i64>>, Bound<'py, PyArray2<i64>>);

/// `(distances, indices, labels)`, each `(n_tgt, k)`.
type CandidateArrays<'py> = (Bound<'py, PyArray2<f64>>, Bound<'py, PyArray2<i64>>, Option<Bound<'py, PyArray2<i64>>>);

fn candidate_arrays<'py>(py: Python<'py>, c: Candidates) -> PyResult<CandidateArrays<'py>> {
    let n = c.indices.len() / c.k.max(1);
    let labels = match c.labels {
        Some(l) => Some(matrix(n, c.k, l, py)?),
        None => None,
    };
    Ok((matrix(n, c.k, c.distances, py)?, matrix(n, c.k, c.indices, py)?, labels))
}

/// The added pieces, in order.
#[derive(Default)]
struct Pieces {
    emb: Vec<Py<PyArray2<f32>>>,
    labels: Vec<Py<PyArray1<i64>>>,
    len: usize,
}

/// Exact kNN over source rows added in pieces; see `madda_rs.KnnIndex`.
#[pyclass(module = "madda_rs._core", frozen)]
pub struct KnnIndex {
    dim: usize,
    // A lock rather than `&mut self`, so that add() during a search in another thread waits a
    // moment instead of failing with a borrow error; a search works on a snapshot of the list.
    pieces: Mutex<Pieces>,
}

impl KnnIndex {
    fn pieces(&self) -> MutexGuard<'_, Pieces> {
        // Poisoned only if a thread panicked while pushing; the list is still consistent.
        self.pieces.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Borrows every piece and `tgt`, then runs `work` on the index without the GIL.
    fn with_index<T: Send>(
        &self,
        py: Python<'_>,
        tgt: &PyReadonlyArray2<'_, f32>,
        work: impl FnOnce(&Index<'_>, Matrix<'_>) -> Result<T, madda_core::Error> + Send,
    ) -> PyResult<T> {
        let (emb, labels): (Vec<_>, Vec<_>) = {
            let pieces = self.pieces();
            (
                pieces.emb.iter().map(|a| a.clone_ref(py)).collect(),
                pieces.labels.iter().map(|a| a.clone_ref(py)).collect(),
            )
        };
        let emb = emb.iter().map(|a| a.bind(py).try_readonly()).collect::<Result<Vec<_>, _>>()?;
        let labels = labels.iter().map(|a| a.bind(py).try_readonly()).collect::<Result<Vec<_>, _>>()?;
        let mut index = Index::new(self.dim).map_err(value_error)?;
        for (e, y) in emb.iter().zip(&labels) {
            let (rows, cols) = (e.shape()[0], e.shape()[1]);
            index.add(contiguous("emb", e)?, rows, cols, contiguous("labels", y)?).map_err(value_error)?;
        }
        let (data, n, d) = (contiguous("tgt", tgt)?, tgt.shape()[0], tgt.shape()[1]);
        run_detached(py, || work(&index, Matrix::new("tgt", data, n, d)?))
    }
}

#[pymethods]
impl KnnIndex {
    #[new]
    fn new(dim: usize) -> PyResult<Self> {
        Index::new(dim).map_err(value_error)?;
        Ok(KnnIndex { dim, pieces: Mutex::new(Pieces::default()) })
    }

    #[getter]
    fn dim(&self) -> usize {
        self.dim
    }

    /// Rows added so far.
    #[getter]
    fn ntotal(&self) -> usize {
        self.pieces().len
    }

    fn __len__(&self) -> usize {
        self.ntotal()
    }

    /// Appends `emb` (C-contiguous float32, `(n, dim)`) and `labels` (`(n,)` int64) by reference.
    fn add(&self, py: Python<'_>, emb: Bound<'_, PyArray2<f32>>, labels: Bound<'_, PyArray1<i64>>) -> PyResult<()> {
        let rows = emb.shape()[0];
        {
            let (e, y): (PyReadonlyArray2<f32>, PyReadonlyArray1<i64>) = (emb.try_readonly()?, labels.try_readonly()?);
            let (data, cols) = (contiguous("emb", &e)?, e.shape()[1]);
            let y = contiguous("labels", &y)?;
            Index::new(self.dim).and_then(|mut probe| probe.add(data, rows, cols, y)).map_err(value_error)?;
            // Checked here, once, so a bad value is reported by the add() that brought it; each
            // search checks a piece again just before reading it (the arrays may have changed).
            run_detached(py, || Matrix::new("emb", data, rows, cols).map(|_| ()))?;
        }
        let mut pieces = self.pieces();
        let len = pieces
            .len
            .checked_add(rows)
            .filter(|&n| n <= i64::MAX as usize)
            .ok_or_else(|| PyValueError::new_err("emb: expected at most 2**63 - 1 rows in all"))?;
        if rows > 0 {
            pieces.emb.push(emb.unbind());
            pieces.labels.push(labels.unbind());
        }
        pieces.len = len;
        Ok(())
    }

    /// `(distances float32, indices int64)`, each `(n_tgt, k)`, as `knn_search` on the
    /// concatenated pieces.
    #[pyo3(signature = (tgt, k, threads=None))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        tgt: PyReadonlyArray2<'py, f32>,
        k: usize,
        threads: Option<usize>,
    ) -> PyResult<NeighborArrays<'py>> {
        let nn = self.with_index(py, &tgt, |index, t| index.search(t, k, threads))?;
        let n = nn.indices.len() / k.max(1);
        Ok((matrix(n, k, nn.distances, py)?, matrix(n, k, nn.indices, py)?))
    }

    /// `(n_tgt,)` int64 votes, as `knn_predict` on the concatenated pieces.
    #[pyo3(signature = (tgt, k, threads=None))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        tgt: PyReadonlyArray2<'py, f32>,
        k: usize,
        threads: Option<usize>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let pred = self.with_index(py, &tgt, |index, t| index.predict(t, k, threads))?;
        Ok(pred.into_pyarray(py))
    }

    /// `(distances float64, indices int64, labels int64)`, each `(n_tgt, k)`: what `merge_knn`
    /// takes.
    #[pyo3(signature = (tgt, k, threads=None))]
    fn candidates<'py>(
        &self,
        py: Python<'py>,
        tgt: PyReadonlyArray2<'py, f32>,
        k: usize,
        threads: Option<usize>,
    ) -> PyResult<LabelledCandidates<'py>> {
        let c = self.with_index(py, &tgt, |index, t| index.candidates(t, k, threads))?;
        match candidate_arrays(py, c)? {
            (d, i, Some(y)) => Ok((d, i, y)),
            _ => Err(PyValueError::new_err("index: candidates came without labels")),
        }
    }
}

/// Merges per-piece candidates; see `madda_rs.merge_knn`. `labels` is all-or-none.
#[pyfunction]
#[pyo3(signature = (distances, indices, labels, offsets, k, threads=None))]
pub fn merge_knn<'py>(
    py: Python<'py>,
    distances: Vec<PyReadonlyArray2<'py, f64>>,
    indices: Vec<PyReadonlyArray2<'py, i64>>,
    labels: Option<Vec<PyReadonlyArray2<'py, i64>>>,
    offsets: Vec<i64>,
    k: usize,
    threads: Option<usize>,
) -> PyResult<CandidateArrays<'py>> {
    let n = distances.len();
    if indices.len() != n || offsets.len() != n || labels.as_ref().is_some_and(|l| l.len() != n) {
        return Err(PyValueError::new_err(format!(
            "parts: expected as many indices, labels and offsets as distances ({n}), got {}, {} and {}",
            indices.len(),
            labels.as_ref().map_or(n, Vec::len),
            offsets.len()
        )));
    }
    let mut parts = Vec::with_capacity(n);
    for p in 0..n {
        let (d, i) = (&distances[p], &indices[p]);
        let y = labels.as_ref().map(|l| &l[p]);
        if i.shape() != d.shape() || y.is_some_and(|y| y.shape() != d.shape()) {
            return Err(PyValueError::new_err(format!(
                "parts: part {p}: expected distances, indices and labels of one shape, got {:?}, {:?} and {:?}",
                d.shape(),
                i.shape(),
                y.map(|y| y.shape())
            )));
        }
        parts.push(Part {
            rows: d.shape()[0],
            cols: d.shape()[1],
            distances: contiguous("distances", d)?,
            indices: contiguous("indices", i)?,
            labels: y.map(|y| contiguous("labels", y)).transpose()?,
            offset: offsets[p],
        });
    }
    let merged = run_detached(py, || index::merge(&parts, k, threads))?;
    candidate_arrays(py, merged)
}

/// Each row's most frequent label, a tie going to the smallest; see `madda_rs.knn_vote`.
#[pyfunction]
pub fn knn_vote<'py>(py: Python<'py>, labels: PyReadonlyArray2<'py, i64>) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let k = labels.shape()[1];
    let data = contiguous("labels", &labels)?;
    let votes = run_detached(py, || index::vote_rows(data, k))?;
    Ok(votes.into_pyarray(py))
}
