"""Every bad input is refused clearly, and nothing is written.

Each case runs a real `fedtl` command in-process and asserts: a non-zero exit, a message
naming the file and row/column (or the config file, line and field, or the flag), no
Python traceback, and no state written (no state_dir, no coordinator folder, no workdir).
All of these fail before any process starts, so the cases take milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.cli_runner import invoke, refused
from tests.conftest import make_site, synthetic_rows, write_csv


# ---------------------------------------------------------------- site data (fedtl train-local)
def site(tmp_path: Path, **kwargs) -> Path:
    return make_site(tmp_path / "site", **kwargs)


def train_local(config: Path) -> tuple[int, str]:
    code, out = invoke("train-local", "--config", str(config), "--quiet")
    assert not (config.parent / "state").exists(), "a refused run wrote state"
    return code, out


def test_csv_header_naming_a_column_twice(tmp_path):
    config = site(tmp_path)
    (config.parent / "data.csv").write_text("text,label,label\nhello,good,bad\nbye,bad,good\n")
    refused(*train_local(config), "data.csv", "column 'label'", "twice")


def test_multilabel_label_on_every_row(tmp_path):
    config = site(tmp_path, types=("multilabel",))
    rows = synthetic_rows(40)
    for row in rows:
        row["tags"] = "always|" + row["tags"]
    write_csv(config.parent / "data.csv", rows)
    refused(*train_local(config), "data.csv", "column 'tags'", "'always'", "every training row")


def test_data_pointing_at_a_folder(tmp_path):
    config = site(tmp_path)
    (config.parent / "data.csv").unlink()
    (config.parent / "data.csv").mkdir()
    refused(*train_local(config), "data.csv", "is a folder")


def test_jsonl_that_is_not_utf8_names_the_line(tmp_path):
    config = site(tmp_path)
    lines = [json.dumps(r) for r in synthetic_rows(10)]
    data = ("\n".join(lines[:6]) + "\n").encode() + '{"text": "caf\xe9", "label": "good"}\n'.encode("latin-1")
    (config.parent / "data.jsonl").write_bytes(data)
    config.write_text(config.read_text().replace("data.csv", "data.jsonl"))
    refused(*train_local(config), "data.jsonl", "row 7", "not UTF-8")


def test_jsonl_row_numbers_are_line_numbers_even_after_blank_lines(tmp_path):
    config = site(tmp_path)
    rows = synthetic_rows(10)
    rows[5]["text"] = ""
    text = "\n\n".join(json.dumps(r) for r in rows) + "\n"  # a blank line between rows
    (config.parent / "data.jsonl").write_text(text)
    config.write_text(config.read_text().replace("data.csv", "data.jsonl"))
    refused(*train_local(config), "data.jsonl", "row 11", "column 'text'", "empty text")


def test_malformed_csv_quote_names_the_line(tmp_path):
    config = site(tmp_path)
    lines = ["text,label"] + [f"{r['text']},{r['label']}" for r in synthetic_rows(10)]
    lines[4] = 'broken "quote" here,good'
    lines[5] = '"unterminated,good'
    (config.parent / "data.csv").write_text("\n".join(lines) + "\n")
    refused(*train_local(config), "data.csv", "row 5", "line 6", "malformed CSV", "never closed")


def test_state_dir_that_is_a_file(tmp_path):
    config = site(tmp_path)
    (config.parent / "state").write_text("not a folder")
    code, out = invoke("train-local", "--config", str(config), "--quiet")
    refused(code, out, "site.yaml", "line 2", "field 'state_dir'", "is a file")
    assert (config.parent / "state").read_text() == "not a folder"


def test_yaml_with_a_key_twice(tmp_path):
    config = site(tmp_path)
    config.write_text(config.read_text() + "tasks:\n  - {name: other, type: regression, data: data.csv, "
                      "text_columns: text, target_column: score}\n")
    refused(*train_local(config), "site.yaml", "line", "'tasks' appears twice")


@pytest.mark.parametrize("setting, field", [("device: cuda", "device"), ("precision: fp16", "precision")])
def test_gpu_settings_without_a_gpu_name_the_file_line_and_field(tmp_path, setting, field):
    config = site(tmp_path)
    config.write_text(config.read_text().replace("encoder: tiny\n", f"encoder: tiny\n{setting}\n"))
    refused(*train_local(config), "site.yaml", "line 4", f"field '{field}'", "CUDA")


# ---------------------------------------------------------------- federation.yaml (fedtl coordinator)
def federation(tmp_path: Path, **settings) -> Path:
    config = {"name": "f", "encoder": "tiny", "update_mode": "full", "state_dir": "coordinator",
              "superlink": {"fleet_address": "127.0.0.1:9092"}, **settings}
    path = tmp_path / "federation.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def coordinator(path: Path) -> tuple[int, str]:
    code, out = invoke("coordinator", "--config", str(path), "--insecure")
    assert not (path.parent / "coordinator").exists(), "a refused coordinator wrote state"
    return code, out


@pytest.mark.parametrize("address, why", [("127.0.0.1", "not HOST:PORT"), ("127.0.0.1:99999", "out of range"),
                                          ("127.0.0.1:ninety", "not HOST:PORT")])
def test_fleet_address_without_a_valid_port(tmp_path, address, why):
    refused(*coordinator(federation(tmp_path, superlink={"fleet_address": address})),
            "federation.yaml", "field 'superlink.fleet_address'", why)


def test_fleet_port_in_use_is_named_before_anything_starts(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused(*coordinator(federation(tmp_path, superlink={"fleet_address": f"127.0.0.1:{port}"})),
                "federation.yaml", "superlink.fleet_address", f"127.0.0.1:{port}", "choose another port")


def test_encoder_folder_that_does_not_exist(tmp_path):
    refused(*coordinator(federation(tmp_path, encoder="./no-such-model")), "federation.yaml", "line 2",
            "field 'encoder'", "no-such-model")


def test_last_n_beyond_the_encoders_layers(tmp_path):
    refused(*coordinator(federation(tmp_path, update_mode="last:5")), "federation.yaml", "line 3",
            "field 'update_mode'", "has 2")


# ---------------------------------------------------------------- fedtl demo
def demo(tmp_path: Path, *args: str) -> tuple[int, str]:
    code, out = invoke("demo", "--workdir", str(tmp_path / "work"), *args)
    assert not (tmp_path / "work").exists(), "a refused demo wrote its workdir"
    return code, out


def test_demo_rounds_below_one_names_the_flag(tmp_path):
    refused(*demo(tmp_path, "--rounds", "-1"), "--rounds")


def test_demo_unknown_update_mode_names_the_flag(tmp_path):
    refused(*demo(tmp_path, "--update", "adapters"), "--update 'adapters'", "full, last:N")


def test_demo_unknown_codec_names_the_flag(tmp_path):
    refused(*demo(tmp_path, "--codec", "int4"), "--codec 'int4'", "topk:F")


def test_demo_update_mode_beyond_the_encoder_names_the_flag(tmp_path):
    refused(*demo(tmp_path, "--encoder", "tiny", "--update", "last:4"), "--update last:4", "has 2")


def test_demo_federation_file_that_is_a_list(tmp_path):
    path = tmp_path / "fed.yaml"
    path.write_text("- rounds: 3\n- encoder: tiny\n")
    refused(*demo(tmp_path, "--federation", str(path)), "fed.yaml", "line 1", "expected a mapping", "a list")


def test_demo_federation_file_errors_name_its_own_lines(tmp_path):
    path = tmp_path / "fed.yaml"
    path.write_text("name: mine\nrounds: 3\nstrategy:\n  name: fedavgg\n")
    refused(*demo(tmp_path, "--federation", str(path)), "fed.yaml", "line 4", "field 'strategy.name'")


def test_demo_checks_every_sites_data_before_starting(tmp_path):
    good = make_site(tmp_path / "a", name="alpha")
    bad = make_site(tmp_path / "b", name="beta")
    rows = synthetic_rows(20)
    rows[3]["label"] = ""
    write_csv(bad.parent / "data.csv", rows)
    refused(*demo(tmp_path, "--encoder", "tiny", "--site", str(good), "--site", str(bad)),
            "b/data.csv", "row 4", "column 'label'")


# ---------------------------------------------------------------- fedtl site / fedtl ui
def test_site_with_an_unresolvable_coordinator_says_so(tmp_path):
    config = site(tmp_path)
    code, out = invoke("site", "--config", str(config), "--coordinator", "no-such-host.invalid:9092", "--insecure")
    refused(code, out, "--coordinator", "cannot resolve host 'no-such-host.invalid'")
    assert not (config.parent / "state").exists()


def test_ui_port_out_of_range_names_the_flag(tmp_path):
    refused(*invoke("ui", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--port", "99999"), "--port")
