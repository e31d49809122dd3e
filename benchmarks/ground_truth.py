"""Trained ground truth for judging proxies and selection rules without training again.

Trains a stratified sample of distinct cells (kernel set 1x1_3x3_5x5_7x7, backward and forward,
spread evenly over the footprint range) at one CPU-sized macro with one fixed recipe, some of
them under a second seed for the noise floor, and records for each training: genotype, cell type,
macro, params, footprint, every zero-cost proxy, validation accuracy (held out of the training
split), test accuracy, epochs, seconds, seed.

Resumable and parallel: worker k of n takes every n-th training; each finished training is one
line appended (and fsynced) to that worker's part file, so a killed worker loses at most the
training it was running. ``--merge`` joins the parts into the final CSV. ``--recompute NAMES``
recomputes proxy columns in the part files (when no worker runs), for a proxy whose definition changed.

    python benchmarks/ground_truth.py --worker 0 --workers 2 &
    python benchmarks/ground_truth.py --worker 1 --workers 2 &
    python benchmarks/ground_truth.py --merge

``--no-augment --step-averages --out FILE`` trains the same plan with per-step BatchNorm averages
(``seed_noise.py``'s arm ``plain, per-step averages``); ``--dropout 0`` and ``--precise-bn N`` change
the head's dropout and recompute the BatchNorm averages for the final weights (its later arms).
``--import-seed-noise`` (before the workers) first copies in the 48 trainings ``seed_noise.py`` made of
the same cells and seeds at the same setting, so the workers skip them.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from common import append_row, read_rows

from spikernel.data.datasets import load_dataset
from spikernel.nn.footprint import footprint
from spikernel.nn.macro import MacroConfig
from spikernel.nn.model import get_preset
from spikernel.proxy.zero_cost import PROXIES, labelled_batches, proxy_rows
from spikernel.space.genotype import Genotype, KernelSet, sample
from spikernel.training.loop import evaluate, fit
from spikernel.training.recipe import recipe

RESULTS = Path(__file__).parent / "results"
DEFAULT_OUT = RESULTS / "ground_truth_fmnist_mini.csv"
MACRO = dict(preset="fmnist-tiny", timesteps=2)  # ~10-25K parameters: a CPU can train hundreds
VALIDATION = 1000  # training images held out for validation accuracy
SCORING = dict(batch=64, repeats=2)
SEED_NOISE_OUT = RESULTS / "seed_noise_fmnist_mini.csv"  # its arms' trainings: this plan's cells and seeds
# A setting (what a ground truth or a seed-noise arm changes) is a dict: MacroConfig's fields go to the
# network, the others to the recipe.
MACRO_FIELDS = frozenset(f.name for f in fields(MacroConfig))


def stratified_cells(count: int, seed: int = 0, pool: int = 4000) -> list[str]:
    """``count`` distinct cells, half backward and half forward, at evenly spaced footprint ranks."""
    macro = macro_config()
    cells = []
    for cell, share in (("backward", count - count // 2), ("forward", count // 2)):
        rng = np.random.default_rng(seed + (cell == "forward"))
        distinct = {}
        for _ in range(pool):
            g = sample(KernelSet.parse("1x1_3x3_5x5_7x7"), cell, rng)
            if g.cell_type == cell:  # a pruned backward sample may have lost its backward edges
                distinct.setdefault(g.key, g)
        ordered = sorted(distinct.values(), key=lambda g: (footprint(g, macro).params, g.key))
        picks = np.linspace(0, len(ordered) - 1, share).round().astype(int)
        cells += [str(ordered[i]) for i in dict.fromkeys(picks)]
    return cells


def macro_config():
    return get_preset(MACRO["preset"], timesteps=MACRO["timesteps"])


def plan(cells: int, repeated: int, seed: int) -> list[tuple[str, int]]:
    """(genotype, training seed) pairs: every cell once, every k-th of them under a second seed.

    In a seeded random order, so that a partial run already spans the footprint range, both cell
    types and the noise floor.
    """
    genotypes = stratified_cells(cells, seed)
    step = max(1, len(genotypes) // max(repeated, 1))
    pairs = [(g, 0) for g in genotypes] + [(g, 1) for g in genotypes[::step][:repeated]]
    order = np.random.default_rng(seed).permutation(len(pairs))
    return [pairs[i] for i in order]


def part_path(out: Path, worker: int) -> Path:
    return out.with_name(f"{out.stem}.part{worker}.csv")


def parts(out: Path) -> list[Path]:
    """Every worker's part file beside ``out``."""
    return sorted(out.parent.glob(f"{out.stem}.part*.csv"))


