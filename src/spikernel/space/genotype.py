"""The cell search space: operations, kernel-size sets, genotypes and SNASNet's random sampling.

A cell is a 4-node graph written as a 4x4 matrix of operation codes: ``M[i][j]`` (i < j) is a
forward edge i -> j, ``M[j][i]`` (j > i) a backward edge that carries node j at t-1 into node i
at t. The text form is SNASNet's ``--cnt_mat``: four rows of four code characters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Iterator, Sequence

import numpy as np

from spikernel.errors import GenotypeError, KernelSetError

NODES = 4
INPUT, OUTPUT = 0, NODES - 1
PAIRS = tuple((i, j) for i in range(NODES) for j in range(i + 1, NODES))

# Operation codes (SNASNet's 0-4, SpiKernel's 5 = conv5x5 and 6 = conv7x7, then 9x9, 11x11, ...).
ZERO, SKIP, AVGPOOL = 0, 1, 4
_FIXED_CONV_CODES = {1: 2, 3: 3, 5: 5, 7: 6}
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"  # one character per code in the text form
MAX_CODE = len(_DIGITS) - 1


def conv_code(kernel: int) -> int:
    """The operation code of a LIF-Conv(kernel)-BN edge."""
    check_kernel(kernel)
    code = _FIXED_CONV_CODES.get(kernel, 7 + (kernel - 9) // 2)
    if code > MAX_CODE:
        raise KernelSetError(f"kernel size {kernel} is too large for the text form (max {kernel_of(MAX_CODE)})")
    return code


def kernel_of(code: int) -> int | None:
    """The convolution kernel size of an operation code, or None for zero/skip/avgpool."""
    if code in (ZERO, SKIP, AVGPOOL):
        return None
    for kernel, fixed in _FIXED_CONV_CODES.items():
        if code == fixed:
            return kernel
    if 7 <= code <= MAX_CODE:
        return 9 + 2 * (code - 7)
    raise GenotypeError(f"unknown operation code {code}")


def op_name(code: int) -> str:
    kernel = kernel_of(code)
    if kernel is not None:
        return f"conv{kernel}x{kernel}"
    return {ZERO: "zero", SKIP: "skip", AVGPOOL: "avgpool3x3"}[code]


def check_kernel(kernel: int) -> int:
    if isinstance(kernel, bool) or not isinstance(kernel, (int, np.integer)) or kernel < 1 or kernel % 2 == 0:
        raise KernelSetError(f"kernel size must be a positive odd integer, got {kernel!r}")
    return int(kernel)


# --------------------------------------------------------------------------- kernel-size sets


@dataclass(frozen=True)
class KernelSet:
    """The convolution kernel sizes a search may place in a cell (zero, skip, avgpool always allowed)."""

    kernels: tuple[int, ...]

    def __post_init__(self):
        if not self.kernels:
            raise KernelSetError("a kernel set needs at least one kernel size")
        kernels = tuple(sorted({check_kernel(k) for k in self.kernels}))
        if len(kernels) != len(self.kernels):
            raise KernelSetError(f"duplicate kernel sizes in {list(self.kernels)}")
        object.__setattr__(self, "kernels", kernels)
        for k in kernels:
            conv_code(k)

    @property
    def name(self) -> str:
        return "_".join(f"{k}x{k}" for k in self.kernels)

    @property
    def op_codes(self) -> tuple[int, ...]:
        """Codes a sampler draws from, uniformly, in code order (SNASNet's 0..4 for 1x1_3x3)."""
        return tuple(sorted({ZERO, SKIP, AVGPOOL, *(conv_code(k) for k in self.kernels)}))

    @classmethod
    def parse(cls, spec: str | Iterable[int] | KernelSet) -> KernelSet:
        """A preset name (``1x1_3x3``), any ``KxK_...`` name, or a comma list (``1,3,9``)."""
        if isinstance(spec, KernelSet):
            return spec
        if not isinstance(spec, str):
            return cls(tuple(spec))
        text = spec.strip()
        try:
            if "x" in text:
                sizes = []
                for part in text.split("_"):
                    a, b = part.split("x")
                    if a != b:
                        raise KernelSetError(f"kernel set {spec!r}: only square kernels (KxK), got {part!r}")
                    sizes.append(int(a))
            else:
                sizes = [int(part) for part in text.split(",")]
        except ValueError:
            raise KernelSetError(
                f"unknown kernel set {spec!r}: use a preset ({', '.join(KERNEL_SETS)}) or odd sizes like 1,3,9"
            ) from None
        return cls(tuple(sizes))

    def __str__(self) -> str:
        return self.name


KERNEL_SETS = {
    ks.name: ks
    for ks in map(
        KernelSet,
        [(1, 3), (1, 5), (1, 7), (1, 3, 5), (1, 3, 7), (1, 5, 7), (1, 3, 5, 7)],
    )
}


# --------------------------------------------------------------------------- genotypes

Matrix = tuple[tuple[int, ...], ...]


@dataclass(frozen=True, repr=False)
class Genotype:
    """A cell: a validated 4x4 operation matrix (not necessarily pruned; see ``pruned``)."""

    matrix: Matrix

    def __post_init__(self):
        rows = tuple(tuple(int(v) for v in row) for row in self.matrix)
        if len(rows) != NODES or any(len(r) != NODES for r in rows):
            raise GenotypeError(f"a genotype is a {NODES}x{NODES} matrix, got shape {[len(r) for r in rows]}")
        for i, row in enumerate(rows):
            for j, code in enumerate(row):
                if code < 0 or code > MAX_CODE:
                    raise GenotypeError(f"unknown operation code {code} at row {i}, column {j}")
                kernel_of(code)
                if i == j and code:
                    raise GenotypeError(f"self-loop on node {i} (diagonal must be 0)")
        for i, j in PAIRS:
            if rows[i][j] and rows[j][i]:
                raise GenotypeError(f"pair ({i},{j}) has both a forward and a backward edge")
        object.__setattr__(self, "matrix", rows)
        # The one validity rule every command applies: a cell whose output never sees its input
        # (all zeros, or only dead ends) computes nothing, so it is no cell at all.
        if not self.is_connected:
            raise GenotypeError(f"cell {self} is not connected: no path of edges leads from its input (node 0) "
                                "to its output (node 3)")

    # ---- text and JSON forms
    @classmethod
    def parse(cls, text: str) -> Genotype:
        """SNASNet's text form: ``0302 0030 3003 0000`` (spaces, commas or nothing between rows)."""
        if not isinstance(text, str):
            raise GenotypeError(f"genotype must be a string, got {type(text).__name__}")
        compact = "".join(ch for ch in text if ch not in " ,_\t\n").lower()
        if len(compact) != NODES * NODES:
            raise GenotypeError(
                f"malformed genotype {text!r}: expected {NODES} rows of {NODES} codes like '0302 0030 3003 0000'"
            )
        bad = [ch for ch in compact if ch not in _DIGITS]
        if bad:
            raise GenotypeError(f"malformed genotype {text!r}: {bad[0]!r} is not an operation code")
        codes = [_DIGITS.index(ch) for ch in compact]
        return cls(tuple(tuple(codes[r * NODES : (r + 1) * NODES]) for r in range(NODES)))

    def __str__(self) -> str:
        return " ".join("".join(_DIGITS[c] for c in row) for row in self.matrix)

    def __repr__(self) -> str:
        return f"Genotype('{self}')"

    def to_dict(self) -> dict:
        return {
            "genotype": str(self),
            "cell": self.cell_type,
            "edges": [
                {"from": i, "to": j, "op": op_name(code), "backward": i > j} for i, j, code in self.all_edges
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Genotype:
        try:
            return cls.parse(data["genotype"])
        except (KeyError, TypeError):
            raise GenotypeError("genotype JSON needs a 'genotype' string field") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise GenotypeError(f"genotype JSON is malformed: {exc}") from None

    # ---- structure
    @property
    def forward_edges(self) -> list[tuple[int, int, int]]:
        """(i, j, code) for each forward edge i -> j."""
        return [(i, j, self.matrix[i][j]) for i, j in PAIRS if self.matrix[i][j]]

    @property
    def backward_edges(self) -> list[tuple[int, int, int]]:
        """(j, i, code) for each backward edge j -> i (j > i): node j at t-1 feeds node i at t."""
        return [(j, i, self.matrix[j][i]) for i, j in PAIRS if self.matrix[j][i]]

    @property
    def all_edges(self) -> list[tuple[int, int, int]]:
        return self.forward_edges + self.backward_edges

    @property
    def is_backward(self) -> bool:
        return bool(self.backward_edges)

    @property
    def cell_type(self) -> str:
        return "backward" if self.is_backward else "forward"

    @property
    def kernels(self) -> tuple[int, ...]:
        """Convolution kernel sizes used by the (pruned) cell."""
        return tuple(sorted({k for *_, c in self.pruned().all_edges if (k := kernel_of(c)) is not None}))

    def fits(self, kernel_set: KernelSet) -> bool:
        return set(self.kernels) <= set(kernel_set.kernels)

    def pruned(self) -> Genotype:
        """Remove intermediate nodes that cannot reach the output or be reached from the input.

        Reachability follows data flow over both forward and backward (delayed) edges; a node
        that is cut off either way contributes nothing to the output, so its row and column go.
        """
        edges = [(a, b) for a, b, _ in self.all_edges]
        from_input = _reachable(INPUT, edges)
        to_output = _reachable(OUTPUT, [(b, a) for a, b in edges])
        dead = [n for n in range(1, NODES - 1) if n not in from_input or n not in to_output]
        if not dead:
            return self
        rows = [list(r) for r in self.matrix]
        for n in dead:
            for k in range(NODES):
                rows[n][k] = rows[k][n] = 0
        return Genotype(tuple(map(tuple, rows)))

    @property
    def is_connected(self) -> bool:
        """Whether the output (node 3) is reachable from the input at all."""
        return OUTPUT in _reachable(INPUT, [(a, b) for a, b, _ in self.all_edges])

    @cached_property
    def key(self) -> str:
        """Canonical identity: equal for genotypes that are the same architecture after pruning."""
        return str(self.pruned())

    def __eq__(self, other):  # same architecture, not same spelling
        return isinstance(other, Genotype) and self.key == other.key

    def __hash__(self):
        return hash(self.key)


def _reachable(start: int, edges: Sequence[tuple[int, int]]) -> set[int]:
    seen, stack = {start}, [start]
    while stack:
        node = stack.pop()
        for a, b in edges:
            if a == node and b not in seen:
                seen.add(b)
                stack.append(b)
    return seen


# --------------------------------------------------------------------------- sampling

CELL_TYPES = ("forward", "backward")


def sample(kernel_set: KernelSet | str, cell: str, rng: np.random.Generator) -> Genotype:
    """SNASNet's random cell: per pair a direction (backward cells: 1/2 each) then a uniform op.

    Resampled until the direct 0 -> 3 edge is non-zero; returned pruned.
    """
    kernel_set = KernelSet.parse(kernel_set)
    if cell not in CELL_TYPES:
        raise GenotypeError(f"cell must be one of {CELL_TYPES}, got {cell!r}")
    ops = kernel_set.op_codes
    while True:
        rows = [[0] * NODES for _ in range(NODES)]
        for i, j in PAIRS:
            backward = cell == "backward" and rng.random() < 0.5
            code = ops[rng.integers(len(ops))]
            if backward:
                rows[j][i] = code
            else:
                rows[i][j] = code
        if rows[INPUT][OUTPUT]:
            return Genotype(tuple(map(tuple, rows))).pruned()


def sample_many(kernel_set: KernelSet | str, cell: str, n: int, seed: int = 0) -> Iterator[Genotype]:
    """``n`` seeded samples (duplicates included, as a random search draws them)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield sample(kernel_set, cell, rng)
