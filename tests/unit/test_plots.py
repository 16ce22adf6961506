"""Round plots stay readable and bounded in size whatever the number of sites."""

import matplotlib.image as mpimg

from fedtl.server.history import RoundRecord
from fedtl.server.plots import interference_heatmap, site_metric_plot


def matrix(n: int) -> dict[str, dict[str, float]]:
    names = [f"site-{i:04d}" for i in range(n)]
    return {a: {b: (1.0 if a == b else 0.1) for b in names} for a in names}


def test_the_interference_heatmap_of_many_sites_has_a_bounded_canvas(tmp_path):
    few = mpimg.imread(interference_heatmap(matrix(3), 1, tmp_path / "few.png"))
    many = mpimg.imread(interference_heatmap(matrix(300), 1, tmp_path / "many.png"))
    assert few.shape[0] < many.shape[0] <= 1400  # 300 sites once drew a 330-inch canvas (GBs of RAM)


def test_the_metric_plot_of_many_sites_draws_their_mean(tmp_path):
    def report(value):
        return {"report": {"primary": ["macro_f1"], "tasks": ["t"], "val/t/macro_f1": value,
                           "baseline/t/macro_f1": 0.5}}

    history = [RoundRecord.model_validate({"round": r, "sites": {f"s{i}": report(0.5 + 0.01 * r) for i in range(50)}})
               for r in (1, 2)]
    path = site_metric_plot(history, tmp_path / "metrics.png")
    assert mpimg.imread(path).shape[0] < 1000
