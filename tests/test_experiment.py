"""Experiments from YAML: validation errors, aggregation on hand-made numbers, the cache, resume,
an end-to-end run with its files, sequential stages, the sweep, and ``coun-fast run``."""

from __future__ import annotations

import csv
import json

import pytest

from coun_fast import recipes
from coun_fast.cli import main
from coun_fast.experiment import ConfigError, load_config, parse_config, run_experiment
from coun_fast.experiment import runner as runner_module
from coun_fast.experiment.plots import mean_curves
from coun_fast.experiment.results import cell, markdown_table, mean_std, summarize
from coun_fast.experiment.runner import grid_points, point_name

PAPER = [name for name in recipes.available() if not name.startswith("cpu_")]
TINY_TRAIN = {"epochs": 1, "lr": 0.05, "batch_size": 64, "augment_backend": "cpu"}


def tiny(tmp_path, cache, **changes) -> dict:
    """A seconds-long experiment: synthetic 8x8 images (500 train), a 2-block CNN, 1 epoch each."""
    raw = {
        "name": "tiny",
        "data": {"dataset": "synthetic", "image_size": 8},
        "model": {"name": "small_cnn", "kwargs": {"widths": [8, 16]}},
        "original": dict(TINY_TRAIN),
        "unlearn": {**TINY_TRAIN, "lr": 0.01},
        "scenario": {"kind": "random", "ratio": 0.1},
        "methods": [{"name": "ft"}, {"name": "coun", "hparams": {"lam": 0.5}},
                    {"name": "ft+cl", "hparams": {"cl_lam": 0.5}}],
        "seeds": [0, 1],
        "device": "cpu",
        "output": str(tmp_path / "out"),
        "cache": str(cache),
    }
    raw.update(changes)
    return raw


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("model_cache")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache):
    """The tiny experiment run once: (config, results, log lines)."""
    config = parse_config(tiny(tmp_path_factory.mktemp("e2e"), cache))
    lines = []
    return config, run_experiment(config, progress=False, log=lines.append), lines


# -- validation ------------------------------------------------------------------------------------
ERRORS = [
    ({"methods": [{"name": "ft"}, {"name": "coun"}, {"name": "foo"}]}, r"methods\[2\]\.name: unknown method 'foo'; available: .*coun"),
    ({"methods": [{"name": "coun", "hparams": {"lamda": 1}}]}, r"methods\[0\]\.hparams\.lamda: .*it takes: cl_scope, lam, temperature"),
    ({"methods": [{"name": "ft+cl", "hparams": {"lam": 1}}]}, r"methods\[0\]\.hparams\.lam: .*cl_lam, cl_temperature"),
    ({"methods": [{"name": "retrain"}]}, r"methods\[0\]\.name: Retrain is run for every seed"),
    ({"methods": [{"name": "ft"}, {"name": "ft"}]}, r"methods: labels must be unique; repeated: ft"),
    ({"methods": [{"name": "ft", "train": {"lr": -1}}]}, r"methods\[0\]\.train\.lr must be a finite number >= 0"),
    ({"methods": [{"name": "ft", "train": {"seed": 3}}]}, r"methods\[0\]\.train\.seed: unknown key; accepted"),
    ({"scenario": {"kind": "random", "ratio": 1.5}}, r"scenario\.ratio: must be a number in \(0, 1\)"),
    ({"scenario": {"kind": "random"}}, r"scenario\.ratio: required for kind 'random'"),
    ({"scenario": {"kind": "class", "classes": [1], "ratio": 0.1}}, r"scenario\.ratio: does not apply to kind 'class'"),
    ({"scenario": {"kind": "sequential", "ratio": 0.2}}, r"scenario\.chunks: required"),
    ({"scenario": {"kind": "stripes"}}, r"scenario\.kind: must be one of random, class, sequential"),
    ({"data": {"dataset": "cifar10"}}, r"data\.path: required for dataset 'cifar10'"),
    ({"data": {"dataset": "cifar10", "path": "/no/such/place"}}, r"data\.path: no such file or folder"),
    ({"data": {"dataset": "imagenet"}}, r"data\.dataset: unknown dataset 'imagenet'; available: .*cifar10"),
    ({"model": {"name": "resnet99"}}, r"model\.name: unknown model 'resnet99'; available: .*resnet18"),
    ({"colour": "blue"}, r"colour: unknown key; accepted: name, description, data"),
    ({"original": {"epochs": 1, "lr_decay": 2}}, r"original\.lr_decay: unknown key; accepted under original: preset"),
    ({"unlearn": {"preset": "fast"}}, r"unlearn\.preset: unknown preset 'fast'; available: paper"),
    ({"seeds": [0, 0]}, r"seeds: must not repeat"),
    ({"sweep": {"seed": 1, "grid": {}}}, r"sweep\.seed: must be held out: 1 is among the seeds \[0, 1\]"),
    ({"sweep": {"seed": 9, "grid": {"CoUn": {"lam": [1]}}}}, r"sweep\.grid\.CoUn: no method has this label; labels: ft"),
    ({"sweep": {"seed": 9, "grid": {"coun": {"tau": [1]}}}}, r"sweep\.grid\.coun\.tau: not a hyperparameter of 'coun'"),
    ({"sweep": {"seed": 9, "grid": {"ft": {"lr": [0.1, 0]}}}}, r"sweep\.grid\.ft\.lr\[1\]\.lr must be > 0"),
]


