import json
from collections import Counter

import numpy as np
import pytest

from spikernel.errors import GenotypeError, KernelSetError
from spikernel.space.genotype import (
    KERNEL_SETS, PAIRS, Genotype, KernelSet, conv_code, kernel_of, op_name, sample, sample_many,
)

CUSTOM_SETS = [KernelSet.parse("1,3,9"), KernelSet.parse("11")]
ALL_SETS = list(KERNEL_SETS.values()) + CUSTOM_SETS


def test_snasnet_strings_round_trip_exactly():
    for text in ("0302 0030 3003 0000", "0303 0030 2002 0200"):
        assert str(Genotype.parse(text)) == text
    assert str(Genotype.parse("0302,0030,3003,0000")) == "0302 0030 3003 0000"
    assert str(Genotype.parse("0302003030030000")) == "0302 0030 3003 0000"


def test_operation_codes():
    assert [op_name(c) for c in range(7)] == [
        "zero", "skip", "conv1x1", "conv3x3", "avgpool3x3", "conv5x5", "conv7x7"]
    for k in (1, 3, 5, 7, 9, 11, 21):
        assert kernel_of(conv_code(k)) == k
    assert conv_code(9) == 7 and Genotype.parse("0007 0000 0000 0000").kernels == (9,)


@pytest.mark.parametrize("kernel_set", ALL_SETS, ids=str)
@pytest.mark.parametrize("cell", ["forward", "backward"])
def test_sampled_genotypes_round_trip(kernel_set, cell):
    for g in sample_many(kernel_set, cell, 2000, seed=7):
        assert Genotype.parse(str(g)).matrix == g.matrix
        assert Genotype.from_json(g.to_json()).matrix == g.matrix
        assert json.loads(g.to_json())["genotype"] == str(g)


@pytest.mark.parametrize("kernel_set", ALL_SETS, ids=str)
@pytest.mark.parametrize("cell", ["forward", "backward"])
def test_sampling_constraints(kernel_set, cell):
    allowed = set(kernel_set.op_codes)
    for g in sample_many(kernel_set, cell, 2000, seed=3):
        m = g.matrix
        assert m[0][3] != 0, "the direct 0 -> 3 edge is never zero"
        assert all(m[i][i] == 0 for i in range(4))
        assert all(not (m[i][j] and m[j][i]) for i, j in PAIRS)
        assert {c for row in m for c in row} <= allowed
        assert g.pruned().matrix == m, "samples come out pruned"
        assert g.fits(kernel_set)
        if cell == "forward":
            assert not g.is_backward


def test_sampling_distribution_matches_snasnet():
    """Before pruning: direction 1/2 per pair, ops uniform; check on the unpruned 0 -> 3 pair."""
    ks = KERNEL_SETS["1x1_3x3"]
    rng = np.random.default_rng(0)
    ops, backward_pairs, n = Counter(), 0, 4000
    for _ in range(n):
        g = sample(ks, "backward", rng)
        ops[g.matrix[0][3]] += 1  # never pruned: its nodes are the input and output
        backward_pairs += bool(g.matrix[3][0])
    assert backward_pairs == 0  # a backward 3 -> 0 leaves 0 -> 3 empty: resampled
    # conditioned on non-zero, the four other ops are equally likely
    assert set(ops) == {1, 2, 3, 4}
    assert max(ops.values()) / min(ops.values()) < 1.15
    # direction of pair (0, 1) when it survives pruning with an edge: about half backward
    rng = np.random.default_rng(1)
    directions = Counter()
    for _ in range(n):
        g = sample(ks, "backward", rng)
        if g.matrix[0][1] or g.matrix[1][0]:
            directions[bool(g.matrix[1][0])] += 1
    assert 0.4 < directions[True] / sum(directions.values()) < 0.6


def test_sampling_is_seeded():
    a = [str(g) for g in sample_many("1x1_5x5", "backward", 50, seed=11)]
    b = [str(g) for g in sample_many("1x1_5x5", "backward", 50, seed=11)]
    c = [str(g) for g in sample_many("1x1_5x5", "backward", 50, seed=12)]
    assert a == b and a != c


def test_pruning_removes_dead_nodes():
    # node 1 has no incoming edge: cut off from the input, so its row and column go
    g = Genotype.parse("0002 0030 0003 0000")
    assert str(g.pruned()) == "0002 0000 0000 0000"
    # node 2 is reached but reaches nothing: removed, node 1 stays
    g = Genotype.parse("0303 0033 0000 0000")
    assert str(g.pruned()) == "0303 0003 0000 0000"
    # a backward edge counts as a path: 3 -> 1 (t-1) makes node 1 reachable; 1 -> 2 -> 3 leads out
    g = Genotype.parse("0002 0030 0003 0300")
    assert g.pruned() is g
    # already-minimal cells are untouched
    assert Genotype.parse("0302 0030 3003 0000").pruned().matrix == Genotype.parse("0302 0030 3003 0000").matrix


def test_canonical_key_identifies_equal_architectures():
    a = Genotype.parse("0002 0030 0003 0000")
    b = Genotype.parse("0002 0040 0001 0000")
    assert a.key == b.key == "0002 0000 0000 0000"
    assert a == b and hash(a) == hash(b)
    assert len({a, b, Genotype.parse("0003 0000 0000 0000")}) == 2


@pytest.mark.parametrize("text,problem", [
    ("0302 003 3003 0000", "4 rows of 4 codes"),
    ("0302 0030 3003 00000", "4 rows of 4 codes"),
    ("03#2 0030 3003 0000", "not an operation code"),
    ("1302 0030 3003 0000", "self-loop"),
    ("0302 3030 3003 0000", "both a forward and a backward edge"),
])
def test_malformed_genotypes(text, problem):
    with pytest.raises(GenotypeError, match=problem):
        Genotype.parse(text)


def test_genotype_json_errors():
    with pytest.raises(GenotypeError):
        Genotype.from_json("{not json")
    with pytest.raises(GenotypeError):
        Genotype.from_json('{"cell": "forward"}')


def test_kernel_sets():
    assert list(KERNEL_SETS) == [
        "1x1_3x3", "1x1_5x5", "1x1_7x7", "1x1_3x3_5x5", "1x1_3x3_7x7", "1x1_5x5_7x7", "1x1_3x3_5x5_7x7"]
    assert KernelSet.parse("1x1_3x3").op_codes == (0, 1, 2, 3, 4)  # SNASNet's space exactly
    assert KernelSet.parse("1x1_7x7").op_codes == (0, 1, 2, 4, 6)
    assert KernelSet.parse("3,1,9").name == "1x1_3x3_9x9"
    assert KernelSet.parse([5, 1]) == KERNEL_SETS["1x1_5x5"]


@pytest.mark.parametrize("spec", ["1x1_4x4", "0,3", "-1,3", "2", "1,1", "banana", "1x3", ""])
def test_bad_kernel_sets(spec):
    with pytest.raises(KernelSetError):
        KernelSet.parse(spec)
