"""``coun-fast train | unlearn | evaluate | run``: argument parsing around :mod:`coun_fast.workflow` and
:mod:`coun_fast.experiment`."""

from __future__ import annotations

import argparse
import json
import math
import textwrap
from pathlib import Path

from coun_fast import distributed
from coun_fast.data import DATASETS, ForgetSplit
from coun_fast.evaluate import ATTACKS, metrics_table
from coun_fast.files import check_writable_location, write_text_atomic
from coun_fast.models import MODELS
from coun_fast.runfolder import check_target
from coun_fast.train import (OPTIMIZERS, PRECISIONS, PRESETS, SCHEDULES, TrainConfig, check_distributed,
                             resolve_device)
from coun_fast.unlearn import METHODS, PROTOCOLS, method_config, method_names, resolve_hparams
from coun_fast.unlearn.cl_plugin import split_name
from coun_fast.workflow import (DataSource, compare_with_retrain, evaluate_run, load_run, make_forget_split,
                                note_other_architecture, run_unlearning, train_original)

_TRAINING_FIELDS = ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "min_lr",
                    "warmup_epochs", "seed", "precision", "compile", "cuda_graph", "device", "sync_batchnorm",
                    "checkpoint_every")


def _training_options(parser: argparse.ArgumentParser, preset: str) -> None:
    base = PRESETS[preset]
    group = parser.add_argument_group("training", f"optimiser and run settings (defaults: preset '{preset}')")
    group.add_argument("--preset", choices=sorted(PRESETS), default=preset,
                       help=f"start from this preset; the options below override it (default: {preset})")
    group.add_argument("--epochs", type=int, help=f"passes over the data ({base.epochs})")
    group.add_argument("--batch-size", type=int, help=f"images per step ({base.batch_size}); under torchrun the "
                                                      "global batch, divisible by the number of ranks")
    group.add_argument("--optimizer", choices=OPTIMIZERS, help=f"sgd or adam ({base.optimizer})")
    group.add_argument("--lr", type=float, help=f"learning rate ({base.lr})")
    group.add_argument("--momentum", type=float, help=f"SGD momentum ({base.momentum})")
    group.add_argument("--weight-decay", type=float, help=f"weight decay ({base.weight_decay})")
    group.add_argument("--schedule", choices=SCHEDULES,
                       help=f"learning-rate schedule per epoch ({base.schedule}; multistep: x0.1 at 50%% and 75%%)")
    group.add_argument("--min-lr", type=float, help=f"final lr of the cosine schedule ({base.min_lr})")
    group.add_argument("--warmup-epochs", type=int, help=f"linear warm-up epochs ({base.warmup_epochs})")
    group.add_argument("--seed", type=int, help="seed of the order, the views and dropout (0)")
    group.add_argument("--precision", choices=PRECISIONS, help="auto: bf16 autocast on a GPU, fp32 on the CPU")
    group.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    group.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                       help="capture the training step in a CUDA graph and replay it (default: on a GPU whenever "
                            "the method allows it: Original, Retrain, FT, CoUn with SGD and without --compile; "
                            "--cuda-graph makes it required, --no-cuda-graph runs the step eagerly)")
    group.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: a GPU if there is one; under torchrun "
                                        "each rank's own GPU, cuda:LOCAL_RANK)")
    group.add_argument("--sync-batchnorm", action="store_true", default=None,
                       help="under torchrun: BatchNorm layers normalize with the statistics of the global batch "
                            "(all ranks' rows, as one process would) instead of each rank's share; no effect in one "
                            "process")
    group.add_argument("--augment-backend", choices=("auto", "dali", "torch", "cpu"),
                       help="augmentation backend (auto: dali or torch on a GPU, cpu otherwise)")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    group.add_argument("--checkpoint-every", type=float, metavar="SECONDS",
                       help=f"seconds between checkpoints: one is written after the first epoch that ends this "
                            f"long after the previous one (or the start), and after the last epoch; 0: after every "
                            f"epoch ({base.checkpoint_every:g})")
    group.add_argument("--resume", action="store_true",
                       help="continue a killed run of OUT from its checkpoint (kept in .OUT.partial beside OUT); "
                            "refused when that checkpoint is of another run")
    group.add_argument("--overwrite", action="store_true",
                       help="replace the finished run in OUT (it stays untouched until this run succeeds)")


