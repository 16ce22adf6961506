from pathlib import Path

import pytest

from fedtl.shared.config import SiteConfig, TaskType, load_site_config
from fedtl.shared.examples import SITES, examples_root
from fedtl.shared.yamlconfig import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


GOOD = """\
name: hospital_a
state_dir: state
tasks:
  - name: sentiment
    type: classification
    data: reviews.csv
    text_columns: review
    target_column: label
"""


def test_valid_config_resolves_paths_relative_to_the_file(tmp_path):
    cfg = load_site_config(write(tmp_path, GOOD))
    assert isinstance(cfg, SiteConfig)
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.tasks[0].data == [tmp_path / "reviews.csv"]
    assert cfg.tasks[0].text_columns == ["review"]
    assert cfg.tasks[0].type is TaskType.classification
    assert cfg.training.seed == 0 and cfg.device == "auto"


def test_error_names_file_line_and_field(tmp_path):
    path = write(tmp_path, GOOD.replace("type: classification", "type: clasification"))
    with pytest.raises(ConfigError) as err:
        load_site_config(path)
    msg = str(err.value)
    assert str(path) in msg and "line 5" in msg and "tasks.0.type" in msg


def test_unknown_key_is_rejected_with_its_line(tmp_path):
    path = write(tmp_path, GOOD + "  - name: b\n    type: regression\n    data: x.csv\n"
                 "    text_columns: t\n    target_column: y\n    lr: 3\n")
    with pytest.raises(ConfigError) as err:
        load_site_config(path)
    assert "line 14" in str(err.value) and "tasks.1.lr" in str(err.value)


@pytest.mark.parametrize("bad, needle", [
    ("validation_split: 0.2", "validation_split"),
    ("loss_weight: 1", "loss_weight"),
])
def test_out_of_range_values(tmp_path, bad, needle):
    broken = bad.replace("0.2", "1.5").replace(": 1", ": -1")
    path = write(tmp_path, GOOD + f"    {broken}\n")
    with pytest.raises(ConfigError, match=needle):
        load_site_config(path)


def test_duplicate_task_names_and_labels_for_regression(tmp_path):
    twice = GOOD + GOOD.split("tasks:\n")[1]
    with pytest.raises(ConfigError, match="unique"):
        load_site_config(write(tmp_path, twice))
    reg = GOOD.replace("classification", "regression") + "    labels: [a, b]\n"
    with pytest.raises(ConfigError, match="labels"):
        load_site_config(write(tmp_path, reg))


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="line 2"):
        load_site_config(write(tmp_path, "name: a\n  bad: [\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_site_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="empty"):
        load_site_config(write(tmp_path, ""))


def test_bundled_example_sites_are_valid():
    for name in SITES:
        cfg = load_site_config(examples_root() / "sites" / f"{name}.yaml")
        for task in cfg.tasks:
            assert all(p.exists() for p in task.data), task.data


def test_the_readmes_config_examples_load_as_written(tmp_path):
    """People copy the README's federation.yaml and site.yaml: they must pass the checks they describe."""
    import re

    from fedtl.shared.config import load_site_config
    from fedtl.shared.federation_config import load_federation_config

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL)
    loaded = 0
    for i, block in enumerate(blocks):
        path = tmp_path / f"block{i}.yaml"
        path.write_text(block)
        if re.search(r"^tasks:", block, re.MULTILINE):
            load_site_config(path)
        else:
            load_federation_config(path)
        loaded += 1
    assert loaded >= 3


def test_the_readmes_federation_yaml_shows_the_defaults_the_demo_and_benchmarks_run(tmp_path):
    """One set of defaults: the shape of a round is federation.yaml's default, the README's example, and
    what `fedtl demo` writes (it takes them from FederationConfig)."""
    import re

    import yaml

    from fedtl.cli.demo import demo_federation
    from fedtl.shared.federation_config import FederationConfig

    blocks = re.findall(r"```yaml\n(.*?)```", (Path(__file__).parents[2] / "README.md").read_text(), re.DOTALL)
    shown = yaml.safe_load(next(b for b in blocks if b.startswith("name: my-federation")))
    written = yaml.safe_load(demo_federation(tmp_path, 2, {}, {}).read_text())
    for key in ("encoder", "update_mode", "rounds", "max_steps", "encoder_epochs"):
        default = FederationConfig.model_fields[key].default
        assert shown[key] == default, f"README shows {key}: {shown[key]}, the default is {default}"
        assert written.get(key, default) == default, f"fedtl demo writes {key}: {written[key]}"


def test_every_setting_of_site_yaml_and_federation_yaml_says_what_it_does():
    """Each field's description is what --help, errors and the docs show a user."""
    import inspect

    import pydantic

    import fedtl.shared.config as site_config
    import fedtl.shared.federation_config as federation_config

    missing = []
    for module in (site_config, federation_config):
        for name, model in vars(module).items():
            if inspect.isclass(model) and issubclass(model, pydantic.BaseModel) and model.__module__ == module.__name__:
                missing += [f"{name}.{field}" for field, info in model.model_fields.items() if not info.description]
    assert not missing, "fields without a description: " + ", ".join(missing)


def _model_fields(model, prefix: str = "") -> list[str]:
    """Every field of a pydantic model, nested models' fields as ``outer.inner``."""
    import typing

    from pydantic import BaseModel

    names = []
    for name, info in model.model_fields.items():
        names.append(prefix + name)
        for t in (info.annotation, *typing.get_args(info.annotation)):
            for u in (t, *typing.get_args(t)):
                if isinstance(u, type) and issubclass(u, BaseModel):
                    names += _model_fields(u, f"{prefix}{name}.")
    return names


def test_the_readmes_config_blocks_name_every_setting():
    """A setting added to federation.yaml or site.yaml is documented where people copy from."""
    import re

    from fedtl.shared.config import SiteConfig
    from fedtl.shared.federation_config import FederationConfig

    blocks = re.findall(r"```yaml\n(.*?)```", (Path(__file__).parents[2] / "README.md").read_text(), re.DOTALL)
    federation = next(b for b in blocks if b.startswith("name: my-federation"))
    site = next(b for b in blocks if re.search(r"^tasks:", b, re.MULTILINE))
    for model, block in ((FederationConfig, federation), (SiteConfig, site)):
        keys = set(re.findall(r"^\s*#?\s*-?\s*([a-z0-9_]+):", block, re.MULTILINE))
        missing = [f for f in _model_fields(model) if f.rsplit(".", 1)[-1] not in keys]
        assert not missing, f"README's {model.__name__} block lacks {missing}"


def test_the_readmes_guidance_table_is_the_one_benchmarks_guidance_builds_from_the_results():
    """The README's round-shape table is generated from benchmarks/results/*/results.json, and its
    "(default)" column from FederationConfig and TrainingConfig: a hand edit, a rerun without
    regenerating, or a changed default without its benchmark fails here."""
    import re
    import sys

    root = Path(__file__).parents[2]
    sys.path.insert(0, str(root / "benchmarks"))
    import guidance

    shown = re.search(r"<!-- guidance:start -->\n(.*?)\n<!-- guidance:end -->", (root / "README.md").read_text(),
                      re.DOTALL)
    assert shown is not None, "README.md lost its guidance markers"
    assert shown.group(1) == guidance.table(), "run: python benchmarks/guidance.py"
    assert "(default)" in shown.group(1), "no benchmark ran today's defaults"
