import numpy as np
import pytest
import torch

from solrl.sampling import sigma_grid, solve

# Data x0 ~ N(MU_d, S_d^2), independent dimensions with different scales (a single scale lets
# error terms cancel at some step counts and blurs the measured order).
MU = torch.linspace(-1, 1, 16, dtype=torch.float64)
S = torch.linspace(0.2, 2.0, 16, dtype=torch.float64)


def _m(t):
    return (1 - t) * MU


def _var(t):
    return (1 - t) ** 2 * S**2 + t**2


def exact_velocity(x, t):
    # E[eps - x0 | x_t = x] for Gaussian data and x_t = (1 - t) x0 + t eps
    return (t - (1 - t) * S**2) / _var(t) * (x - _m(t)) - MU


def exact_flow(x, t_from, t_to):
    # the flow of a Gaussian is affine: the standardised coordinate is constant along it
    return _m(t_to) + torch.sqrt(_var(t_to) / _var(t_from)) * (x - _m(t_from))


def _error(solver, steps, lo=0.1, hi=0.9):
    # interior times (docs/algorithm.md, "Solvers and sigma grids"): the λ singularities at σ = 1 and 0 blur the order
    x = torch.randn(64, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sig = np.linspace(hi, lo, steps + 1)
    out = solve(lambda z, s: exact_velocity(z, s), x, sig, solver)
    return float((out - exact_flow(x, hi, lo)).abs().mean())


@pytest.mark.parametrize("solver,order", [("euler", 1), ("dpm2", 2)])
def test_convergence_order(solver, order):
    ratios = [_error(solver, n) / _error(solver, 2 * n) for n in (16, 32, 64, 128)]
    expected = 2**order
    assert all(expected * 0.9 < r < expected * 1.2 for r in ratios), ratios


def test_full_grid_is_finite_and_accurate():
    x = torch.randn(256, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for solver in ("euler", "dpm2"):
        out = solve(lambda z, s: exact_velocity(z, s), x, sigma_grid("linear", 200), solver)
        assert torch.isfinite(out).all()
        # samples of N(0, 1) mapped to the data marginal
        assert torch.allclose(out, exact_flow(x, 1.0, 0.0), atol=0.05)


def test_batched_equals_one_by_one():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(9, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))

    def v(z, s):
        return net(torch.cat([z, torch.full((z.shape[0], 1), s)], 1))

    x = torch.randn(5, 8)
    for solver in ("euler", "dpm2"):
        batched = solve(v, x, sigma_grid("linear", 6), solver)
        single = torch.cat([solve(v, x[i : i + 1], sigma_grid("linear", 6), solver) for i in range(5)])
        assert torch.allclose(batched, single, atol=1e-6)


def test_sigma_grids():
    assert np.allclose(sigma_grid("linear", 4), [1, 0.75, 0.5, 0.25, 0])
    sd3 = sigma_grid("sd3", 10, shift=3.0)
    assert np.allclose(
        sd3, [1.0, 0.9601, 0.9133, 0.8577, 0.7904, 0.7073, 0.6022, 0.4649, 0.2780, 0.0089, 0.0], atol=1e-4
    )
    flux = sigma_grid("flux", 6, seq_len=1024)
    assert flux[0] == 1.0 and flux[-1] == 0.0 and np.all(np.diff(flux) < 0)
    assert flux[-2] > 1 / 6  # the μ-shift pushes the grid toward noise
    with pytest.raises(ValueError, match="unknown sigma grid"):
        sigma_grid("cosine", 4)
