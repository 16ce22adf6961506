import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedtl.shared.config import TaskConfig
from fedtl.shared.data import DataError, load_task_data, read_rows, split_indices
from tests.conftest import synthetic_rows, write_csv


def task(tmp_path, type_="classification", data="data.csv", target="label", **extra) -> TaskConfig:
    return TaskConfig.model_validate(
        {"name": "t", "type": type_, "data": data, "text_columns": "text", "target_column": target, **extra},
        context={"base_dir": tmp_path},
    )


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_all_formats_read_the_same_examples(tmp_path, fmt):
    rows = synthetic_rows(40)
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        write_csv(path, rows)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    data = load_task_data(task(tmp_path, data=path.name))
    assert len(data.train) + len(data.val) == 40
    assert set(data.labels) == {"good", "bad"}
    assert sorted(data.train.texts + data.val.texts) == sorted(r["text"] for r in rows)


def test_missing_column_names_file_row_column(tmp_path):
    write_csv(tmp_path / "data.csv", synthetic_rows(10))
    with pytest.raises(DataError) as err:
        load_task_data(task(tmp_path, target="sentiment"))
    assert err.value.row == 1 and err.value.column == "sentiment"
    assert "data.csv, row 1, column 'sentiment'" in str(err.value)


def test_empty_and_header_only_files(tmp_path):
    (tmp_path / "data.csv").write_text("")
    with pytest.raises(DataError, match="data.csv: file is empty"):
        load_task_data(task(tmp_path))
    (tmp_path / "data.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="no data rows"):
        load_task_data(task(tmp_path))


def test_non_numeric_regression_target(tmp_path):
    rows = synthetic_rows(20)
    rows[6]["score"] = "high"
    write_csv(tmp_path / "data.csv", rows)
    with pytest.raises(DataError) as err:
        load_task_data(task(tmp_path, "regression", target="score"))
    assert (err.value.row, err.value.column) == (7, "score") and "not a number" in str(err.value)


@pytest.mark.parametrize("bad", ["nan", "", "inf"])
def test_nan_or_missing_regression_target(tmp_path, bad):
    rows = synthetic_rows(20)
    rows[3]["score"] = bad
    write_csv(tmp_path / "data.csv", rows)
    with pytest.raises(DataError) as err:
        load_task_data(task(tmp_path, "regression", target="score"))
    assert err.value.row == 4


def test_nan_in_parquet_regression_target(tmp_path):
    rows = [{"text": r["text"], "score": float(r["score"])} for r in synthetic_rows(10)]
    rows[2]["score"] = float("nan")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    with pytest.raises(DataError, match="row 3, column 'score'"):
        load_task_data(task(tmp_path, "regression", data="d.parquet", target="score"))


def test_unknown_label_in_validation_data(tmp_path):
    write_csv(tmp_path / "data.csv", synthetic_rows(20))
    val = synthetic_rows(5, seed=1)
    val[2]["label"] = "meh"
    write_csv(tmp_path / "val.csv", val)
    with pytest.raises(DataError) as err:
        load_task_data(task(tmp_path, validation_data="val.csv"))
    assert "val.csv" in str(err.value) and err.value.row == 3 and "'meh'" in str(err.value)
    assert "validation" in str(err.value)


def test_label_outside_declared_labels(tmp_path):
    write_csv(tmp_path / "data.csv", synthetic_rows(20))
    with pytest.raises(DataError, match="unknown label 'bad'|unknown label 'good'"):
        load_task_data(task(tmp_path, labels=["good", "neutral"]))


def test_empty_text_and_bad_json_line(tmp_path):
    rows = synthetic_rows(8)
    rows[4]["text"] = "  "
    write_csv(tmp_path / "data.csv", rows)
    with pytest.raises(DataError, match="row 5, column 'text': empty text"):
        load_task_data(task(tmp_path))
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", label}\n')
    with pytest.raises(DataError, match="d.jsonl, row 2: invalid JSON"):
        read_rows(tmp_path / "d.jsonl")


def test_ragged_csv_row(tmp_path):
    (tmp_path / "data.csv").write_text("text,label\nhello,good\nhi,bad,extra\n")
    with pytest.raises(DataError, match="row 2"):
        read_rows(tmp_path / "data.csv")


def test_split_is_deterministic_stratified_and_disjoint():
    strata = ["a"] * 50 + ["b"] * 10 + ["c"]
    tr1, va1 = split_indices(61, 0.2, seed=3, strata=strata)
    tr2, va2 = split_indices(61, 0.2, seed=3, strata=strata)
    assert np.array_equal(tr1, tr2) and np.array_equal(va1, va2)
    assert not set(tr1) & set(va1) and len(tr1) + len(va1) == 61
    assert {strata[i] for i in tr1} == {"a", "b", "c"}  # every label is seen in training
    assert sum(strata[i] == "b" for i in va1) == 2
    tr3, _ = split_indices(61, 0.2, seed=4, strata=strata)
    assert not np.array_equal(tr1, tr3)


def test_multilabel_and_regression_encoding(tmp_path):
    write_csv(tmp_path / "data.csv", synthetic_rows(30))
    ml = load_task_data(task(tmp_path, "multilabel", target="tags"))
    assert ml.labels == ["long", "neg", "pos"]
    assert ml.train.targets.shape == (len(ml.train), 3)
    assert set(np.unique(ml.train.targets)) <= {0.0, 1.0}
    reg = load_task_data(task(tmp_path, "regression", target="score"))
    assert reg.train.targets.dtype == np.float32
    assert abs(reg.target_mean - float(reg.train.targets.mean())) < 1e-6 and reg.target_std > 0


def test_max_examples_subsamples_deterministically(tmp_path):
    write_csv(tmp_path / "data.csv", synthetic_rows(100))
    a = load_task_data(task(tmp_path, max_examples=30), seed=1)
    b = load_task_data(task(tmp_path, max_examples=30), seed=1)
    assert len(a.train) + len(a.val) == 30 and a.train.texts == b.train.texts


def test_tasks_over_the_same_file_share_one_split(tmp_path):
    from fedtl.shared.data import load_site_tasks

    write_csv(tmp_path / "data.csv", synthetic_rows(60))
    cls = task(tmp_path)
    reg = TaskConfig.model_validate({"name": "r", "type": "regression", "data": "data.csv", "text_columns": "text",
                                     "target_column": "score"}, context={"base_dir": tmp_path})
    a, b = load_site_tasks([cls, reg], seed=5)
    assert a.train.texts == b.train.texts and a.val.texts == b.val.texts
    assert not set(a.val.texts) & set(b.train.texts)
    alone = load_task_data(reg, seed=5)  # on its own, the regression task splits differently
    assert alone.val.texts != b.val.texts


def test_numeric_labels_name_one_class_however_written(tmp_path):
    rows = [{"text": f"t {i}", "label": [1, 1.0, 2, 2.0][i % 4]} for i in range(40)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_task_data(task(tmp_path, data="d.jsonl"))
    assert data.labels == ["1", "2"]


def test_excel_csv_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    path = write_csv(tmp_path / "data.csv", synthetic_rows(20))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # Excel's "CSV UTF-8"
    data = load_task_data(task(tmp_path))
    assert len(data.train) + len(data.val) == 20 and set(data.labels) == {"good", "bad"}