@pytest.mark.parametrize("change, message", ERRORS, ids=[m.split(":")[0].replace("\\", "") for _, m in ERRORS])
def test_config_errors_name_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(tiny(tmp_path, tmp_path, **change))


def test_config_resolution_and_yaml_floats(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("data: {dataset: digits}\nunlearn: {min_lr: 1e-4, epochs: 3}\nretrain: {epochs: 7}\n"
                    "original: {epochs: 5, lr: 0.05}\nmethods: [ft, {name: coun, label: CoUn, train: {lr: 2e-2}}]\n")
    config = load_config(path)
    assert config.name == "exp" and str(config.output) == "runs/exp" and config.seeds == (0,)
    assert config.unlearn.min_lr == 1e-4 and config.unlearn.schedule == "cosine"  # preset paper_unlearn
    assert (config.original.epochs, config.original.lr, config.original.schedule) == (5, 0.05, "multistep")
    assert (config.retrain.epochs, config.retrain.lr) == (7, 0.05)  # on top of the Original's recipe
    assert config.methods[1].train_config(config.unlearn).lr == 0.02
    narrowed = load_config(path, methods=["CoUn"], seeds=[3, 4], output=tmp_path / "o")
    assert [m.label for m in narrowed.methods] == ["CoUn"] and narrowed.seeds == (3, 4)
    with pytest.raises(ConfigError, match="--methods: salun not in the experiment; its methods: ft, CoUn"):
        load_config(path, methods=["salun"])
    with pytest.raises(ConfigError, match="--sweep: the experiment has no sweep section"):
        load_config(path, sweep=True)


def test_precision_override_reaches_every_training_run(tmp_path):
    raw = {"data": {"dataset": "digits"}, "original": {"precision": "fp32", "epochs": 2},
           "unlearn": {"precision": "fp32"},
           "methods": ["ft", {"name": "coun", "train": {"precision": "fp16", "lr": 0.02}},
                      {"name": "bad_teacher", "protocol": "authors"}],
           "sweep": {"seed": 100, "grid": {"ft": {"lr": [0.01, 0.1]}}}}
    config = load_config(raw, precision="bf16")
    assert (config.original.precision, config.retrain.precision, config.unlearn.precision) == ("bf16",) * 3
    assert config.original.epochs == 2 and config.retrain.epochs == 2  # Retrain still takes the Original's recipe
    assert [m.train_config(config.unlearn).precision for m in config.methods] == ["bf16"] * 3
    assert config.methods[1].train_config(config.unlearn).lr == 0.02  # the method's other settings stay
    assert raw["original"]["precision"] == "fp32"  # the caller's mapping is left as it was
    own_retrain = load_config({**raw, "retrain": {"preset": "paper", "precision": "fp16"}}, precision="fp32")
    assert own_retrain.retrain.precision == "fp32"
    assert load_config(raw).methods[1].train_config(load_config(raw).unlearn).precision == "fp16"  # no override
    with pytest.raises(ConfigError, match="--precision: must be one of auto, fp32, bf16, fp16; got 'half'"):
        load_config(raw, precision="half")
    swept = {**raw, "sweep": {"seed": 100, "grid": {"ft": {"precision": ["fp32", "bf16"]}}}}
    with pytest.raises(ConfigError, match="--precision: the sweep grid varies precision for ft"):
        load_config(swept, precision="bf16")
    paper = load_config(recipes.resolve("cifar10_resnet18_random10"), data=".", precision="bf16")
    assert {paper.original.precision, paper.retrain.precision, paper.unlearn.precision} == {"bf16"}


def test_run_precision_option_is_checked(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text("data: {dataset: digits}\nmethods: [ft]\n")
    assert main(["run", str(path), "--check", "--precision", "fp32", "--output", str(tmp_path / "o"),
                 "--device", "cpu"]) == 0
    assert "valid" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["run", str(path), "--check", "--precision", "half"])
    assert "invalid choice: 'half'" in capsys.readouterr().err


def test_shipped_recipes():
    assert {"cpu_smoke", "cpu_small", "cifar10_resnet18_random10", "cifar10_resnet18_class_truck",
            "cifar10_resnet18_sequential", "tinyimagenet_resnet18_random10"} <= set(recipes.available())
    smoke = load_config(recipes.resolve("cpu_smoke"))
    assert [m.label for m in smoke.methods] == ["FT", "CoUn", "FT+CL"] and smoke.sweep.enabled is False
    for name in PAPER:  # the paper's experiments need the data's location
        with pytest.raises(ConfigError, match="data.path: required"):
            load_config(recipes.resolve(name))
    with pytest.raises(FileNotFoundError, match="shipped: .*cpu_smoke"):
        recipes.resolve("no_such_recipe")


# -- aggregation -----------------------------------------------------------------------------------
def _rows(label, values, stage=0):
    return [{"label": label, "method": label.lower(), "seed": s, "stage": stage, **v} for s, v in enumerate(values)]


def test_summary_on_hand_made_numbers():
    retrain = _rows("Retrain", [dict(RA=100, UA=4, TA=94, MIA=10, seconds=10, PFLOPs=2)] * 3)
    method = _rows("X", [dict(RA=99, UA=2, TA=95, MIA=12), dict(RA=98, UA=6, TA=95, MIA=12),
                         dict(RA=100, UA=4, TA=92, MIA=6)])
    for row in method:
        row["Avg.Gap"] = sum(abs(row[k] - retrain[0][k]) for k in ("UA", "RA", "TA", "MIA")) / 4
    summary = summarize(retrain + method)
    assert [e["label"] for e in summary] == ["Retrain", "X"]
    x = summary[1]
    assert x["RA"]["mean"] == pytest.approx(99.0) and x["RA"]["std"] == pytest.approx(1.0)  # ddof=1
    assert x["UA"]["std"] == pytest.approx(2.0) and x["TA"]["mean"] == pytest.approx(94.0)
    assert x["MIA"]["mean"] == pytest.approx(10.0) and x["MIA"]["std"] == pytest.approx(12 ** 0.5)
    deltas = {k: x[k]["delta"] for k in ("RA", "UA", "TA", "MIA")}
    assert deltas == pytest.approx({"RA": 1.0, "UA": 0.0, "TA": 0.0, "MIA": 0.0})
    assert x["Avg.Gap"] == pytest.approx(0.25)  # on the means, not the mean of per-seed gaps:
    assert x["Avg.Gap_seeds"]["mean"] == pytest.approx((1.5 + 1.75 + 1.5) / 3)
    assert summary[0]["Avg.Gap"] == 0.0 and summary[0]["seconds"] == {"mean": 10.0, "std": 0.0}
    assert "PFLOPs" not in x
    assert mean_std([3.0]) == (3.0, 0.0)


def test_paper_coun_cifar10_row():
    retrain = _rows("Retrain", [dict(RA=100.00, UA=4.81, TA=94.67, MIA=11.02)])
    coun = _rows("CoUn", [dict(RA=99.99, UA=4.12, TA=94.57, MIA=10.81)])
    entry = summarize(retrain + coun)[1]
    assert f"{entry['Avg.Gap']:.2f}" == "0.25"
    assert cell(entry["RA"]) == "99.99±0.00 (0.01)" and cell(entry["UA"]) == "4.12±0.00 (0.69)"
    table = markdown_table(summarize(retrain + coun))
    assert "| CoUn | 99.99±0.00 (0.01) | 4.12±0.00 (0.69) | 94.57±0.00 (0.10) | 10.81±0.00 (0.21) | 0.25 |" in table


def test_grid_points_and_curves():
    assert grid_points({"lam": [0.1, 1], "lr": [0.01]}) == [{"lam": 0.1, "lr": 0.01}, {"lam": 1, "lr": 0.01}]
    assert point_name({"lam": 0.5, "lr": 1e-05}) == "lam=0.5,lr=1e-05"
    rows = [{"label": "A", "stage": 0, "curve": [{"epoch": 1, "forget_acc": 50, "retain_acc": 90}]},
            {"label": "A", "stage": 0, "curve": [{"epoch": 1, "forget_acc": 70, "retain_acc": 80}]},
            {"label": "A", "stage": 1, "curve": [{"epoch": 1, "forget_acc": 10, "retain_acc": 99}]}]
    assert mean_curves(rows) == {"A": [(1, 60.0, 85.0), (2, 10.0, 99.0)]}


# -- running ---------------------------------------------------------------------------------------
def test_end_to_end_files(finished):
    config, results, lines = finished
    out = config.output
    for name in ("results.json", "results.csv", "results.md", "avg_gap.png", "ua_mia.png", "curves.png"):
        assert (out / name).is_file(), name
    for name in ("avg_gap.png", "ua_mia.png", "curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = json.loads((out / "results.json").read_text())
    assert stored["config"]["seeds"] == [0, 1] and "torch" in stored["environment"] and "git_sha" in stored["environment"]
    # format 1: paths inside the output folder are relative to it, the others (the model cache) absolute
    assert stored["format_version"] == 1 and stored["config"]["output"] == "." and stored["files"]["csv"] == "results.csv"
    assert json.loads((out / "config.json").read_text())["output"] == "."
    assert str(out) not in (out / "results.json").read_text() and str(out) not in (out / "results.csv").read_text()
    folders = {(r["label"], r["seed"]): r["folder"] for r in stored["runs"]}
    assert folders[("ft", 1)] == "seed_1/ft" and (out / folders[("ft", 1)] / "model.pt").is_file()
    assert folders[("Retrain", 0)].startswith(str(config.cache))
    runs = stored["runs"]
    assert len(runs) == 2 * 5  # per seed: Retrain, Original, ft, coun, ft+cl
    with open(out / "results.csv") as file:
        assert len(list(csv.DictReader(file))) == 10
    by = {(r["label"], r["seed"]): r for r in runs}
    for seed in (0, 1):
        assert by[("Retrain", seed)]["Avg.Gap"] == 0.0
        ft = by[("ft", seed)]
        assert {"UA", "RA", "TA", "MIA", "Avg.Gap", "seconds", "PFLOPs"} <= set(ft)
        assert [p["epoch"] for p in ft["curve"]] == [1] and 0 <= ft["curve"][0]["retain_acc"] <= 100
        # ft+cl with cl_lam = 0.5 is CoUn with lam = 0.5, computation for computation
        assert by[("ft+cl", seed)]["UA"] == pytest.approx(by[("coun", seed)]["UA"])
        assert by[("coun", seed)]["hparams"] == {"lam": 0.5, "temperature": 0.1, "cl_scope": "global"}
    assert [e["label"] for e in stored["summary"]] == ["Retrain", "Original", "ft", "coun", "ft+cl"]
    text = (out / "results.md").read_text()
    assert "sample standard deviation (ddof=1" in text and "| ft+cl |" in text
    assert any("seed 1 coun:" in line and "Avg.Gap" in line for line in lines)


def test_wall_time_in_all_and_per_stage(finished):
    """The run prints and stores its total wall time and each stage's (training and evaluation)."""
    config, results, lines = finished
    timings = json.loads((config.output / "results.json").read_text())["timings"]
    stages = timings["stages"]
    for seed in (0, 1):
        for stage in ("Original", "Retrain", "ft", "coun", "ft+cl"):
            assert stages[f"seed {seed} {stage}"] > 0
    assert sum(stages.values()) <= timings["total_seconds"]
    assert any(line.split("] ", 1)[1].startswith("wall time:") and "seed 0 coun" in line for line in lines)


def test_resume_and_cache_hit(finished, cache, tmp_path):
    config, results, _ = finished
    model = next((cache / "original").glob("*/model.pt"))
    stamp = model.stat().st_mtime_ns
    lines = []
    again = run_experiment(config, progress=False, log=lines.append)  # same output: every run is skipped
    assert sum("finished before, skipped" in line for line in lines) == 6
    assert again["runs"] == results["runs"]
    lines = []
    other = parse_config(tiny(tmp_path, cache, seeds=[0], methods=[{"name": "ft"}]))
    run_experiment(other, progress=False, log=lines.append)  # new output folder, same cache
    assert any("Original reused from the cache" in line for line in lines)
    assert any("Retrain reused from the cache" in line for line in lines)
    entries = [p for p in (cache / "original").iterdir() if not p.name.startswith(".")]  # .KEY.lock beside each
    assert model.stat().st_mtime_ns == stamp and len(entries) == 2


def test_curves_only_when_asked(cache, tmp_path):
    """curves: false skips the per-epoch evaluation; the run, its tables and its charts are still written."""
    raw = tiny(tmp_path, cache, seeds=[0], methods=[{"name": "ft"}], curves=False)
    results = run_experiment(parse_config(raw), progress=False, log=None)
    ft = next(row for row in results["runs"] if row["label"] == "ft")
    assert ft["curve"] == [] and {"UA", "RA", "TA", "MIA"} <= set(ft)
    assert (tmp_path / "out" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="curves: must be true or false"):
        parse_config(tiny(tmp_path, cache, curves="no"))


def test_rerun_after_a_kill_and_after_a_change(cache, tmp_path):
    """A run killed before its evaluation continues from its checkpoint; a changed hyperparameter
    in the same folder trains anew (the old checkpoint is not resumed)."""
    from coun_fast.workflow import load_run

    raw = tiny(tmp_path, cache, seeds=[0], methods=[{"name": "coun", "hparams": {"lam": 0.5}}])
    first = run_experiment(parse_config(raw), progress=False, log=None)
    folder = tmp_path / "out" / "seed_0" / "coun"
    before = load_run(folder).model.state_dict()
    (folder / "metrics.json").unlink()  # killed after training, before the evaluation
    lines = []
    again = run_experiment(parse_config(raw), progress=False, log=lines.append)
    assert not any("skipped" in line for line in lines if "coun" in line)
    assert again["runs"][-1]["UA"] == first["runs"][-1]["UA"] and again["runs"][-1]["curve"] == first["runs"][-1]["curve"]
    raw["methods"][0]["hparams"]["lam"] = 2.0
    changed = run_experiment(parse_config(raw), progress=False, log=None)
    assert changed["runs"][-1]["hparams"]["lam"] == 2.0
    after = load_run(folder).model.state_dict()
    assert any(not (before[k] == after[k]).all() for k in before if before[k].is_floating_point())


@pytest.mark.parametrize("overlap", [False, True], ids=["plain", "overlapped evaluation"])
def test_sequential_stages(cache, tmp_path, overlap):
    config = parse_config(tiny(tmp_path, cache, seeds=[0], methods=[{"name": "ft"}],
                               scenario={"kind": "sequential", "ratio": 0.2, "chunks": 2}))
    results = run_experiment(config, progress=False, log=None, overlap_evaluation=overlap)
    stages = sorted((r["label"], r["stage"]) for r in results["runs"])
    assert stages == [("Original", 0), ("Original", 1), ("Retrain", 0), ("Retrain", 1), ("ft", 0), ("ft", 1)]
    forget = {r["stage"]: r for r in results["runs"] if r["label"] == "ft"}
    from coun_fast.workflow import load_run
    first, second = (load_run(config.output / forget[k]["folder"]) for k in (0, 1))  # relative to the output
    assert second.record["original"] == str(first.folder)  # stage 2 starts from stage 1's model
    assert len(second.record["split"]["forget"]) > len(first.record["split"]["forget"])
    text = (config.output / "results.md").read_text()
    assert "## Stage 1 of 2" in text and "## Stage 2 of 2" in text


@pytest.mark.parametrize("overlap", [False, True], ids=["plain", "overlapped evaluation"])
def test_sweep_picks_least_avg_gap(cache, tmp_path, monkeypatch, overlap):
    class FakePredictions:
        def __init__(self, run, *, split=None, device=None, **_):
            self.run = run

        def metrics(self):
            """Retrain UA 5; CoUn's UA = 10 x lam, so lam = 0.5 has Avg.Gap 0."""
            record = self.run.record
            lam = record.get("hparams", {}).get("lam")
            ua = 10.0 * lam if record.get("method") == "coun" else 5.0 if record["kind"] == "unlearned" else 20.0
            return {"UA": ua, "RA": 100.0, "TA": 90.0, "MIA": 10.0, "seconds": 1.0, "PFLOPs": 0.0}

    monkeypatch.setattr(runner_module, "predict_run", FakePredictions)
    raw = tiny(tmp_path, cache, seeds=[0], methods=[{"name": "coun", "label": "CoUn"}],
               sweep={"seed": 7, "grid": {"CoUn": {"lam": [0.1, 1.0, 0.5], "epochs": [1]}}})
    config = load_config(raw, sweep=True)
    results = run_experiment(config, progress=False, log=None, overlap_evaluation=overlap)
    best = json.loads((config.output / "sweep" / "best_hparams.json").read_text())
    assert best["CoUn"]["best"] == {"lam": 0.5, "epochs": 1} and best["CoUn"]["Avg.Gap"] == 0.0
    assert [t["Avg.Gap"] for t in best["CoUn"]["trials"]] == pytest.approx([1.0, 1.25, 0.0])
    main_row = next(r for r in results["runs"] if r["label"] == "CoUn")
    assert main_row["seed"] == 0 and main_row["hparams"]["lam"] == 0.5 and main_row["train"] == {"epochs": 1}
    assert results["sweep"]["CoUn"]["best"]["lam"] == 0.5


# -- command line ----------------------------------------------------------------------------------
def test_cli_help_list_and_check(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--list", "--output", "--seeds", "--methods", "--device", "--sweep", "--cache", "--data"):
        assert option in text
    assert main(["run", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "cpu_smoke" in listed and "cifar10_resnet18_random10" in listed
    assert main(["run", "cpu_smoke", "--check", "--seeds", "4"]) == 0
    assert "3 methods x 1 seeds" in capsys.readouterr().out
    # Original and Retrain always run; naming them in --methods is allowed (the paper-row command)
    assert main(["run", "cpu_smoke", "--check", "--methods", "retrain", "ft", "coun"]) == 0
    assert "2 methods x 2 seeds" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "cifar10_resnet18_random10"])
    assert exit_info.value.code == 2 and "data.path: required" in capsys.readouterr().err


def test_curve_sets_follow_the_scenario():
    from coun_fast.data.embedded import synthetic
    from coun_fast.data.splits import class_split, random_split
    from coun_fast.experiment.runner import curve_sets

    data = synthetic(num_classes=4, train_per_class=10, test_per_class=5, image_size=8, seed=0)
    random = curve_sets(data.train, data.test, random_split(len(data.train), 0.2, seed=0), seed=0)
    assert list(random) == ["forget_acc", "retain_acc", "test_acc"]
    assert len(random["test_acc"][1]) == len(data.test)
    split = class_split(data.train.labels, [2], class_names=data.train.classes)
    sets = curve_sets(data.train, data.test, split, seed=0)
    assert set(data.test.labels[sets["forgotten_class_test_acc"][1]]) == {2}
    assert 2 not in set(data.test.labels[sets["test_acc"][1]])
    assert sets["forget_acc"][1].tolist() == split.forget.tolist()


# -- evaluations that overlap training -------------------------------------------------------------
def _comparable(row: dict) -> dict:
    """A row without what differs between two trainings of the same recipe: wall times."""
    return {k: v for k, v in row.items() if k not in ("seconds", "folder")}


def _replace_metrics(monkeypatch, replace) -> None:
    """The runner's ``predict_run`` with ``replace(run, metrics)`` standing in for a run's
    ``metrics()`` (``metrics``: the real one), unless it returns None."""
    from types import SimpleNamespace

    plain = runner_module.predict_run

    def patched(run, **kwargs):
        predictions = plain(run, **kwargs)
        metrics = replace(run, predictions.metrics)
        return predictions if metrics is None else SimpleNamespace(metrics=metrics)

    monkeypatch.setattr(runner_module, "predict_run", patched)


def test_overlapped_evaluation_gives_the_same_rows_and_files(finished, cache, tmp_path, monkeypatch):
    """overlap_evaluation=True computes each evaluation's metrics in a worker thread while the next
    model trains, and the rows, folders and step lines are those of the plain run."""
    import threading

    config, results, lines = finished
    threads = set()

    def recorded(run, metrics):
        def metrics_recording_the_thread():
            threads.add(threading.current_thread().name)
            return metrics()
        return metrics_recording_the_thread

    _replace_metrics(monkeypatch, recorded)
    overlapped = parse_config(tiny(tmp_path, cache))
    again_lines = []
    again = run_experiment(overlapped, progress=False, log=again_lines.append, overlap_evaluation=True)
    assert threads and all(name.startswith("coun_fast-evaluation") for name in threads)
    assert [_comparable(r) for r in again["runs"]] == [_comparable(r) for r in results["runs"]]
    for row in again["runs"]:
        if row["label"] not in ("Retrain", "Original"):
            stored = json.loads((overlapped.output / row["folder"] / "metrics.json").read_text())
            assert _comparable(stored["row"]) == _comparable(row)
    assert not list(overlapped.output.glob("**/.*.partial"))

    def steps(log):
        return [line.split("] ", 1)[1].split(":")[0] for line in log if "Avg.Gap" in line and "seed" in line]
    assert sorted(steps(again_lines)) == sorted(steps(lines))
    assert "waiting for evaluations" in again["timings"]["stages"]


def test_a_pending_evaluation_is_committed_when_a_later_step_fails(cache, tmp_path, monkeypatch):
    """ft's evaluation is still running when coun fails: ft's folder is still committed with its
    row (as it is when evaluations do not overlap), and the rerun skips it."""
    import threading

    release = threading.Event()
    seen = {}
    plain_prepare = runner_module.prepare_unlearning

    def held(run, metrics):
        if run.record.get("method") != "ft":
            return None

        def metrics_after_the_release():
            release.wait(timeout=60)
            return metrics()
        return metrics_after_the_release

    def failing(method, *args, **kwargs):
        if method == "coun":
            seen["ft committed"] = (tmp_path / "out" / "seed_0" / "ft" / "metrics.json").exists()
            release.set()
            raise RuntimeError("coun failed")
        return plain_prepare(method, *args, **kwargs)

    _replace_metrics(monkeypatch, held)
    monkeypatch.setattr(runner_module, "prepare_unlearning", failing)
    raw = tiny(tmp_path, cache, seeds=[0], methods=[{"name": "ft"}, {"name": "coun"}])
    with pytest.raises(RuntimeError, match="coun failed"):
        run_experiment(parse_config(raw), progress=False, log=None, overlap_evaluation=True)
    assert seen == {"ft committed": False}  # the evaluation was pending when coun failed
    ft = tmp_path / "out" / "seed_0" / "ft"
    assert (ft / "metrics.json").is_file() and (ft / "model.pt").is_file()
    monkeypatch.undo()
    lines = []
    run_experiment(parse_config(raw), progress=False, log=lines.append, overlap_evaluation=True)
    assert any("seed 0 ft: finished before, skipped" in line for line in lines)


def test_a_failed_overlapped_evaluation_leaves_the_folder_uncommitted(cache, tmp_path, monkeypatch):
    """A method whose evaluation fails in a worker is not committed (its partial folder keeps the
    checkpoint for the rerun, which finishes it); the error reaches the caller."""
    def broken(run, metrics):
        if run.record.get("method") != "ft":
            return None

        def failing_metrics():
            raise ValueError("the SVC failed")
        return failing_metrics

    _replace_metrics(monkeypatch, broken)
    raw = tiny(tmp_path, cache, seeds=[0], methods=[{"name": "ft"}, {"name": "coun"}])
    with pytest.raises(ValueError, match="the SVC failed"):
        run_experiment(parse_config(raw), progress=False, log=None, overlap_evaluation=True)
    seed = tmp_path / "out" / "seed_0"
    assert not (seed / "ft").exists() and (seed / ".ft.partial" / "checkpoint.pt").is_file()
    monkeypatch.undo()
    results = run_experiment(parse_config(raw), progress=False, log=None, overlap_evaluation=True)
    assert {r["label"] for r in results["runs"]} == {"Retrain", "Original", "ft", "coun"}
    assert not (seed / ".ft.partial").exists() and (seed / "ft" / "metrics.json").is_file()


def test_overlap_evaluation_option(capsys, monkeypatch, tmp_path, cache):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--overlap-evaluation {auto,on,off}" in capsys.readouterr().out
    monkeypatch.setattr(runner_module.distributed, "active", lambda: True)
    with pytest.raises(ValueError, match="overlap_evaluation: evaluations cannot overlap training under torchrun"):
        run_experiment(parse_config(tiny(tmp_path, cache)), progress=False, log=None, overlap_evaluation=True)


def test_evaluations_finish_in_order_and_exit_their_contexts():
    import contextlib
    import threading

    from coun_fast.experiment.background import Evaluations

    events = []

    @contextlib.contextmanager
    def folder(name):
        try:
            yield
        except BaseException as error:
            events.append((name, "aborted", str(error)))
            raise
        events.append((name, "committed"))

    def stack(name):
        contexts = contextlib.ExitStack()
        contexts.enter_context(folder(name))
        return contexts

    gate = threading.Event()

    def slow():
        gate.wait(timeout=60)
        return {"name": "a"}

    def fails():
        raise RuntimeError("b broke")

    with Evaluations(workers=2) as evaluations:
        a = evaluations.submit(slow, contexts=stack("a"), then=lambda row: events.append(("then", row["name"])))
        evaluations.submit(fails, contexts=stack("b"))
        c = evaluations.submit(lambda: {"name": "c", "a": a.result()["name"]}, contexts=stack("c"),
                               then=lambda row: events.append(("then", row["name"])))
        evaluations.collect()  # a is not done: nothing finishes out of order
        assert events == []
        gate.set()
        with pytest.raises(RuntimeError, match="b broke"):
            evaluations.collect(wait=True)
        evaluations.collect(wait=True)
    assert events == [("a", "committed"), ("then", "a"), ("b", "aborted", "b broke"), ("c", "committed"),
                      ("then", "c")]
    assert c.result() == {"name": "c", "a": "a"}

    inline = Evaluations(workers=0)  # runs and finishes in submit, raising there
    assert not inline.background
    events.clear()
    with pytest.raises(RuntimeError, match="b broke"):
        inline.submit(fails, contexts=stack("b"))
    assert events == [("b", "aborted", "b broke")]
    with pytest.raises(ValueError, match="workers must be >= 0"):
        Evaluations(workers=-1)
