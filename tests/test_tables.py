"""Tables from files (data.dataset: table): CSV/TSV end to end, one-hot categories fitted on the
training split, bad tables refused naming the column and row, predict --input by column names."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import QUIET, ROOT, tree_digest

from trainkit.cli import main
from trainkit.data.datamodule import DataModule
from trainkit.errors import ConfigError

RECIPE = ROOT / "recipes" / "wine_table.yaml"
COLORS = ("red", "green", "blue")


def write_table(path: Path, n: int = 240, seed: int = 0, delimiter: str = ",", colors=COLORS) -> Path:
    """size (numeric) and color (text) decide the class; noise is a distractor."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(["size", "color", "noise", "kind"])
        for i in range(n):
            color = colors[i % len(colors)]
            size = rng.normal(0, 1)
            kind = "big" if size + (1.5 if color == "red" else -0.5 if color == "blue" else 0) > 0 else "small"
            w.writerow([f"{size:.4f}", color, f"{rng.normal():.4f}", kind])
    return path


def table_args(path: Path, *extra: str) -> list[str]:
    return ["--config", str(RECIPE), f"--data.root={path}",
            "--data.dataset_args={target: kind, categorical: [color]}", *extra, *QUIET]


def test_one_hot_columns_use_the_training_categories_and_unseen_ones_are_zeros(tmp_path):
    dm = DataModule(dataset="table", root=str(write_table(tmp_path / "t.csv")),
                    dataset_args={"target": "kind", "categorical": ["color"]}, num_workers=0)
    dm.setup()
    assert dm.table.feature_names() == ["size", "noise", "color=blue", "color=green", "color=red"]
    assert dm.input_shape == (5,) and dm.data.classes == ("big", "small")
    raw = dm.arrays["train"][0]
    assert set(np.unique(raw[:, 2:]).tolist()) == {0.0, 1.0} and np.all(raw[:, 2:].sum(1) == 1), "one-hot"
    cols = {"size": np.array([0.5]), "noise": np.array([0.0]), "color": np.array(["purple"])}
    np.testing.assert_array_equal(dm.table.encode(cols), [[0.5, 0.0, 0, 0, 0]])
    # categories come from the training rows only: a colour seen only outside train encodes as zeros
    path = write_table(tmp_path / "u.csv")
    rows = list(csv.reader(path.open()))
    held = DataModule(dataset="table", root=str(path), dataset_args={"target": "kind", "categorical": ["color"]}, num_workers=0)
    held.setup()
    val_row = int(held.indices["val"][0]) + 1
    rows[val_row][1] = "violet"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    again = DataModule(dataset="table", root=str(path), dataset_args={"target": "kind", "categorical": ["color"]}, num_workers=0)
    again.setup()
    assert "color=violet" not in again.table.feature_names()


@pytest.mark.slow  # fit + test + predict with W&B offline: ~30 s
def test_csv_table_fits_tests_and_predicts_a_new_csv_by_column_names(tmp_path, capsys):
    data = write_table(tmp_path / "train.csv")
    assert main(["fit", *table_args(data, "--run.name=t", "--trainer.max_epochs=10")]) == 0  # W&B offline on
    run = Path("runs/wine_table/t")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val/acc"] >= 0.8, metrics
    assert main(["test", *table_args(data, "--run.name=t")]) == 0
    assert json.loads((run / "metrics.json").read_text())["test/acc"] >= 0.8
    new = tmp_path / "new.tsv"  # another format, columns in another order, no target, one unseen colour
    new.write_text("noise\tcolor\tsize\n0.1\tred\t2.5\n0.0\tblue\t-2.5\n0.3\tpurple\t0.0\n")
    capsys.readouterr()
    assert main(["predict", *table_args(data, "--run.name=t"), f"--input={new}"]) == 0
    rows = list(csv.DictReader((run / "predictions_new.csv").open()))
    assert [r["label"] for r in rows[:2]] == ["big", "small"], "class names, from the columns by name"
    assert len(rows) == 3 and [r["source"] for r in rows] == ["1", "2", "3"]