def _config(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    base = base or PRESETS[args.preset]
    changes = {field: getattr(args, field) for field in _TRAINING_FIELDS if getattr(args, field, None) is not None}
    if args.augment_backend is not None:
        changes["augment_backend"] = args.augment_backend
    changes["progress"] = not args.no_progress
    config = base.replace(**changes)
    check_distributed(config)  # under torchrun: before anything is loaded
    return config


def _output_folder(args: argparse.Namespace) -> None:
    """Check OUT before anything is loaded: creatable, writable, and free to write (a finished run
    there needs --overwrite; an unfinished one --resume or --overwrite)."""
    check_writable_location(args.out, "--out")
    check_target(args.out, overwrite=args.overwrite, resume=args.resume, what="--out")


def split_file(path: str, option: str) -> ForgetSplit:
    """The split in ``path``, which must record its data set (so it can be checked against the models')."""
    split = ForgetSplit.load(path)
    if split.dataset is None:
        raise ValueError(f"{option} {path!r} records no data set (it was made from indices alone, or by an older "
                         "coun_fast), so it cannot be checked against the models' data; use the split.npz of an "
                         "unlearning run, or save it with dataset=coun_fast.data.identity.dataset_identity(...)")
    return split


def _data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", choices=sorted(DATASETS), default="digits",
                       help="data set (default: digits, embedded; the others need --data). Your own data: npz (a "
                            ".npz of arrays: train_images, train_labels, test_images, test_labels[, classes]) or "
                            "python (a function returning the training and test torch Datasets)")
    group.add_argument("--data", metavar="PATH",
                       help="its location: a CIFAR pickle folder, an image folder, a .npz file (packed JPEG or "
                            "arrays), or for --dataset python MODULE:FUNCTION or FILE.py:FUNCTION")
    group.add_argument("--image-size", type=int, help="resize images to this square size when loading")


# -- train -----------------------------------------------------------------------------------------
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    _data_options(parser)
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet18", help="architecture (resnet18)")
    parser.add_argument("--out", required=True, help="run folder: model.pt, checkpoint.pt")
    _training_options(parser, "paper")


def run_train(args: argparse.Namespace) -> int:
    config = _config(args)
    _output_folder(args)
    run = train_original(DataSource(args.dataset, args.data, args.image_size), args.model, config, args.out,
                         resume=args.resume, overwrite=args.overwrite)
    last = run.record["history"][-1]
    print(f"Original {args.model} on {args.dataset}: {config.epochs} epochs, last epoch loss {last['loss']:.4f}, "
          f"train acc {last.get('acc', float('nan')):.2f}%; wrote {run.folder / 'model.pt'}")
    return 0


# -- unlearn ---------------------------------------------------------------------------------------
_WORDS = {"true": True, "false": False, "none": None, "null": None}


