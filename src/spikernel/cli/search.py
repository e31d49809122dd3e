"""``spikernel search``: memory-aware, resumable, multi-worker training-free search (Optuna)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from spikernel.data import DEFAULT_DATASET
from spikernel.nn.macro import MacroSpace, default_preset, get_preset
from .rerun import finished_results, remember_request, request_of
from .group import main
from .options import (BITS, BUDGET_HELP, CELL, KERNELS, PRESET, apply_threads, download_option, macro_options,
                      selection_options, threads_option)
from .render import rendered_events, stdout


RESULTS = ("search.json", "selection.json")


@main.command()
@click.option("--dataset", default=DEFAULT_DATASET, show_default=True, help="fashion-mnist-mini (embedded) or fashion-mnist.")
@click.option("--data-dir", type=click.Path(), help="Directory with the dataset's files.")
@download_option
@click.option("--kernels", "-k", type=KERNELS, default="1x1_3x3", show_default=True,
              help="Kernel-size set: a preset name (1x1_3x3_5x5) or odd sizes (1,3,9).")
@click.option("--candidates", "-n", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Cells to sample (SpiKernel 1000, SNASNet 5000).")
@click.option("--budget", help=BUDGET_HELP)
@click.option("--bits", type=BITS, default="32", show_default=True, help="Bits per weight for byte footprints.")
@click.option("--cell", type=CELL, default="backward", show_default=True)
@click.option("--score-batch", "--batch", "batch", type=click.IntRange(min=2), default=256, show_default=True,
              help="Images per scoring batch (the same option in explore, run and score).")
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True, help="Scoring batches (averaged).")
@click.option("--preset", "-p", type=PRESET, help="Macro-architecture preset [the dataset's: fmnist-small for fashion-mnist-mini, fmnist for fashion-mnist, ...].")
@macro_options()
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the cell stream, scoring batches and weights.")
@click.option("--storage", help="Optuna RDB URL shared by workers (postgresql://...) [sqlite in --out].")
@click.option("--study", "study_name", default="search", show_default=True, help="Study name inside the storage.")
@click.option("--heartbeat", type=click.IntRange(min=1), default=10, show_default=True,
              help="Seconds between a running candidate's heartbeats; a killed one is redone after twice this.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Candidates in selection.json's top list.")
@click.option("--compare-at", type=click.IntRange(min=1),
              help="Also report what the first N candidates of the same seed stream cost and picked (e.g. 1000 of 5000).")
@click.option("--fidelity", help="Multi-fidelity: score all cheaply, re-score the best at full fidelity, e.g. "
              "batch=16,repeats=1,top=0.02 (keys width, batch, repeats, timesteps, top) or 'fast'/'faster'.")
@click.option("--device", default="auto", show_default=True,
              help="Where candidates are scored: auto (the GPU when there is one), cpu, cuda or cuda:N.")
@selection_options
@threads_option
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run folder.")
def search(out, dataset, data_dir, download, kernels, candidates, budget, bits, cell, batch, repeats, preset, seed,
           sampler, objectives, storage, study_name, heartbeat, top, compare_at, fidelity, device, refine,
           refine_epochs, refine_images, validation, state_budget, state_bits, energy_budget, proxy, threads, **macro):
    """Score N sampled cells of a kernel set without training, under a memory budget; resumable.

    A macro setting given as a list (--width 8,16,32) is searched alongside the cell."""
    asked = None if storage else request_of("search", click.get_current_context().params, data_dir, dataset)
    stored = finished_results(out, asked, RESULTS)
    if stored:  # the same search, already finished: its results, without importing PyTorch
        click.echo(f"{out} is already finished; its results are in {out / 'selection.json'}", err=True)
        report = {**stored["search.json"], "this_run": {"candidates": 0, "wall_seconds": 0.0, "candidates_per_second": 0.0}}
        stdout().print(summary_table({"search": report, "selection": stored["selection.json"]}, out))
        return
    from spikernel.data.datasets import load_dataset
    from spikernel.nas.run import search as run_search

    apply_threads(threads)
    data = load_dataset(dataset, data_dir, download)
    base = get_preset(preset or default_preset(data.name), step_averages=macro.pop("step_averages"))
    macro = MacroSpace.of(base, {setting: values for setting, values in macro.items() if values is not None})
    with rendered_events() as on_event:
        result = run_search(kernels, macro, data, candidates=candidates, budget=budget, bits=int(bits), cell=cell,
                            batch=batch, repeats=repeats, seed=seed, sampler=sampler, out=out, storage=storage,
                            study=study_name, heartbeat=heartbeat, top=top, compare_at=compare_at,
                            fidelity=fidelity, device=device, refine=refine, refine_epochs=refine_epochs,
                            refine_images=refine_images, validation=validation, state_budget=state_budget,
                            state_bits=int(state_bits) if state_bits else None, energy_budget=energy_budget,
                            objectives=objectives, proxy=proxy, on_event=on_event)
    remember_request(out, asked, RESULTS)
    stdout().print(summary_table({"search": result.report, "selection": result.selection}, out))


def summary_table(result: dict, out: Path) -> Table:
    report, chosen = result["search"], result["selection"]
    settings, counts, timing = report["settings"], report["counts"], report["time"]
    table = Table(title="spikernel search", show_header=False)
    per = timing["seconds_per_scored_candidate"]
    rows = [
        ("kernel set", f"{settings['kernels']} ({settings['cell']} cells, sampler {settings['sampler']})"),
        *([("macro dimensions", ", ".join(f"{k} {','.join(map(str, v))}" for k, v in chosen["macro_dimensions"].items()))]
          if chosen.get("macro_dimensions") else []),
        ("budget", chosen["budget"] or "none"),
        ("candidates", f"{sum(counts.values())}: {counts['scored']} scored, {counts['duplicate']} repeats reused, "
                       f"{counts['over_budget']} over budget"
                       + (f", {counts['screened_out']} screened out" if "screened_out" in counts else "")),
        ("this run", f"{report['this_run']['candidates']} candidates in {report['this_run']['wall_seconds']:.1f} s "
                     f"({report['this_run']['candidates_per_second']:.2f}/s)"),
    ]
    if not report.get("fidelity"):  # two-stage searches report both stages' times in their own row
        rows.append(("scoring time", f"{timing['scoring_seconds_total']:.1f} s total"
                                     + (f", {per['mean']:.3f} s per scored candidate" if per else "")))
    if chosen["best"]:
        b = chosen["best"]
        at = ", ".join(f"{k}={b[k]}" for k in chosen.get("macro_dimensions", {}))
        rows += [("best", f"{b['genotype']} (trial {b['trial']}, {b['cell']}{', ' + at if at else ''})"),
                 ("score", f"{b['score']:.4f}" if b["score"] is not None else "-inf"),
                 ("footprint", f"{b['params']:,} parameters, {b['footprint_bytes']:,} bytes at {chosen['bits']} bits"),
                 ("pareto front", f"{len(chosen['pareto_front'])} candidates"
                                  + (f"; {len(chosen['pareto'])} over {', '.join(chosen['objectives'])}"
                                     if len(chosen.get("objectives", ())) > 2 else ""))]
        refined = chosen.get("refined")
        if refined:
            outcomes = ", ".join(f"{r.get('name') or r['genotype']} {r['val_acc']:.1%} ({r['state']} after {r['epochs']})"
                                 for r in refined["outcomes"])
            images = f" of {refined['images']} images" if refined.get("images") else ""
            rows.append(("refined", f"best {refined['candidates']} trained up to {refined['epochs']} epochs{images}, "
                                    f"judged on {refined['validation_images']} held-out images, in "
                                    f"{refined['seconds']:.0f} s: {outcomes}"))
    else:
        rows.append(("best", "none: every sampled cell is over the budget"))
    compare = report.get("compare")
    if compare:
        at, n = compare["candidates"]
        t_at, t_n = compare["seconds"]
        rows.append((f"{at} vs {n}", f"{t_at:.1f} s vs {t_n:.1f} s scoring"
                     + (f"; pick changed: {'yes' if compare['pick_changed'] else 'no'} "
                        f"(the {at}-pick ranks #{compare['rank_of_pick_in_full']} of {n})" if "pick" in compare else "")))
    second = report.get("fidelity")
    if second:
        rows.append(("fidelity", f"{second['screened']} screened at {second['fidelity']} "
                                 f"({second['cheap_seconds']:.1f} s), best {second['rescored']} re-scored at full "
                                 f"fidelity ({second['full_seconds']:.1f} s)"))
    rows.append(("files", f"{out}/candidates.csv, selection.json, search.json"))
    for key, value in rows:
        table.add_row(key, value)
    return table
