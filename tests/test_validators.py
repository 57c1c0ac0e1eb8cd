"""The label-free validators (IM, BNM, entropy, ClassAMI, DEV, reverse accuracy): against skada's
scorers where skada computes the same score, and against values known by construction."""

import warnings

import numpy as np
import pytest

from madda_rs.scores.label_free import (
    batch_nuclear_norm,
    class_ami,
    class_spread,
    deep_embedded_validation,
    information_maximisation,
    mean_entropy,
    mixval,
    reverse_accuracy,
    soft_predictions,
)

C = 4


def _blobs(n_per_class=30, shift=0.0, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = np.eye(C, 8, dtype=np.float32) * 5
    x = np.concatenate([centres[c] + shift + rng.normal(0, spread, (n_per_class, 8)) for c in range(C)])
    return x.astype(np.float32), np.repeat(np.arange(C), n_per_class)


def _one_hot(labels):
    return np.eye(C)[labels]


def test_im_and_bnm_reward_confident_balanced_predictions_and_punish_a_collapse():
    balanced = _one_hot(np.arange(40) % C)
    collapsed = _one_hot(np.zeros(40, int))
    uniform = np.full((40, C), 1 / C)
    assert information_maximisation(balanced) == pytest.approx(np.log(C))
    assert information_maximisation(collapsed) == pytest.approx(0.0)
    assert information_maximisation(uniform) == pytest.approx(0.0)
    assert batch_nuclear_norm(balanced) == pytest.approx(1.0)
    assert batch_nuclear_norm(collapsed) == pytest.approx(1 / np.sqrt(C))
    assert batch_nuclear_norm(uniform) == pytest.approx(1 / C)  # rank one, and unconfident
    assert mean_entropy(balanced) == pytest.approx(0.0) and mean_entropy(uniform) == pytest.approx(np.log(C))


def test_soft_predictions_are_a_softmax_over_distances_in_units_of_the_spread():
    x, y = _blobs()
    centres = np.stack([x[y == c].mean(0) for c in range(C)])
    spread = class_spread(x, y)
    assert spread == pytest.approx(float(((x - centres[y]) ** 2).sum(1).mean()), rel=1e-5)
    p = soft_predictions(x, centres, spread)
    d = ((x[:, None, :].astype(np.float64) - centres[None]) ** 2).sum(-1)
    expected = np.exp(-d / spread) / np.exp(-d / spread).sum(1, keepdims=True)
    np.testing.assert_allclose(p, expected, rtol=1e-6, atol=1e-12)
    assert (p.argmax(1) == y).all()


def test_class_ami_is_one_when_predictions_follow_the_clusters_and_near_zero_when_random():
    x, y = _blobs()
    assert class_ami(x, y, C, seed=0) == pytest.approx(1.0)
    assert class_ami(x, (y + 1) % C, C, seed=0) == pytest.approx(1.0)  # names do not matter, agreement does
    noise = np.random.default_rng(1).integers(0, C, len(y))
    assert abs(class_ami(x, noise, C, seed=0)) < 0.1


def test_reverse_accuracy_is_high_for_faithful_predictions_and_low_for_swapped_ones():
    tgt, y_tgt = _blobs(seed=1, shift=0.2)
    src, y_src = _blobs(seed=2)
    assert reverse_accuracy(tgt, y_tgt, src, y_src, k=5) == 1.0
    swapped = np.where(y_tgt < 2, 1 - y_tgt, y_tgt)  # classes 0 and 1 traded
    assert reverse_accuracy(tgt, swapped, src, y_src, k=5) == pytest.approx(0.5)


def test_dev_is_lower_for_the_better_source_predictions():
    src, y = _blobs(seed=3)
    tgt, _ = _blobs(seed=4, shift=0.5)
    good, bad = _one_hot(y) * 0.9 + 0.025, np.full((len(y), C), 1 / C)
    assert deep_embedded_validation(src[::2], src[1::2], good[1::2], y[1::2], tgt) < \
        deep_embedded_validation(src[::2], src[1::2], bad[1::2], y[1::2], tgt)


def test_dev_keeps_the_stopped_fits_warning_out_of_the_training_log():
    # embeddings far from unit scale (as trained ones are) stop lbfgs at 100 iterations
    src, y = _blobs(seed=3)
    tgt, _ = _blobs(seed=4, shift=0.5)
    rng = np.random.default_rng(5)
    src, tgt = src * 300 + rng.normal(size=src.shape) * 50, tgt * 300 + rng.normal(size=tgt.shape) * 50
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        score = deep_embedded_validation(src[::2], src[1::2], _one_hot(y)[1::2] * 0.9 + 0.01, y[1::2], tgt)
    assert np.isfinite(score)


class _FixedModel:
    """A stand-in for a skada deep estimator: its inputs are its features, and its soft
    predictions are the soft assignments to fixed centres."""

    def __init__(self, centres, spread):
        self.centres, self.spread = centres, spread
        self.module_ = type("Module", (), {"layer_name": "features"})()

    def predict_features(self, x):
        return x

    def predict_proba(self, x, sample_domain=None, allow_source=False):
        return soft_predictions(x, self.centres, self.spread)


def _skada_arrays():
    src, y = _blobs(seed=5)
    tgt, _ = _blobs(seed=6, shift=0.8, spread=0.6)
    centres = np.stack([src[y == c].mean(0) for c in range(C)])
    model = _FixedModel(centres, 100 * class_spread(src, y))  # soft enough that every entropy counts
    x = np.concatenate([src, tgt])
    sample_domain = np.r_[np.ones(len(src), int), -np.ones(len(tgt), int)]
    return model, x, np.r_[y, -np.ones(len(tgt), int)], sample_domain, src, y, tgt


def test_entropy_matches_skadas_prediction_entropy_scorer():
    metrics = pytest.importorskip("skada.metrics")
    model, x, y, sample_domain, _, _, tgt = _skada_arrays()
    theirs = metrics.PredictionEntropyScorer()(model, x, y, sample_domain=sample_domain)
    # skada's 'mean' averages over every (image, class) entry; ours sums over classes first
    ours = mean_entropy(model.predict_proba(tgt))
    assert ours > 0.1
    assert ours == pytest.approx(-theirs * C, rel=1e-5)  # skada takes log(p + 1e-7)


def test_dev_matches_skadas_deep_embedded_validation_on_the_same_split():
    metrics = pytest.importorskip("skada.metrics")
    from sklearn.model_selection import train_test_split

    model, x, y, sample_domain, src, y_src, tgt = _skada_arrays()

    def column_cross_entropy(labels, proba):
        # skada's default loss returns a flat (n,) array, which its (n, 1) weights broadcast into
        # an n x n matrix (skada 0.6.0); a column gives the estimator You et al. define
        return -np.log(np.clip(proba[np.arange(len(labels)), labels], 1e-15, 1 - 1e-15))[:, None]

    theirs = metrics.DeepEmbeddedValidation(random_state=0, loss_func=column_cross_entropy)(
        model, x, y, sample_domain=sample_domain)
    fit, val, _, y_val = train_test_split(src, y_src, test_size=0.33, random_state=np.random.RandomState(0))
    ours = deep_embedded_validation(fit, val, model.predict_proba(val), y_val, tgt)
    assert ours == pytest.approx(-theirs, rel=1e-9)


def test_class_ami_clusters_into_the_number_of_classes_so_a_collapse_scores_zero():
    """k-means takes k from the classes, not from the predictions: a model that predicts one class
    for clustered embeddings agrees with nothing (AMI 0), where k = 1 would make both labelings
    constant and score a perfect 1."""
    x, labels = _blobs()
    assert class_ami(x, labels, C, seed=0) == pytest.approx(1.0)
    assert class_ami(x, np.zeros(len(x), int), C, seed=0) == pytest.approx(0.0, abs=1e-9)


def _quadrant(x):
    """Four classes by the quadrant of a 2-d point: a fixed model whose mixes can change class."""
    return (x[:, 0] > 0).astype(int) * 2 + (x[:, 1] > 0).astype(int)


def test_mixval_matches_skadas_mixval_scorer():
    metrics = pytest.importorskip("skada.metrics")
    rng = np.random.default_rng(7)
    src, tgt = rng.standard_normal((60, 2)), rng.standard_normal((300, 2)) + 0.3

    class Fixed:
        def fit(self, x, y=None, **kw):
            return self

        def predict(self, x, sample_domain=None, **kw):
            return _quadrant(x)

        def score(self, x, y, sample_domain=None, **kw):
            return float((_quadrant(x) == y).mean())

    x = np.concatenate([src, tgt])
    y = np.r_[_quadrant(src), -np.ones(len(tgt), int)]
    sample_domain = np.r_[np.ones(len(src), int), -np.ones(len(tgt), int)]
    theirs = metrics.MixValScorer(random_state=0)(Fixed(), x, y, sample_domain=sample_domain)
    ours = mixval(_quadrant, tgt, np.random.RandomState(0).permutation(len(tgt)))
    assert 0.3 < ours < 0.95  # mixes across quadrants change class: neither trivial end
    assert ours == pytest.approx(theirs, rel=1e-12)


def test_mixval_rewards_labels_that_mixes_keep():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((400, 2))
    order = rng.permutation(len(x))
    # a mix at 0.55 of two points on one side of a line through the origin stays on that side, so
    # a half-plane rule keeps the first point's label more often than a rule by distance from the
    # origin, which mixing moves inward
    half_plane = mixval(lambda z: (z[:, 0] > 0).astype(int), x, order)
    radial = mixval(lambda z: (np.hypot(z[:, 0], z[:, 1]) > 1).astype(int), x, order)
    assert half_plane > 0.75 and radial < half_plane - 0.1