def training_split(data_dir: str | None):
    """The embedded subset without its validation images, and those: (data, validation split)."""
    return load_dataset("fashion-mnist-mini", data_dir).holdout(VALIDATION, seed=0)


def scoring_setup(data_dir: str | None):
    """The training split with validation held out, the macro at its shape, and the labelled
    scoring batches every proxy is computed on: (data, validation split, macro, batches, labels)."""
    data, val = training_split(data_dir)
    batches, labels = labelled_batches(data.train.images, data.train.labels, SCORING["batch"], SCORING["repeats"], 0)
    return data, val, macro_config().for_data(data), [data.normalize(b) for b in batches], labels


def part_rows(out: Path) -> list[dict]:
    """Every training in any part file of ``out``."""
    return [row for part in parts(out) for row in read_rows(part)]


def trained_pairs(out: Path) -> set[tuple[str, int]]:
    """(genotype, seed) of every training in any part file of ``out``."""
    return {(row["genotype"], int(row["seed"])) for row in part_rows(out)}


def split_setting(setting: dict) -> tuple[dict, dict]:
    """A setting's (MacroConfig fields, recipe fields)."""
    return ({k: v for k, v in setting.items() if k in MACRO_FIELDS},
            {k: v for k, v in setting.items() if k not in MACRO_FIELDS})


def train_one(genotype: str, seed: int, data, val, proxies: dict, epochs: int, augment: bool = True,
              setting: dict | None = None) -> dict:
    network, overrides = split_setting(setting or {})
    macro = replace(macro_config().for_data(data), **network)
    config = recipe("fast", epochs=epochs, seed=seed, augment=augment, **overrides)  # pinned: the first 105 trainings augmented
    torch.manual_seed(seed)
    from spikernel.nn.model import SNN

    model = SNN(Genotype.parse(genotype), macro)
    started = time.perf_counter()
    history = fit(model, data, config)
    val_acc = evaluate(model, data, val, spike_rates=False)["test_acc"]
    measured = {"val_acc": val_acc, "test_acc": history[-1]["test_acc"], "seconds": time.perf_counter() - started}
    return result_row(genotype, seed, macro, proxies, measured, epochs, augment, config.precise_bn)


def result_row(genotype: str, seed: int, macro, proxies: dict, measured: dict, epochs: int, augment: bool,
               precise_bn: int = 0) -> dict:
    """One ground-truth line: the cell, its footprint and proxies, and what its training measured."""
    cell = Genotype.parse(genotype).pruned()
    fp = footprint(cell, macro)
    setting = {**MACRO, **({"step_averages": True} if macro.step_averages else {}),
               **({"dropout": macro.dropout} if macro.dropout != macro_config().dropout else {})}
    return {"genotype": genotype, "cell": cell.cell_type, "macro": json.dumps(setting),
            "params": fp.params, "footprint_bytes": fp.bytes(32),
            **{f"proxy_{k}": v for k, v in proxies.items()},
            "val_acc": round(float(measured["val_acc"]), 5), "test_acc": round(float(measured["test_acc"]), 5),
            "epochs": epochs, "seconds": round(float(measured["seconds"]), 2), "seed": seed,
            "recipe": ("fast" if augment else "fast, no crop/flip") + (f", precise BN {precise_bn}" if precise_bn else "")}


def cell_proxies(genotype: str, macro, batches, labels) -> dict:
    row = proxy_rows([genotype], macro, batches, labels, list(PROXIES), seed=0)[0]
    return {k.removeprefix("proxy_"): v for k, v in row.items() if k.startswith("proxy_")}


def import_seed_noise(args, macro, batches, labels) -> None:
    """Copy into this ground truth the trainings ``seed_noise.py`` already made at its exact setting
    (the arm of the same setting: the same cells, seeds, split, epochs; its ``train_one`` is this
    one's), so that they are not repeated; their proxies are computed here as every worker's are.

    Same numbers on the same machine; made on another CPU a training can differ at float level and
    so by a fraction of a point (docs/EVIDENCE.md), as a training run anywhere else would."""
    from seed_noise import ARMS  # it imports this module

    arm = next((name for name, setting in ARMS.items() if setting == args.setting), None)
    if arm is None:
        raise SystemExit(f"seed_noise.py has no arm at this setting ({args.setting}); nothing imported")
    network, overrides = split_setting(args.setting)
    planned = set(plan(args.cells, args.repeated, args.seed))
    done = trained_pairs(args.out)
    path = args.out.with_name(f"{args.out.stem}.part-seed-noise.csv")
    proxies = functools.cache(lambda genotype: cell_proxies(genotype, macro, batches, labels))  # both seeds' rows
    for row in part_rows(SEED_NOISE_OUT):
        key = (row["genotype"], int(row["seed"]))
        if row["arm"] != arm or int(row["epochs"]) != args.epochs or key not in planned or key in done:
            continue
        append_row(path, result_row(*key, replace(macro, **network), proxies(key[0]), row, args.epochs,
                                    augment=False, precise_bn=overrides.get("precise_bn", 0)))
        done.add(key)


