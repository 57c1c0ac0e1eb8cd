"""Each loss against a value computed by hand."""

import math

import torch

from madda_rs.losses import center_magnet_loss, confusion_loss, discriminator_loss, pairwise_sq_dists, triplet_loss


def test_triplet_loss_by_hand():
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.5, 0.0]])
    trip = torch.tensor([[0, 1, 2], [0, 1, 3]])
    loss, active = triplet_loss(emb, trip, margin=1.0)
    # (1 - 4 + 1)+ = 0 ; (1 - 0.25 + 1)+ = 1.75  -> mean 0.875, one active
    assert math.isclose(loss.item(), 0.875) and active == 1


def test_center_magnet_loss_by_hand():
    emb = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    centers = torch.tensor([[1.0, 0.0], [3.0, 3.0]])
    # row 0: min(1, 18) = 1 ; row 1: min(20, 1) = 1 -> mean 1
    assert math.isclose(center_magnet_loss(emb, centers).item(), 1.0)


def test_pairwise_sq_dists():
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert torch.allclose(pairwise_sq_dists(a, a), torch.tensor([[0.0, 2.0], [2.0, 0.0]]))


def test_adversarial_losses_by_hand():
    zero = torch.zeros(3)
    assert math.isclose(discriminator_loss(zero, zero).item(), math.log(2), rel_tol=1e-6)
    # D sure and right: source logit +10 labelled 1, target -10 labelled 0
    assert discriminator_loss(torch.tensor([10.0]), torch.tensor([-10.0])).item() < 1e-4
    # the encoder's loss uses inverted labels: target logit -10 (D says target) costs about 10
    assert math.isclose(confusion_loss(torch.tensor([-10.0])).item(), 10.0, rel_tol=1e-3)
