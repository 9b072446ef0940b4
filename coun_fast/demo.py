"""``coun-fast demo``: the whole unlearning workflow, end to end, on a data set that needs no files.

Trains the Original model, forgets a random 10% of its training set with FT and CoUn, trains the
Retrain gold standard, and compares them on the field's metrics (UA, RA, TA, MIA-Efficacy,
Avg. Gap to Retrain, time). By default it runs on scikit-learn's digits (resized to 16x16) with a
small CNN, on the CPU in about a minute; ``--dataset cifar10 --data PATH`` runs it on real data
(with ResNet-18, and bigger defaults, best on a GPU).

Every option is checked before the Original's training starts. The report folder (the four run
folders, results.md, results.json, gaps.png) is written as a unit: a failed demo leaves an
existing folder untouched, and ``--overwrite`` replaces a finished one.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from coun_fast.data import make_split
from coun_fast.evaluate import avg_gap, gap_bar_chart, metrics_table
from coun_fast.files import check_writable_location, write_text_atomic
from coun_fast.runfolder import check_target, staged
from coun_fast.train import TrainConfig
from coun_fast.unlearn import resolve_hparams
from coun_fast.workflow import DataSource, evaluate_run, make_forget_split, prepare_original, prepare_unlearning

# Defaults per data set: (model, image size, Original epochs, unlearning epochs, batch, Original lr, unlearn lr)
log = logging.getLogger("coun_fast.demo")
"""The demo's step lines (``coun-fast demo`` shows them on standard error; ``-q`` hides them)."""

_SMALL = dict(model="small_cnn", image_size=16, original_epochs=80, unlearn_epochs=10, batch_size=64,
              original_lr=0.05, unlearn_lr=0.01)
_REAL = dict(model="resnet18", image_size=None, original_epochs=30, unlearn_epochs=10, batch_size=256,
             original_lr=0.1, unlearn_lr=0.04)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="digits",
                        help="data set name (digits, synthetic, cifar10, cifar100, tinyimagenet, folder, npz, "
                             "python); default: digits, embedded, no files needed")
    parser.add_argument("--data", metavar="PATH", default=None,
                        help="the data set's location (not for digits): see 'coun-fast train --help'")
    parser.add_argument("--image-size", type=int, default=None, help="resize images to this size (digits: 16)")
    parser.add_argument("--model", default=None, help="architecture (digits: small_cnn, else resnet18)")
    parser.add_argument("--ratio", type=float, default=0.1, help="fraction of the training set to forget (0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the training and the views (0)")
    parser.add_argument("--original-epochs", type=int, default=None, help="epochs of Original and Retrain (digits: 80, else 30)")
    parser.add_argument("--unlearn-epochs", type=int, default=None, help="epochs of FT and CoUn (10)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (digits: 64, else 256)")
    parser.add_argument("--original-lr", type=float, default=None, help="lr of Original and Retrain (digits: 0.05, else 0.1)")
    parser.add_argument("--unlearn-lr", type=float, default=None, help="lr of FT and CoUn, cosine decay to 1e-4 (digits: 0.01, else 0.04)")
    parser.add_argument("--lam", type=float, default=0.5, help="CoUn's weight of the contrastive term (0.5)")
    parser.add_argument("--temperature", type=float, default=0.1, help="CoUn's temperature tau (0.1)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: a GPU if there is one)")
    parser.add_argument("--out", default="coun_fast_demo", help="report folder (default: ./coun_fast_demo)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished report folder (it stays untouched until the demo succeeds)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _settings(args: argparse.Namespace) -> dict:
    base = _SMALL if args.dataset in ("digits", "synthetic") else _REAL
    chosen = {key: getattr(args, key) for key in base if getattr(args, key, None) is not None}
    return {**base, **chosen}


def run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    out = Path(args.out)
    source = DataSource(args.dataset, args.data, settings["image_size"])
    common = dict(batch_size=settings["batch_size"], seed=args.seed, device=args.device, progress=not args.no_progress)
    original_config = TrainConfig(epochs=settings["original_epochs"], lr=settings["original_lr"], **common)
    unlearn_config = TrainConfig(epochs=settings["unlearn_epochs"], lr=settings["unlearn_lr"], schedule="cosine",
                                 min_lr=1e-4, **common)
    coun_hparams = resolve_hparams("coun", {"lam": args.lam, "temperature": args.temperature})
    check_writable_location(out, "--out")
    check_target(out, overwrite=args.overwrite, what="--out")
    original_step = prepare_original(source, settings["model"], original_config)
    make_split("random", num_train=len(original_step.splits.train), ratio=args.ratio, seed=args.seed)  # feasible?
    started = time.perf_counter()

    def say(text: str) -> None:
        log.info("[%6.1fs] %s", time.perf_counter() - started, text)

    with staged(out, overwrite=args.overwrite, what="--out") as work:
        say(f"training the Original {settings['model']} on {args.dataset} ({settings['original_epochs']} epochs)")
        original = original_step.run(work / "original", out / "original")
        split = make_forget_split(original, "random", ratio=args.ratio, seed=args.seed)
        say(f"forgetting {len(split.forget)} of {len(split.train_indices)} training images (random {args.ratio:.0%})")

        def unlearned(method, config, hparams=None):
            step = prepare_unlearning(method, original, split, config, hparams=hparams)
            return step.run(work / method, out / method)

        say("Retrain: from scratch on the retain set, with the Original's recipe")
        retrain = unlearned("retrain", original_config)
        say(f"FT: fine-tune on the retain set ({settings['unlearn_epochs']} epochs)")
        ft = unlearned("ft", unlearn_config)
        say(f"CoUn: FT + {args.lam} x cross-view InfoNCE (tau {args.temperature})")
        coun = unlearned("coun", unlearn_config, coun_hparams)

        say("evaluating (UA, RA, TA, MIA-Efficacy)")
        rows = {"Original": evaluate_run(original, split=split), "Retrain": evaluate_run(retrain, split=split)}
        rows["FT"] = evaluate_run(ft, split=split, retrain=rows["Retrain"])
        rows["CoUn"] = evaluate_run(coun, split=split, retrain=rows["Retrain"])
        rows["Original"]["Avg.Gap"] = avg_gap(rows["Original"], rows["Retrain"])
        table = metrics_table(rows)
        write_text_atomic(work / "results.md",
            f"# coun-fast demo: {args.dataset}, {settings['model']}, random {args.ratio:.0%} forgetting, seed {args.seed}\n\n"
            f"{table}\ntime(s): training time of each model (Original: its training; others: the unlearning run).\n"
        )
        write_text_atomic(work / "results.json", json.dumps({
            "settings": {**settings, "dataset": args.dataset, "ratio": args.ratio, "seed": args.seed, "lam": args.lam,
                         "temperature": args.temperature},
            "results": rows}, indent=2, default=str))
        gap_bar_chart(rows, work / "gaps.png", title=f"|gap| to Retrain ({args.dataset}, {settings['model']})")
    print()
    print(table)
    say(f"wrote {out / 'results.md'}, {out / 'results.json'} and {out / 'gaps.png'}")
    return 0