def run_worker(args) -> None:
    torch.set_num_threads(args.threads)
    data, val, macro, batches, labels = scoring_setup(args.data_dir)
    mine = [p for i, p in enumerate(plan(args.cells, args.repeated, args.seed)) if i % args.workers == args.worker]
    path = part_path(args.out, args.worker)
    done = trained_pairs(args.out)
    for genotype, seed in mine:
        if (genotype, seed) in done:
            continue
        proxies = cell_proxies(genotype, macro, batches, labels)
        result = train_one(genotype, seed, data, val, proxies, args.epochs, args.augment, args.setting)
        append_row(path, result)
        print(json.dumps({k: result[k] for k in ("genotype", "seed", "params", "val_acc", "test_acc", "seconds")}),
              flush=True)


def recompute(out: Path, names: list[str], data_dir: str | None = None) -> None:
    """Recompute proxy columns of every part file (a proxy whose definition changed, or a new one)
    on the same batches and seeds, without training again."""
    _, _, macro, batches, labels = scoring_setup(data_dir)
    cache: dict[str, dict] = {}
    for part in parts(out):
        rows = read_rows(part)
        for row in rows:
            if row["genotype"] not in cache:
                cache[row["genotype"]] = proxy_rows([row["genotype"]], macro, batches, labels, names, seed=0)[0]
            row.update({f"proxy_{n}": cache[row["genotype"]][f"proxy_{n}"] for n in names})
        columns = list(dict.fromkeys([*rows[0], *(f"proxy_{n}" for n in names)]))
        temporary = part.with_suffix(".tmp")
        with open(temporary, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        temporary.replace(part)
    print(f"recomputed {', '.join(names)} for {len(cache)} cells")


def merge(out: Path) -> None:
    rows = part_rows(out)
    rows.sort(key=lambda r: (int(r["params"]), r["genotype"], int(r["seed"])))
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{out}: {len(rows)} trainings of {len({r['genotype'] for r in rows})} cells")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cells", type=int, default=150)
    parser.add_argument("--repeated", type=int, default=24, help="cells trained under a second seed")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seeds the cell sample")
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir")
    parser.add_argument("--no-augment", dest="augment", action="store_false",
                        help="without crop and flip (the recipe's own choice at these epochs)")
    parser.add_argument("--step-averages", action="store_true",
                        help="BatchNorm running averages per timestep (benchmarks/seed_noise.py: the noise floor)")
    parser.add_argument("--dropout", type=float, help="the head's dropout [the preset's 0.5]")
    parser.add_argument("--precise-bn", type=int, default=0,
                        help="recompute the BatchNorm averages for the final weights on N training images")
    parser.add_argument("--import-seed-noise", action="store_true",
                        help="with --no-augment: take seed_noise.py's trainings of this setting instead of repeating them")
    parser.add_argument("--merge", action="store_true")
    parser.add_argument("--recompute", help="comma-separated proxies to recompute in every part file")
    args = parser.parse_args(argv)
    args.setting = {k: v for k, v in (("step_averages", args.step_averages or None), ("dropout", args.dropout),
                                      ("precise_bn", args.precise_bn or None)) if v is not None}
    if (args.setting or not args.augment) and args.out == DEFAULT_OUT:
        parser.error("a ground truth at another recipe or macro goes to its own --out")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.recompute:
        torch.set_num_threads(args.threads)
        recompute(args.out, args.recompute.split(","), args.data_dir)
    elif args.merge:
        merge(args.out)
    elif args.import_seed_noise:
        if args.augment:
            parser.error("--import-seed-noise takes trainings made without crop and flip: add --no-augment")
        _, _, macro, batches, labels = scoring_setup(args.data_dir)
        import_seed_noise(args, macro, batches, labels)
    else:
        run_worker(args)


if __name__ == "__main__":
    sys.exit(main())
