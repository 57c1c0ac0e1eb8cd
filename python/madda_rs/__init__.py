"""madda_rs: M-ADDA domain adaptation with a Rust core.

This face re-exports the native API (:mod:`madda_rs.native`: exact kNN, the kNN index, triplet
enumeration), which needs only NumPy: ``import madda_rs`` never imports torch. Training is
:func:`madda_rs.training.train`; the methods live in :mod:`madda_rs.methods`, the command line
in :mod:`madda_rs.cli`.
"""

from importlib.metadata import version as _version

from . import methods as _methods  # noqa: F401  the method registry: TrainConfig looks up a method's settings there
from .native import (
    MAX_TRIPLETS,
    KnnIndex,
    default_threads,
    knn_kernel,
    knn_predict,
    knn_search,
    knn_vote,
    merge_knn,
    triplets,
)

__version__ = _version("madda-rs")  # written once, in Cargo.toml; maturin copies it to the metadata


def load_run(run_dir, **options):  # type: ignore[no-untyped-def]
    """A finished run, ready to label new images: :func:`madda_rs.inference.predict.load_run`
    (imports torch, so only when called)."""
    from .inference.predict import load_run as load

    return load(run_dir, **options)


__all__ = ["knn_predict", "knn_search", "knn_vote", "merge_knn", "KnnIndex", "triplets", "default_threads",
           "knn_kernel", "MAX_TRIPLETS", "load_run", "__version__"]