def _hparam(text: str) -> tuple[str, object]:
    """``NAME=VALUE``: VALUE an integer, a finite number, true/false, none, or else text (the
    method's checks then say whether it is a value it takes)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    word = value.strip()
    if word.lower() in _WORDS:
        return key.strip(), _WORDS[word.lower()]
    try:
        return key.strip(), int(word)
    except ValueError:
        pass
    try:
        number = float(word)
    except ValueError:
        return key.strip(), word  # text, e.g. variant=union
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"the value of {key.strip()!r} must be finite; got {value!r}")
    return key.strip(), number


def add_unlearn_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=method_names(), required=True, metavar="METHOD",
                        help="; ".join(f"{name}: {METHODS[name].summary}" for name in sorted(METHODS))
                        + ". NAME+cl adds CoUn's contrastive term to NAME's objective (--hparam cl_lam=, cl_temperature=; "
                        "not for coun and ssd)")
    parser.add_argument("--original", required=True, metavar="RUN", help="the Original's run folder (or model.pt)")
    parser.add_argument("--out", required=True, help="run folder: model.pt, split.npz, checkpoint.pt")
    forget = parser.add_argument_group("forget request", "what to forget (ignored with --split)")
    forget.add_argument("--forget", choices=("random", "class", "sequential"), default="random",
                        help="random: a ratio of the training set; class: whole classes; sequential: chunks")
    forget.add_argument("--ratio", type=float, default=0.1, help="fraction to forget, in (0, 1) (0.1)")
    forget.add_argument("--classes", nargs="+", help="class names or indices to forget (--forget class)")
    forget.add_argument("--chunks", type=int, help="number of sequential chunks (--forget sequential)")
    forget.add_argument("--split-seed", type=int, default=0, help="seed of the forget set (0)")
    forget.add_argument("--split", metavar="NPZ", help="reuse this split file instead (e.g. another run's split.npz)")
    method = parser.add_argument_group("method hyperparameters")
    method.add_argument("--lam", type=float, help="CoUn: weight of the contrastive term, >= 0 (1.0; paper: 0.1-6)")
    method.add_argument("--temperature", type=float, help="CoUn: temperature tau > 0 (0.1; paper: (0, 0.3])")
    method.add_argument("--hparam", type=_hparam, action="append", default=[], metavar="NAME=VALUE",
                        help="any other hyperparameter of the method: a number, true, false, none or text "
                             "(repeatable)")
    method.add_argument("--protocol", choices=PROTOCOLS, default="coun",
                        help="coun (default): train under the preset and the options below (the CoUn protocol); "
                             "authors: the method's authors' optimiser protocol (docs/fidelity.md), which the "
                             "options below still override")
    _training_options(parser, "paper_unlearn")


def run_unlearn(args: argparse.Namespace) -> int:
    hparams = dict(args.hparam)
    for name in ("lam", "temperature"):
        if getattr(args, name) is not None:
            hparams[name] = getattr(args, name)
    resolve_hparams(args.method, hparams)  # a bad value fails before anything is loaded
    spec = METHODS[split_name(args.method)[0]]
    config = _config(args, method_config(spec, PRESETS[args.preset], args.protocol))
    _output_folder(args)
    original = load_run(args.original)
    if args.method == "retrain" and args.preset == "paper_unlearn":  # Retrain repeats the Original's recipe
        config = _config(args, method_config(spec, TrainConfig(**original.record["config"]), args.protocol))
    if args.split:
        split = split_file(args.split, "--split")
    else:
        classes = [int(c) if c.isdigit() else c for c in args.classes] if args.classes else None
        split = make_forget_split(original, args.forget, ratio=None if args.forget == "class" else args.ratio,
                                  classes=classes, num_chunks=args.chunks, seed=args.split_seed)
    run = run_unlearning(args.method, original, split, config, args.out, hparams=hparams, resume=args.resume,
                         overwrite=args.overwrite)
    print(f"{args.method}: forgot {len(split.forget)} of {len(split.train_indices)} training images in "
          f"{run.record['cost'].get('seconds', 0):.1f} s; wrote {run.folder / 'model.pt'} and {run.folder / 'split.npz'}")
    return 0


# -- evaluate --------------------------------------------------------------------------------------
def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or model.pt files) to evaluate")
    parser.add_argument("--split", metavar="NPZ",
                        help="the forget/retain split (default: each run's own split.npz; an Original has none)")
    parser.add_argument("--retrain", metavar="RUN",
                        help="the Retrain run: adds Avg.Gap to every other run; each must be of its data set, "
                             "training indices, number of classes, split and architecture")
    parser.add_argument("--allow-other-architecture", action="store_true",
                        help="with --retrain: also compare runs of another architecture than the Retrain's (the "
                             "table and the JSON say so)")
    parser.add_argument("--json", metavar="FILE", help="also write the metrics as JSON here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.add_argument("--device", help="evaluate on this device (default: cpu)")
    parser.add_argument("--mia-attack", choices=ATTACKS, default="confidence",
                        help="the SVC attack of the MIA column (SalUn's SVC_MIA.py): confidence (the paper's, "
                             "default), correctness, entropy, m_entropy or prob")
    parser.add_argument("--analyses", action="store_true",
                        help="also the forget samples' predicted-class distribution and their distances to "
                             "the retain class centroids (the paper's Tables 1, 4-6)")


def _evaluated_name(path: str, taken: dict) -> str:
    """A run's row name: its folder's name, or the path as given when another run has that name."""
    name = Path(path).name if Path(path).is_dir() else Path(path).parent.name
    return str(path) if name in taken else name


def run_evaluate(args: argparse.Namespace) -> int:
    # everything is read and checked before any metric is computed
    if args.json:
        target = check_writable_location(args.json, "--json")
        if target.is_dir():
            raise ValueError(f"--json {args.json!r} is a folder; name a file")
        if target.exists() and not args.overwrite:
            raise ValueError(f"--json {args.json!r} exists; pass --overwrite to replace it")
    if args.device is not None:
        resolve_device(args.device)
    if args.split:
        split_file(args.split, "--split")  # readable, and of a data set (evaluate_run reads it again)
    if args.allow_other_architecture and not args.retrain:
        raise ValueError("--allow-other-architecture compares runs with a Retrain: pass --retrain")
    split = args.split
    retrain = load_run(args.retrain) if args.retrain else None
    runs: dict = {}
    architectures: dict = {}  # how each run's architecture differs from the Retrain's, where allowed
    for path in args.runs:
        run = load_run(path)
        name = _evaluated_name(path, runs)
        if retrain is not None:
            architectures[name] = compare_with_retrain(run, retrain, what=repr(path),
                                                       against=f"the Retrain {args.retrain!r}",
                                                       allow_other_architecture=args.allow_other_architecture)
        runs[name] = run
    rows = {}
    if retrain is not None:
        rows["Retrain"] = evaluate_run(retrain, split=split, device=args.device, analyses=args.analyses,
                                       mia_attack=args.mia_attack)
    for name, run in runs.items():
        rows[name] = note_other_architecture(
            evaluate_run(run, split=split, retrain=rows.get("Retrain"), device=args.device, analyses=args.analyses,
                         mia_attack=args.mia_attack), architectures.get(name))
    print(metrics_table(rows, "Retrain" if retrain is not None else None))
    for name, difference in architectures.items():
        if difference is not None:
            print(f"note: the Retrain {args.retrain!r} is of another architecture than {name!r} ({difference}); "
                  "its Avg.Gap compares the two, as --allow-other-architecture asked")
    for name, row in rows.items():
        if "forget_predictions" in row:
            shares = ", ".join(f"{c} {p:.1f}%" for c, p in row["forget_predictions"].items())
            nearest = sorted(row["centroid_distances"].items(), key=lambda item: item[1])[:3]
            print(f"{name}: forget predicted as {shares}; nearest retain centroids "
                  + ", ".join(f"{c} {d:.3f}" for c, d in nearest))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.json, json.dumps(rows, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


# -- run -------------------------------------------------------------------------------------------
RUN_DESCRIPTION = textwrap.fill(
    "Run an experiment file: for each seed, the Original (trained once and kept in a cache keyed by data, "
    "model, recipe and seed), the forget split, Retrain (cached too) and every listed method from the "
    "Original (sequential scenarios: stage after stage, each method from its own previous model); each "
    "model is evaluated (UA, RA, TA, MIA, Avg.Gap to that seed's Retrain, seconds, PFLOPs). Finished runs in "
    "the output folder are skipped, so rerunning the command resumes. Writes results.json (every run, the "
    "mean +- sample std over seeds, config, versions, git sha), results.csv (one row per method x seed x "
    "stage), results.md (the paper's table layout) and avg_gap.png, ua_mia.png, curves.png. "
    "EXPERIMENT is a shipped name (see --list) or a YAML file in the format below.", width=100)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    from coun_fast.experiment import config

    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keeps the file format's layout
    parser.epilog = "Experiment files (coun_fast/experiment/config.py):\n\n" + config.__doc__.split("\n\n", 1)[1]
    parser.add_argument("experiment", nargs="?", metavar="EXPERIMENT",
                        help="a shipped experiment name (e.g. cpu_small) or the path of a YAML experiment file")
    parser.add_argument("--list", action="store_true", help="list the shipped experiments and exit")
    parser.add_argument("--output", metavar="DIR", help="results and run folders (default: the file's output, "
                                                        "else runs/NAME)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="run these seeds instead of the file's")
    parser.add_argument("--methods", nargs="+", metavar="METHOD",
                        help="run only these of the file's methods (by label or registry name); Original and "
                             "Retrain always run, as the references (naming them is allowed)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the file's, else a GPU if there is one)")
    parser.add_argument("--data", metavar="PATH", help="the data set's location (sets data.path; the paper's "
                                                       "experiments need it)")
    parser.add_argument("--no-curves", action="store_true",
                        help="skip the per-epoch evaluation behind curves.png (the file's curves: false)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="train every model (Original, Retrain, each method) at this precision instead of "
                             "the file's; e.g. bf16 on a GPU for the paper's experiments, whose files say fp32 "
                             "(the authors' setting). auto: bf16 autocast on a GPU, fp32 on the CPU")
    parser.add_argument("--sweep", action="store_true",
                        help="first try each method's grid (the file's sweep section) on the held-out sweep seed, "
                             "keep the point with the least Avg.Gap (sweep/best_hparams.json), then run the seeds "
                             "with it")
    parser.add_argument("--cache", metavar="DIR",
                        help="cache of Original and Retrain models (default: the file's, else $COUN_FAST_CACHE "
                             "or ~/.cache/coun_fast)")
    parser.add_argument("--check", action="store_true",
                        help="check everything a run would refuse (the file, the device, the data and its class "
                             "names, the model, the scenario, the output and cache folders) and exit")
    parser.add_argument("--no-progress", action="store_true", help="no training progress bars (step lines stay)")
    parser.add_argument("--overlap-evaluation", choices=("auto", "on", "off"), default="auto",
                        help="compute each evaluation's metrics (the MIA's SVC fit: seconds of CPU) in worker "
                             "threads while the next model trains; the results are the same. auto (default): on "
                             "when training on a GPU; never under torchrun")


def run_experiment_command(args: argparse.Namespace) -> int:
    from coun_fast import recipes
    from coun_fast.experiment import load_config, run_experiment
    from coun_fast.experiment.check import check_distributed_experiment, check_experiment

    if args.list:
        shipped = recipes.available()
        width = max(map(len, shipped), default=0)
        for name, description in shipped.items():
            print(f"{name:<{width}}  {description}")
        return 0
    if args.experiment is None:
        raise ValueError("name an experiment (a shipped name or a YAML file); --list shows the shipped ones")
    config = load_config(recipes.resolve(args.experiment), seeds=args.seeds, methods=args.methods,
                         output=args.output, device=args.device, cache=args.cache, data=args.data,
                         sweep=args.sweep, curves=False if args.no_curves else None, precision=args.precision)
    if args.check:  # under torchrun, on rank 0 alone: what the K ranks would refuse too
        check_distributed_experiment(config, distributed.launched_world_size())
        check_experiment(config)
        print(f"{config.name}: valid; {len(config.methods)} methods x {len(config.seeds)} seeds, "
              f"{config.scenario.describe()}, output {config.output}")
        return 0
    run_experiment(config, progress=not args.no_progress,
                   overlap_evaluation={"auto": None, "on": True, "off": False}[args.overlap_evaluation])
    return 0
