"""Shared test configuration: Hypothesis profiles and the reference module on sys.path.

Profiles (both derandomized, so a run is reproducible and CI never flakes):

* ``ci``: ~100 examples per property; loaded when the ``CI`` environment variable is set.
* ``dev``: fewer examples for a quick local loop; the default otherwise.

Override with ``pytest --hypothesis-profile=ci`` (or ``HYPOTHESIS_PROFILE=ci``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

# Let the test modules `import reference` whether or not tests/ is a package.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_COMMON = dict(
    derandomize=True,
    deadline=None,  # native calls on 2 busy cores can be slow on the first (pool-building) call
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

settings.register_profile("ci", max_examples=100, print_blob=True, **_COMMON)
settings.register_profile("dev", max_examples=30, **_COMMON)

settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


import pytest  # noqa: E402

from digits import SHARED_DATA, make_data_dir  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The real MNIST/USPS ($MADDA_DATA_DIR, else ../shared/data) when present, else small generated digits."""
    for candidate in (os.environ.get("MADDA_DATA_DIR"), SHARED_DATA):
        if candidate and (Path(candidate) / "usps.t.bz2").is_file():
            return str(candidate)
    return str(make_data_dir(tmp_path_factory.mktemp("digits")))


@pytest.fixture(scope="session")
def generated_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Always the generated digits: fast, and exercises the readers on files we wrote."""
    return str(make_data_dir(tmp_path_factory.mktemp("generated")))


@pytest.fixture
def magnet_nan_in_target_epoch_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """M-ADDA's magnet loss turns NaN from the second target epoch on (12 magnet batches an epoch
    on the generated digits), so a run stops there."""
    import madda_rs.methods.madda as madda_stage

    real, calls = madda_stage.center_magnet_loss, []

    def nan_in_epoch_2(emb, centers):  # type: ignore[no-untyped-def]
        calls.append(None)
        loss = real(emb, centers)
        return loss * float("nan") if len(calls) > 12 else loss

    monkeypatch.setattr(madda_stage, "center_magnet_loss", nan_in_epoch_2)
