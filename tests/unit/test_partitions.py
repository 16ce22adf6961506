"""Virtual sites for `fedtl simulate`: every row once, even sizes, label skew set by alpha."""

from collections import Counter

import numpy as np
import pytest

from fedtl.shared.config import load_site_config
from fedtl.shared.data import load_site_tasks
from fedtl.shared.partitions import dirichlet_partition, write_virtual_sites

LABELS = ["a"] * 600 + ["b"] * 300 + ["c"] * 100


def skew(parts, labels) -> float:
    """Mean over sites of the share of the site's most common label."""
    return float(np.mean([Counter(labels[i] for i in p).most_common(1)[0][1] / len(p) for p in parts]))


def test_every_row_goes_to_exactly_one_site_and_sizes_are_even():
    parts = dirichlet_partition(LABELS, 30, alpha=0.5, seed=1)
    rows = np.concatenate(parts)
    assert len(rows) == len(LABELS) and len(set(rows.tolist())) == len(LABELS)
    assert {len(p) for p in parts} <= {33, 34}


def test_small_alpha_skews_labels_and_large_alpha_does_not():
    skewed = skew(dirichlet_partition(LABELS, 20, alpha=0.05, seed=0), LABELS)
    even = skew(dirichlet_partition(LABELS, 20, alpha=1000.0, seed=0), LABELS)
    assert skewed > 0.9 and even < 0.75  # the whole set's most common label holds 60%


def test_the_cut_depends_only_on_the_seed():
    a, b = dirichlet_partition(LABELS, 10, 0.5, seed=3), dirichlet_partition(LABELS, 10, 0.5, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = dirichlet_partition(LABELS, 10, 0.5, seed=4)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_too_many_sites_for_the_rows_is_a_clear_error():
    with pytest.raises(ValueError, match="use at most 250 sites"):
        dirichlet_partition(LABELS, 400, 0.5)


def test_virtual_sites_are_loadable_site_folders(tmp_path):
    paths = write_virtual_sites(tmp_path, "polarity", 50, alpha=0.3, encoder="tiny")
    assert len(paths) == 50
    config = load_site_config(paths[7])
    assert config.name == "sim-0007" and config.encoder == "tiny"
    [data] = load_site_tasks(config.tasks)
    assert data.labels == ["negative", "neutral", "positive"]  # every site knows every class
    assert len(data.train) + len(data.val) in (150, 151)  # 7,520 words over 50 sites
