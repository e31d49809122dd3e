"""docs/API.md runs as written, and the API gives what the CLI gives on the same settings."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import cli

DOC = Path(__file__).parents[1] / "docs" / "API.md"


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    """Every python block of docs/API.md, executed in order in a fresh folder; its namespace."""
    folder = tmp_path_factory.mktemp("api")
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    namespace: dict = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CLI runs below are given --threads 1: the same sums in the same order
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(folder)
            for block in blocks:
                exec(compile(block, str(DOC), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    namespace["folder"] = folder
    return namespace


def test_walkthrough_covers_every_step(walkthrough):
    assert len(walkthrough["cells"]) == 4 and walkthrough["size"].params > 0
    assert all(set(s.proxies) == {"params", "sahd", "synflow", "naswot"} for s in walkthrough["scored"])
    assert 0 <= walkthrough["run"].test_acc <= 1 and walkthrough["evaluation"].images == 2000
    assert walkthrough["events"][-1].done == walkthrough["events"][-1].total == 6


def test_api_scores_equal_the_cli(walkthrough, tmp_path):
    cells = walkthrough["cells"]
    args = ["score", *sum((["-g", str(g)] for g in cells), []), "-p", "fmnist-tiny", "-T", "2", "--batch", "16",
            "--threads", "1", "--json"]
    code, out, err = cli(*args)
    assert code == 0, err
    by_cli = {row["genotype"]: row["score"] for row in json.loads(out)}
    assert by_cli == {str(s.genotype): s.score for s in walkthrough["scored"]}


def test_api_search_picks_what_the_cli_picks(walkthrough, tmp_path):
    code, _, err = cli("search", "-k", "1x1_3x3_5x5", "-n", "6", "--budget", "30K", "--batch", "16",
                       "-p", "fmnist-tiny", "-T", "2", "--threads", "1", "--out", str(tmp_path / "s"))
    assert code == 0, err
    selection = json.loads((tmp_path / "s" / "selection.json").read_text())
    found = walkthrough["found"]
    assert selection["best"]["genotype"] == str(found.best.genotype)
    assert selection["best"]["score"] == found.best.score
    assert [r["genotype"] for r in selection["top"]] == [str(c.genotype) for c in found.top[:len(selection["top"])]]


def test_api_training_gives_the_cli_weights(walkthrough, tmp_path):
    run = walkthrough["run"]
    code, _, err = cli("train", "-g", str(run.model.genotype), "-p", "fmnist-tiny", "-T", "2", "--epochs", "1",
                       "--limit-train", "256", "--threads", "1", "--out", str(tmp_path / "t"))
    assert code == 0, err
    ours = load_file(str(walkthrough["folder"] / "runs/api/train/model.safetensors"))
    theirs = load_file(str(tmp_path / "t" / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)


def test_score_scores_what_search_scored(walkthrough):
    import spikernel as sk

    found = walkthrough["found"]
    scored = [c for c in found.candidates if c.status == "scored"]
    again = sk.score([c.genotype for c in scored], walkthrough["macro"], walkthrough["data"], batch=16)
    assert [s.score for s in again] == [c.score for c in scored]


def test_score_json_schema_and_bad_input(tmp_path):
    code, out, err = cli("score", "-g", "0302 0030 3003 0000", "-p", "fmnist-tiny", "-T", "2", "--batch", "8",
                         "--all", "--json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert set(row) == {"genotype", "params", "footprint_bytes", "score", "proxies"}
    assert row["score"] == row["proxies"]["sahd"] and {"params", "synflow", "zico"} <= set(row["proxies"])
    code, _, err = cli("score", "-g", "0302 0030 3003 0000", "--proxy", "banana")
    assert code == 2 and err.startswith("error: unknown proxy 'banana'") and err.count("\n") == 1
    bad = tmp_path / "cells.txt"
    bad.write_text("0302 0030 3003 0000\n\n0302 00?0 3003 0000\n")
    code, _, err = cli("score", "--genotypes", str(bad))
    assert code == 2 and "line 3" in err and err.count("\n") == 1
