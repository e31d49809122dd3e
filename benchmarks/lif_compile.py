"""The LIF alone: spikingjelly's multi-step LIFNode vs ``lif_scan`` vs a ``torch.compile``d step.

    python benchmarks/lif_compile.py --shape 5 64 16 28 28

Answers whether compiling the neuron is worth it for scoring: its speed once compiled, what the
compilation costs, and whether the spikes stay bit-identical.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_ms, machine  # noqa: E402
from spikernel.nn.neuron import TAU, THRESHOLD, lif  # noqa: E402
from spikernel.proxy.sahd import lif_scan  # noqa: E402


def step(x, v):
    h = v + (x - v) / TAU
    spike = (h >= THRESHOLD).to(x.dtype)
    return spike, h - h * spike


def scan_with(step_fn, x_seq):
    v = torch.zeros_like(x_seq[0])
    out = torch.empty_like(x_seq)
    for t in range(x_seq.shape[0]):
        out[t], v = step_fn(x_seq[t], v)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[5, 64, 16, 28, 28])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.shape) * 1.5
    neuron = lif()
    with torch.inference_mode():
        expected = neuron(x)

        def spikingjelly():
            neuron.reset()
            return neuron(x)

        rows = [("spikingjelly LIFNode (multi-step)", best_ms(spikingjelly), True),
                ("lif_scan (in place)", best_ms(lambda: lif_scan(x, torch.zeros_like(x[0]), TAU, THRESHOLD)),
                 torch.equal(lif_scan(x, torch.zeros_like(x[0]), TAU, THRESHOLD), expected))]
        compiled = torch.compile(step, dynamic=False)
        started = time.perf_counter()
        first = scan_with(compiled, x)
        compile_s = time.perf_counter() - started
        rows.append((f"torch.compile step (first call {compile_s:.1f} s)", best_ms(lambda: scan_with(compiled, x)),
                     torch.equal(first, expected)))
    print(f"{machine(args.threads)}; input {tuple(args.shape)}")
    for name, ms, same in rows:
        print(f"{name:<44} {ms:>8.2f} ms   same spikes: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
