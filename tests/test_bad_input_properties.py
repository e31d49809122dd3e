"""Property-based bad input (Hypothesis): malformed genotypes, kernel lists, budgets, paths and IDX
headers either work or end in one clear line, and never touch an existing run folder.

Bounded by a settings profile: ``ci`` (the default) keeps the module well under a minute;
``HYPOTHESIS_PROFILE=thorough`` runs many more examples.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
from decimal import Decimal

import numpy as np
import pytest
import sqlalchemy
from hypothesis import HealthCheck, given, settings, strategies as st

from spikernel.data.datasets import read_idx
from spikernel.errors import ConfigError, DatasetError, GenotypeError, KernelSetError
from spikernel.nas.engine import open_storage, sqlite_url
from spikernel.nn.footprint import Budget, footprint
from spikernel.nn.model import build_model, get_preset
from spikernel.space.genotype import Genotype, KernelSet
from helpers import assert_one_error, cli, snapshot, write_fashion_mnist

GENOTYPE = "0303 0030 2002 0200"
TINY = ["--preset", "fmnist-tiny", "-T", "2"]

settings.register_profile("ci", max_examples=40, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_MACRO = get_preset("fmnist-tiny")

# Genotype texts: four rows of codes (often valid, often disconnected or clashing) or anything at all.
codes = st.sampled_from("0123456789az")
rows = st.lists(st.text(codes, min_size=3, max_size=5), min_size=3, max_size=5)
genotype_texts = st.one_of(
    rows.map(" ".join),
    st.lists(st.sampled_from("0001234"), min_size=16, max_size=16).map(lambda c: " ".join(
        "".join(c[r * 4:(r + 1) * 4]) for r in range(4))),
    st.text(st.sampled_from("0123abz#,_- \tX"), max_size=24),
    st.text(max_size=20),
)


def one_line_or_ok(code, out, err) -> bool:
    """True when the command worked; else it must have failed with one error line."""
    if code == 0:
        return True
    assert_one_error(code, out, err, alone=False)
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1, err
    return False


@given(text=genotype_texts)
def test_info_takes_a_genotype_or_says_why_not(text):
    code, out, err = cli("info", "-g", text, "-p", "fmnist-tiny", "--json")
    if code == 0:
        report = json.loads(out)
        assert Genotype.parse(text).is_connected and report["params"] > 0
        return
    lines = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    with pytest.raises(GenotypeError):
        Genotype.parse(text)


@given(matrix=st.lists(st.lists(st.integers(0, 9), min_size=4, max_size=4), min_size=4, max_size=4))
def test_one_cell_rule_what_info_counts_is_what_train_builds(matrix):
    """A matrix is a cell (for info, train and export alike) or a GenotypeError; a cell builds,
    with exactly the parameters the footprint (what `info` prints) counts."""
    try:
        genotype = Genotype(tuple(map(tuple, matrix)))
    except GenotypeError:
        return
    model = build_model(genotype, TINY_MACRO)
    assert sum(p.numel() for p in model.parameters()) == footprint(genotype, TINY_MACRO).params


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    data = write_fashion_mnist(root / "fashion-mnist", train=16, test=8)
    out = root / "run"
    code, _, err = cli(*train_args(data, out, GENOTYPE))
    assert code == 0, err
    return data, out, snapshot(out)


def train_args(data, out, genotype):
    return ["train", "-g", genotype, *TINY, "--dataset", "fashion-mnist", "--data-dir", data, "--epochs", 1,
            "--batch", 8, "--out", out]


@given(text=genotype_texts)
def test_train_into_an_existing_run_never_changes_it(trained, text):
    data, out, before = trained
    code, stdout, err = cli(*train_args(data, out, text))
    if code == 0:  # the same cell, however it is spelled: the run is finished, nothing is trained
        assert Genotype.parse(text) == Genotype.parse(GENOTYPE) and "already finished" in err
    else:
        line = assert_one_error(code, stdout, err, alone=False)
        assert "holds a different run" in line or "genotype" in line.lower() or "cell" in line
    assert snapshot(out) == before


kernel_texts = st.one_of(
    st.lists(st.integers(-3, 80), min_size=0, max_size=4).map(lambda ks: ",".join(map(str, ks))),
    st.lists(st.integers(0, 70), min_size=1, max_size=3).map(lambda ks: "_".join(f"{k}x{k}" for k in ks)),
    st.text(st.sampled_from("0123456789x_,- a"), max_size=12),
)


@given(text=kernel_texts)
def test_sample_takes_a_kernel_set_or_says_why_not(text):
    code, out, err = cli("sample", "--kernels", text, "-n", 3, "--json")
    if one_line_or_ok(code, out, err):
        allowed = set(KernelSet.parse(text).kernels)
        assert all(set(Genotype.parse(g).kernels) <= allowed for g in json.loads(out))
    else:
        with pytest.raises(KernelSetError):
            KernelSet.parse(text)


budget_texts = st.one_of(
    st.from_regex(r"\A[ +-]?[0-9]{0,4}(\.[0-9]{0,3})?([eE][+-]?[0-9]{1,2})? ?(K|M|G|KB|MB|GB|KiB|MiB|GiB|B|k|mb|x)?\Z"),
    st.sampled_from(["inf", "nan", "-inf", "Infinity", "1e3", "NaN", "0x10", "1_000", "٣K", "½M"]),
    st.text(max_size=10),
)


@given(text=budget_texts)
def test_a_budget_parses_exactly_or_is_refused(text):
    try:
        budget = Budget.parse(text)
    except ConfigError:
        return
    number = text.strip().upper().replace(" ", "").rstrip("KMGIB")
    unit = text.strip().upper().replace(" ", "")[len(number):]
    scale = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    assert budget.limit == int(Decimal(number) * scale) >= 1
    assert budget.unit == ("params" if unit in ("", "K", "M", "G") else "bytes")


@given(text=budget_texts)
def test_explore_refuses_a_bad_budget_in_one_line_before_writing(tmp_path, text):
    out = tmp_path / "study"
    code, stdout, err = cli("explore", f"--budget={text}", "--dataset", "no-such-data", "-o", out)
    line = assert_one_error(code, stdout, err)
    assert "budget" in line or "unknown dataset" in line or "no-such-data" in line
    assert not out.exists()


folder_names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
                       min_size=1, max_size=24).filter(lambda s: s not in (".", ".."))


@given(name=folder_names)
def test_every_folder_name_has_an_exact_sqlite_url(tmp_path, name):
    path = tmp_path / name / "study.db"
    assert sqlalchemy.engine.make_url(sqlite_url(path)).database == str(path.resolve())


@settings(max_examples=max(4, settings().max_examples // 5))  # each opens a real SQLite study (~0.4 s)
@given(name=folder_names)
def test_the_study_database_lands_inside_its_folder(tmp_path_factory, name):
    root = tmp_path_factory.mktemp("urls")
    folder = root / name
    try:
        folder.mkdir()
    except OSError:  # a name the filesystem itself refuses (too long in bytes): not the URL's business
        return
    open_storage(sqlite_url(folder / "study.db")).engine.dispose()
    assert (folder / "study.db").is_file()
    assert [p.name for p in root.iterdir()] == [name]


@given(magic=st.sampled_from([b"\0\0", b"\0\1", b"PK"]), kind=st.sampled_from([0x08, 0x08, 0x09, 0x0D]),
       ndim=st.integers(0, 6), dims=st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 6), min_size=6, max_size=6),
       payload=st.binary(max_size=300), compressed=st.booleans())
def test_an_idx_file_matches_its_header_or_is_refused(tmp_path, magic, kind, ndim, dims, payload, compressed):
    header = magic + bytes([kind, ndim]) + struct.pack(f">{ndim}I", *dims[:ndim])
    path = tmp_path / ("x.idx.gz" if compressed else "x.idx")
    (gzip.open if compressed else open)(path, "wb").write(header + payload)
    try:
        array = read_idx(path)
    except DatasetError:
        return
    assert array.dtype == np.uint8 and list(array.shape) == dims[:ndim] and array.tobytes() == payload
