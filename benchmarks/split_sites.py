"""Deal one bundled site's rows across several sites: same task, disjoint data (for benchmarks)."""

from __future__ import annotations

import copy
from pathlib import Path


def split_site(path: Path, parts: int, dest: Path, seed: int = 0) -> list[Path]:
    """``parts`` sites with the same tasks, each holding a disjoint share of ``path``'s rows.

    A federation where transfer surely exists: every site has the same task and too little
    data alone. Tasks reading one file keep their rows together (one shuffle per file).
    """
    import csv
    import random as random_

    import yaml

    spec = yaml.safe_load(path.read_text())
    shards: dict[Path, list[Path]] = {}
    for task in spec["tasks"]:
        source = (path.parent / task["data"]).resolve()
        if source in shards:
            continue
        with source.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header, rows = next(reader), list(reader)
        random_.Random(seed).shuffle(rows)
        shards[source] = []
        for k in range(parts):
            out = dest / "data" / f"{source.stem}_{k + 1}{source.suffix}"
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerows([header, *rows[k::parts]])
            shards[source].append(out)
    paths = []
    for k in range(parts):
        site = copy.deepcopy(spec)
        site["name"] = f"{spec['name']}_{k + 1}"
        site["state_dir"] = str(dest / "state" / site["name"])
        for task in site["tasks"]:
            task["data"] = str(shards[(path.parent / task["data"]).resolve()][k])
        paths.append(dest / "sites" / f"{site['name']}.yaml")
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        paths[-1].write_text(yaml.safe_dump(site, sort_keys=False))
    return paths
