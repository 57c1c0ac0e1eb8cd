"""Direct tests of behaviours that a check of the suite against injected bugs found unguarded, or
guarded only by an accuracy threshold that happened to be crossed: each test here fails when its
behaviour is broken, whatever the accuracy of a run."""

import math

import numpy as np
import pytest
import torch

import madda_rs.methods.madda as madda_module
import madda_rs.run.processes as processes
from madda_rs import native
from madda_rs.config import PRESETS, TrainConfig
from madda_rs.data.domains import REGISTRY, RegisteredDomain
from madda_rs.data.images import ImageSet
from madda_rs.data.run_data import RunData, prepare_data
from madda_rs.losses import triplet_loss
from madda_rs.methods.common import ema_update
from madda_rs.methods.madda import MaddaTargetStage
from madda_rs.models import EmbeddingNet
from madda_rs.run.folder import RunFolder, load_model
from madda_rs.run.processes import Parallel
from madda_rs.scores.label_free import soft_neighbourhood_density
from madda_rs.scores.predictors import embed
from madda_rs.training import train

from digits import bars

CPU = torch.device("cpu")


def test_the_triplet_margin_enters_the_loss():
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    trip = torch.tensor([[0, 1, 2]])  # d(a, p) = 1, d(a, n) = 4
    for margin, expected, active in ((1.0, 0.0, 0), (3.5, 0.5, 1), (5.0, 2.0, 1)):
        loss, n_active = triplet_loss(emb, trip, margin=margin)
        assert math.isclose(loss.item(), expected) and int(n_active) == active, margin


def test_the_mean_teacher_moves_slowly_toward_the_student():
    teacher, student = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    torch.nn.init.zeros_(teacher.weight), torch.nn.init.zeros_(teacher.bias)
    torch.nn.init.ones_(student.weight), torch.nn.init.ones_(student.bias)
    ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher.weight, torch.full((1, 2), 0.1))  # 0.9 * 0 + 0.1 * 1, not 0.9
    ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher.bias, torch.tensor([0.19]))
    assert torch.equal(student.weight, torch.ones(1, 2))  # the student is untouched


def test_overridden_names_settings_whose_preset_value_is_falsy():
    assert "augment" in TrainConfig(preset="paper", augment=True).overridden
    assert "im_weight" in TrainConfig(preset="paper", im_weight=0.5).overridden
    assert "ema_decay" in TrainConfig(preset="paper", ema_decay=0.9).overridden
    assert {"augment", "guard"} <= set(TrainConfig(preset="improved", augment=False, guard=False).overridden)
    assert TrainConfig(preset="paper", augment=PRESETS["paper"]["augment"]).overridden == ()


