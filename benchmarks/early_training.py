"""Short trainings of the ground truth's cells, as refinement (`search --refine`) would train them.

Each cell of the ground-truth CSV trains as one refinement candidate does: the `refine` recipe for
``--epochs`` rungs on the first ``--images`` training images, its validation accuracy measured
after every rung on a split held out of the ground truth's own training images (refinement never
sees the ground truth's validation or test images either). The rungs become proxy columns
(``proxy_rung1``, ``proxy_rung2``, ...) that ``proxy_quality.py --extra`` joins to the ground
truth, so a refinement rule is judged on the same simulated searches as the zero-cost proxies,
without training again. Resumable, worker k of n takes every n-th cell.

    python benchmarks/early_training.py --worker 0 --workers 2 &
    python benchmarks/early_training.py --worker 1 --workers 2 &
    python benchmarks/proxy_quality.py benchmarks/results/ground_truth_fmnist_mini.csv \\
        --extra benchmarks/results/early_training_fmnist_mini.csv --out docs/results/proxy-quality/report.md

``--step-averages`` trains the candidates with BatchNorm running averages per timestep (the
per-step ground truth's setting, ``ground_truth.py --step-averages``), into its own ``--out``.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from common import append_row, read_rows, study_parser
from ground_truth import DEFAULT_OUT as GROUND_TRUTH, macro_config, training_split

RESULTS = Path(__file__).parent / "results"
VALIDATION = 1000  # refinement's default --validation


def short_training(genotype: str, data, epochs: int, images: int, seed: int = 0, step_averages: bool = False) -> dict:
    """Validation accuracy after each of ``epochs`` rungs on ``images`` images, the way ``nas.refine`` trains."""
    from spikernel.nn.model import SNN
    from spikernel.space.genotype import Genotype
    from spikernel.training.loop import fit
    from spikernel.training.recipe import recipe

    inner, held = data.holdout(VALIDATION, seed=1)  # not the ground truth's validation split (seed 0)
    config = recipe("refine", epochs=epochs, seed=seed, limit_train=images)
    torch.manual_seed(seed)
    model = SNN(Genotype.parse(genotype), replace(macro_config().for_data(data), step_averages=step_averages))
    started = time.perf_counter()
    history = fit(model, replace(inner, test=held), config)
    return {"genotype": genotype, **{f"proxy_rung{row['epoch']}": round(row["test_acc"], 5) for row in history},
            "images": images, "validation": VALIDATION, "seconds": round(time.perf_counter() - started, 2),
            "seed": seed, "recipe": "refine", **({"step_averages": True} if step_averages else {})}


def main(argv=None) -> None:
    parser = study_parser(__doc__, RESULTS / "early_training_fmnist_mini.csv", seeds=None, summary=False)
    parser.add_argument("--truth", type=Path, default=GROUND_TRUTH)
    parser.add_argument("--epochs", type=int, default=2, help="rungs: validation after each epoch")
    parser.add_argument("--images", type=int, default=1000, help="training images per rung")
    parser.add_argument("--step-averages", action="store_true", help="BatchNorm running averages per timestep")
    args = parser.parse_args(argv)
    if args.step_averages and args.out == parser.get_default("out"):
        parser.error("rungs at another macro setting go to their own --out")
    torch.set_num_threads(args.threads)
    genotypes = list(dict.fromkeys(r["genotype"] for r in read_rows(args.truth)))
    done = {r["genotype"] for r in read_rows(args.out)}
    data = training_split(None)[0]  # the ground truth's training split, its validation images removed
    for i, genotype in enumerate(genotypes):
        if i % args.workers == args.worker and genotype not in done:
            row = short_training(genotype, data, args.epochs, args.images, step_averages=args.step_averages)
            append_row(args.out, row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