def test_tsv_reads_like_csv(tmp_path):
    dm = DataModule(dataset="table", root=str(write_table(tmp_path / "t.tsv", delimiter="\t")),
                    dataset_args={"target": "kind", "categorical": ["color"]}, num_workers=0)
    dm.setup()
    assert dm.input_shape == (5,)


def bad(tmp_path: Path, edit) -> Path:
    path = write_table(tmp_path / "bad.csv")
    rows = list(csv.reader(path.open()))
    edit(rows)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


@pytest.mark.parametrize("case, args, words", [
    ("missing value", lambda r: r[5].__setitem__(0, ""), ["column 'size'", "row 5", "line 6", "missing"]),
    ("missing target", None, ["data.dataset_args.target", "no column 'label'", "size, color, noise, kind"]),
    ("not numeric", lambda r: r[3].__setitem__(2, "loud"), ["column 'noise'", "row 3", "'loud'", "categorical"]),
    ("missing label", lambda r: r[7].__setitem__(3, "NA"), ["column 'kind'", "row 7", "missing"]),
])
def test_bad_tables_exit_2_naming_the_column_and_row_and_write_nothing(tmp_path, capsys, case, args, words):
    path = bad(tmp_path, args) if args else write_table(tmp_path / "t.csv")
    target = "label" if case == "missing target" else "kind"
    before = tree_digest(tmp_path)
    assert main(["fit", "--config", str(RECIPE), f"--data.root={path}",
                 f"--data.dataset_args={{target: {target}, categorical: [color]}}", *QUIET]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err
    assert not Path("runs").exists() and tree_digest(tmp_path) == before


@pytest.mark.slow  # two fits and two predicts
def test_predict_refuses_a_row_holding_nan_naming_it(tmp_path, capsys):
    data = write_table(tmp_path / "train.csv")
    assert main(["fit", *table_args(data, "--run.name=p", "--trainer.max_epochs=1", "--trainer.logger=false")]) == 0
    new = tmp_path / "new.csv"
    new.write_text("size,color,noise\n0.1,red,0.2\nnan,blue,0.0\n")
    assert main(["predict", *table_args(data, "--run.name=p", "--trainer.logger=false"), f"--input={new}"]) == 2
    err = capsys.readouterr().err
    assert "input:" in err and "column 'size'" in err and "row 2" in err and "Traceback" not in err
    assert not Path("runs/wine_table/p/predictions_new.csv").exists()
    # the positional CSV of another dataset (breast_cancer) refuses NaN too
    assert main(["fit", "--config", str(ROOT / "recipes" / "breast_cancer_mlp.yaml"), "--run.name=bc",
                 "--trainer.max_epochs=1", "--trainer.logger=false", *QUIET]) == 0
    feats = tmp_path / "feats.csv"
    feats.write_text(",".join(["1.0"] * 30) + "\n" + ",".join(["nan"] + ["1.0"] * 29) + "\n")
    assert main(["predict", "--config", str(ROOT / "recipes" / "breast_cancer_mlp.yaml"), "--run.name=bc",
                 "--trainer.logger=false", f"--input={feats}", *QUIET]) == 2
    assert "row 2" in capsys.readouterr().err


def test_parquet_reads_where_pyarrow_is_installed_and_says_what_is_missing_otherwise(tmp_path):
    path = tmp_path / "t.parquet"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path.write_bytes(b"PAR1")
        with pytest.raises(ConfigError, match="data.root: reading .* needs pyarrow"):
            DataModule(dataset="table", root=str(path), dataset_args={"target": "kind"}, num_workers=0).setup()
        return
    rows = list(csv.DictReader(write_table(tmp_path / "t.csv").open()))
    pq.write_table(pa.table({k: [r[k] for r in rows] for k in rows[0]}), path)
    dm = DataModule(dataset="table", root=str(path), dataset_args={"target": "kind", "categorical": ["color"]}, num_workers=0)
    dm.setup()
    assert dm.input_shape == (5,)
