import pytest
import torch

from solrl import nft


def test_advantages_per_prompt_mean_global_std_clip():
    R = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0], dtype=torch.float64)
    pid = [0, 0, 0, 1, 1, 1]
    A, r = nft.advantages(R, pid)
    std = R.std(unbiased=False) + 1e-4
    assert torch.allclose(A[:3], torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64) / std)
    assert torch.all(A[3:] == 0) and torch.all(r[3:] == 0.5)  # tied groups are kept at r = 0.5
    assert torch.allclose(r, A / 10 + 0.5)
    A2, r2 = nft.advantages(torch.tensor([0.0, 0.0, 0.0, 1000.0]), [0, 0, 0, 0])
    assert A2.max() <= 5 and r2.max() <= 1.0 and r2.min() >= 0.0


def test_hand_computed_loss():
    x0 = torch.tensor([[1.0, -1.0]])
    x_t = torch.tensor([[0.5, 0.5]])
    t = torch.tensor([0.5])
    v_theta = torch.tensor([[0.0, 2.0]])
    v_old = torch.tensor([[1.0, 1.0]])
    v_ref = torch.tensor([[0.0, 0.0]])
    r = torch.tensor([0.75])
    loss, terms = nft.nft_loss(x0, x_t, t, v_theta, v_old, v_ref, r, beta=1.0, kl_beta=0.1)
    # v+ = v_theta = (0, 2): x0+ = (0.5, -0.5), err (-0.5, 0.5): w+ = 0.5, L+ = mean(0.25/0.5) = 0.5
    # v- = 2 v_old - v_theta = (2, 0): x0- = (-0.5, 0.5), err (-1.5, 1.5): w- = 1.5, L- = 2.25/1.5 = 1.5
    # l = 0.75*0.5 + 0.25*1.5 = 0.75; policy = 5*0.75 = 3.75; kl = mean(0, 4) = 2 -> +0.2
    assert terms["loss_pos"] == pytest.approx(0.5)
    assert terms["loss_neg"] == pytest.approx(1.5)
    assert float(loss) == pytest.approx(3.95)


def test_zero_gradient_at_old_with_r_half():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 8, generator=g), torch.randn(4, 3, 8, generator=g)
    t = torch.tensor([0.2, 0.5, 0.7, 1.0])
    x_t = (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * eps
    v_old = torch.randn(4, 3, 8, generator=g)
    v_theta = v_old.clone().requires_grad_(True)
    loss, _ = nft.nft_loss(x0, x_t, t, v_theta, v_old, None, torch.full((4,), 0.5), beta=1.0, kl_beta=0.0)
    loss.backward()
    assert torch.count_nonzero(v_theta.grad) == 0


@pytest.mark.parametrize("r,toward", [(1.0, True), (0.0, False)])
def test_r_one_moves_toward_target_r_zero_away(r, toward):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 16, generator=g), torch.randn(2, 16, generator=g)
    t = torch.tensor([0.6, 0.3])
    x_t = (1 - t.view(-1, 1)) * x0 + t.view(-1, 1) * eps
    target = eps - x0
    v_old = torch.randn(2, 16, generator=g)
    v = v_old.clone().requires_grad_(True)
    loss, _ = nft.nft_loss(x0, x_t, t, v, v_old, None, torch.full((2,), r), kl_beta=0.0)
    loss.backward()
    with torch.no_grad():
        stepped = v - 1e-3 * v.grad
    before = (v_old - target).norm()
    after = (stepped - target).norm()
    assert (after < before) == toward


def test_old_decay_schedules_and_ema():
    assert [nft.old_decay(s, 0) for s in (0, 10, 1000)] == [0.0, 0.0, 0.0]
    assert nft.old_decay(1, 1) == pytest.approx(0.001)
    assert nft.old_decay(250, 1) == pytest.approx(0.25)
    assert nft.old_decay(500, 1) == pytest.approx(0.5) and nft.old_decay(5000, 1) == 0.5
    assert nft.old_decay(75, 2) == 0.0 and nft.old_decay(74, 2) == 0.0
    assert nft.old_decay(76, 2) == pytest.approx(0.0075)
    assert nft.old_decay(175, 2) == pytest.approx(0.75)
    assert nft.old_decay(400, 2) == pytest.approx(0.999)
    assert (
        nft.ema_decay(0) == pytest.approx(0.1) and nft.ema_decay(8) == pytest.approx(0.5) and nft.ema_decay(1000) == 0.9
    )
    target = {"a": torch.zeros(3)}
    nft.lerp_(target, {"a": torch.ones(3)}, keep=0.25)
    assert torch.allclose(target["a"], torch.full((3,), 0.75))
    with pytest.raises(ValueError, match="decay type"):
        nft.old_decay(1, 7)