def test_a_checkpoint_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path)
    folder.save("checkpoint.pt", {"epoch": 1})
    real_save = torch.save

    def killed_mid_write(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        folder.save("checkpoint.pt", {"epoch": 2})
    monkeypatch.setattr(torch, "save", real_save)
    assert folder.load("checkpoint.pt") == {"epoch": 1}  # the old checkpoint, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary left behind


def test_the_source_must_be_labelled_whatever_its_kind(tmp_path, monkeypatch):
    x, y = bars(40, 28, 0)
    np.savez(tmp_path / "unlabelled.npz", images=x)
    target = (x, y)
    with pytest.raises(ValueError, match="source must be labelled"):
        prepare_data(TrainConfig(src=str(tmp_path / "unlabelled.npz"), tgt="b"), target=target)
    monkeypatch.setitem(REGISTRY, "nolabels", RegisteredDomain("nolabels", lambda train, config: ImageSet(
        torch.zeros(40, 1, 28, 28)), None))
    with pytest.raises(ValueError, match="source must be labelled"):
        prepare_data(TrainConfig(src="nolabels", tgt="b"), target=target)


def test_gradients_are_averaged_over_ranks_by_their_share_of_the_batch(monkeypatch):
    """Rank 0 holds a quarter of the batch, rank 1 (simulated) three quarters: the synced
    gradient is 0.25 g0 + 0.75 g1, the whole batch's gradient, not g0 + g1 or their plain mean."""
    other_rank = {"weight": torch.tensor([[4.0, 8.0]]), "bias": torch.tensor([2.0])}

    def all_reduce(flat, *args, **kwargs):  # what rank 1 contributes: its gradient times its share
        flat.add_(torch.cat([other_rank["weight"].reshape(-1), other_rank["bias"]]) * 0.75)

    import torch.distributed as dist

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    layer = torch.nn.Linear(2, 1)
    layer.weight.grad, layer.bias.grad = torch.tensor([[1.0, 2.0]]), torch.tensor([3.0])
    Parallel(rank=0, world=2).sync_grads(layer.parameters(), share=0.25)
    assert torch.allclose(layer.weight.grad, torch.tensor([[0.25 + 3.0, 0.5 + 6.0]]))
    assert torch.allclose(layer.bias.grad, torch.tensor([0.75 + 1.5]))
    assert processes.Parallel is Parallel


class _VotesClassZero:
    """A predictor whose kNN vote says class 0 for every image."""

    def __init__(self, emb: np.ndarray, labels: np.ndarray) -> None:
        self.emb, self.labels = emb, labels

    def predict_embedded(self, tgt: np.ndarray) -> np.ndarray:
        return np.zeros(len(tgt), dtype=np.int64)


def test_the_cluster_label_magnet_keeps_only_images_where_the_vote_agrees(monkeypatch):
    torch.manual_seed(0)
    config = TrainConfig(preset="improved", embedding_dim=8, target_batch_size=20, ema_decay=0.0, im_weight=0.0)
    model = EmbeddingNet(8)
    images = torch.rand(60, 1, 28, 28) * 2 - 1
    data = RunData(ImageSet(images[:20], torch.arange(20) % 10), None, ImageSet(images[20:]), None)
    tgt_emb = embed(model, data.tgt_train.floats())
    predictor = _VotesClassZero(tgt_emb[:10].copy(), np.arange(10))  # one centre on each of 10 target images
    stage = MaddaTargetStage(config, model, predictor, data, CPU)
    seen = []
    real = madda_module.labelled_magnet_loss

    def spy(emb, centers, assign, keep):
        seen.append((assign.clone(), keep.clone()))
        return real(emb, centers, assign, keep)

    monkeypatch.setattr(madda_module, "labelled_magnet_loss", spy)
    rec = stage.magnet_epoch(torch.Generator().manual_seed(0), None, 0)
    assign = torch.cat([a for a, _ in seen])
    keep = torch.cat([k for _, k in seen])
    assert len(set(assign.tolist())) > 1  # the images fall in several clusters ...
    assert torch.equal(keep, assign == 0)  # ... and only those of class 0's cluster agree with the vote
    assert 0 < rec["magnet_kept"] < 1


@pytest.fixture(scope="module")
def improved_run(generated_data_dir, tmp_path_factory):
    """An improved-preset run (augmentation and a mean teacher on), its folder and its data."""
    out = tmp_path_factory.mktemp("improved") / "run"
    config = TrainConfig(src="mnist", tgt="usps", preset="improved", epochs_source=2, epochs_target=2, eval_every=1,
                         data_dir=generated_data_dir, download=False, device="cpu", threads=1, guard=False)
    result = train(config, str(out))
    return result, out, prepare_data(config)


@torch.no_grad()
def _embed(model, images):
    """Embeddings written out, apart from the package's own helper: eval mode, images as they are."""
    return model.eval()(images).numpy()


def _accuracy_by_hand(source_model, target_model, data, k):
    """Algorithm 3 written out: no augmentation, eval mode, the kNN vote over source embeddings."""
    pred = native.knn_predict(_embed(source_model, data.src_train.floats()), data.src_train.labels.numpy(),
                              _embed(target_model, data.tgt_test.floats()), k)
    return float((pred == data.tgt_test.labels.numpy()).mean())


def test_evaluation_scores_unaugmented_images(improved_run):
    result, out, data = improved_run
    assert result.config.augment
    source, target = load_model(out / "source.pt"), load_model(out / "target.pt")
    assert result.target_accuracy == _accuracy_by_hand(source, target, data, result.config.k)
    # a continuous score too: accuracy on easy digits could match by chance
    snd = soft_neighbourhood_density(_embed(target, data.tgt_train.floats()))
    assert result.history["target"][-1]["snd"] == pytest.approx(snd, rel=1e-6)


def test_the_mean_teacher_is_the_model_scored_not_the_student(improved_run):
    result, out, data = improved_run
    state = RunFolder(out).load("checkpoint.pt")["stages"]["target"]
    source = load_model(out / "source.pt")
    teacher, student = load_model(out / "target.pt"), load_model(out / "target.pt")
    teacher.load_state_dict(state["teacher"])
    student.load_state_dict(state["target"])
    assert result.target_accuracy == _accuracy_by_hand(source, teacher, data, result.config.k)
    snd = {name: soft_neighbourhood_density(_embed(model, data.tgt_train.floats()))
           for name, model in (("teacher", teacher), ("student", student))}
    assert snd["teacher"] != pytest.approx(snd["student"], rel=1e-6)  # so the check below tells them apart
    assert result.history["target"][-1]["snd"] == pytest.approx(snd["teacher"], rel=1e-6)
