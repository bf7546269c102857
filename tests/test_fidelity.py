import numpy as np
import pytest

from solrl.fidelity import kept_set_metrics, ranking_metrics


def test_perfect_proxy():
    truth = np.random.default_rng(0).random(96)
    m = ranking_metrics(truth, truth, k=24)
    assert m["mean_true_rank_top"] == pytest.approx(6.5)
    assert m["mean_true_rank_bottom"] == pytest.approx(90.5)
    assert m["spearman"] == pytest.approx(1.0) and m["kendall"] == pytest.approx(1.0)
    assert m["top_hit"] == 1.0 and m["bottom_hit"] == 1.0


def test_random_proxy_averages_to_the_middle():
    rng = np.random.default_rng(1)
    tops, bots = [], []
    for _ in range(400):
        m = ranking_metrics(rng.random(96), rng.random(96), k=24)
        tops.append(m["mean_true_rank_top"])
        bots.append(m["mean_true_rank_bottom"])
    assert np.mean(tops) == pytest.approx(48.5, abs=1.0)
    assert np.mean(bots) == pytest.approx(48.5, abs=1.0)


def test_reversed_proxy_and_kept_set():
    truth = np.arange(96, dtype=float)
    m = ranking_metrics(-truth, truth, k=24)
    assert m["spearman"] == pytest.approx(-1.0) and m["top_hit"] == 0.0
    k = kept_set_metrics([3, 2, 1, 0], [0.9, 0.8, 0.2, 0.1], ["top", "top", "bottom", "bottom"])
    assert k["top_above_median"] == 1.0 and k["kept_spearman"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least K"):
        ranking_metrics([1, 2], [1, 2], k=24)
