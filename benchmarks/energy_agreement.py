"""How well the search's energy estimate (spikes of the freshly initialised network on the first
scoring batch, ``nas.engine.energy_estimator``) predicts the trained network's measured energy
(``result.json``: spikes on 1,000 test images after training), over trained run folders.

    python benchmarks/energy_agreement.py docs/results --data-dir DIR

Per network: estimated and measured SOPs and energy per image, their ratio; over networks: the
median ratio and Spearman's rho of estimate vs measured energy (does the estimate rank them right?).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from scipy.stats import spearmanr

from spikernel.data.datasets import load_dataset
from spikernel.errors import SpikernelError
from spikernel.nas.engine import energy_estimator, scoring_data
from spikernel.nn.macro import MacroConfig
from spikernel.space.genotype import Genotype


def trained_runs(root: Path) -> list[Path]:
    """Run folders whose result.json has a measured energy (finished trainings)."""
    return sorted(p.parent for p in root.rglob("result.json") if "energy" in json.loads(p.read_text()))


def compare(run: Path, data_dir: str | None, batch: int, seed: int) -> dict:
    result = json.loads((run / "result.json").read_text())
    data = load_dataset(result["dataset"]["name"], data_dir if result["dataset"]["name"] != "fashion-mnist-mini" else None)
    macro = MacroConfig.from_dict(result["macro"])
    images = scoring_data(data, batch, 1, seed)[0][0]
    estimate = energy_estimator(macro, images, seed)(Genotype.parse(result["genotype"]))
    measured = result["energy"]
    return {"run": str(run), "genotype": result["genotype"], "params": result["params"],
            "sops_estimate": estimate.sops, "sops_trained": measured["sops"],
            "uj_estimate": estimate.energy_pj / 1e6, "uj_trained": measured["energy_pj"] / 1e6}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder searched for trained runs (result.json)")
    parser.add_argument("--data-dir", help="files of the full datasets (the embedded subset needs none)")
    parser.add_argument("--batch", type=int, default=256, help="the scoring batch (search's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = []
    for run in trained_runs(args.root):
        try:
            rows.append(compare(run, args.data_dir, args.batch, args.seed))
        except SpikernelError as exc:
            print(f"skipped {run}: {exc}", file=sys.stderr)
    print("| run | genotype | params | SOPs estimated (M) | SOPs trained (M) | uJ estimated | uJ trained | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {Path(r['run']).relative_to(args.root)} | `{r['genotype']}` | {r['params']:,} | {r['sops_estimate'] / 1e6:.2f} | "
              f"{r['sops_trained'] / 1e6:.2f} | {r['uj_estimate']:.2f} | {r['uj_trained']:.2f} | "
              f"{r['uj_estimate'] / r['uj_trained']:.2f} |")
    ratios = [r["uj_estimate"] / r["uj_trained"] for r in rows]
    if len(rows) >= 3:
        rho = spearmanr([r["uj_estimate"] for r in rows], [r["uj_trained"] for r in rows]).statistic
        print(f"\n{len(rows)} networks: estimate / trained energy median {statistics.median(ratios):.2f} "
              f"(range {min(ratios):.2f}-{max(ratios):.2f}), Spearman rho {rho:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
