"""The micro-measurements behind the fast scorer's choices: which faster variant of an operation
gives the same bits (usable) and which does not (a flipped spike moves the score).

    python benchmarks/layout_checks.py

For each operation: best-of-N time of the NCHW original and the variant, and whether every output
element is bit-identical.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_ms, machine  # noqa: E402

from spikernel.nn.neuron import TAU, THRESHOLD, lif_scan  # noqa: E402

CL = torch.channels_last


def spikes(*shape) -> torch.Tensor:
    return (torch.rand(shape) > 0.8).float()


def blocked_products(c: torch.Tensor, width: int = 256) -> torch.Tensor:
    """c c^T with bfloat16 blocks of 256 neurons (each block's sums <= 256: exact in bfloat16)."""
    steps, batch, n = c.shape
    cb = F.pad(c.to(torch.bfloat16), (0, (-n) % width))
    blocks = cb.view(steps, batch, -1, width).transpose(1, 2)
    return (blocks @ blocks.transpose(-1, -2)).sum(1, dtype=torch.float32)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    with torch.inference_mode():
        for c, size, k in ((16, 28, 3), (16, 28, 5), (32, 14, 3), (32, 14, 5)):
            x = spikes(64, c, size, size)
            w = torch.empty(c, c, k, k)
            torch.nn.init.kaiming_uniform_(w, a=2)
            conv = lambda t: F.conv2d(t, w, padding=k // 2)  # noqa: E731
            xc = x.contiguous(memory_format=CL)
            rows.append((f"conv {c}->{c} {k}x{k} at {size}x{size}, batch 64: channels-last",
                         best_ms(lambda: conv(x)), best_ms(lambda: conv(xc)), torch.equal(conv(x), conv(xc))))
            x5 = spikes(5 * 64, c, size, size)
            parts = x5.split(64)
            rows.append((f"conv {c}->{c} {k}x{k} at {size}x{size}: T*B=320 at once vs 5 x 64",
                         best_ms(lambda: [conv(p) for p in parts]), best_ms(lambda: conv(x5)),
                         torch.equal(conv(x5), torch.cat([conv(p) for p in parts]))))
        for shape in ((64, 16, 28, 28), (128, 32, 28, 28)):
            x = torch.randn(shape) * 2 + 0.3
            w, b = torch.rand(shape[1]) + 0.5, torch.randn(shape[1])
            bn = lambda t: F.batch_norm(t, None, None, w, b, True, 0.0, 1e-5)  # noqa: E731
            xc = x.contiguous(memory_format=CL)
            rows.append((f"batch norm (training) {shape}: channels-last", best_ms(lambda: bn(x)),
                         best_ms(lambda: bn(xc)), torch.equal(bn(x), bn(xc))))
            s = spikes(*shape) * torch.randn(shape)
            for kernel, stride, pad in ((3, 1, 1), (2, 2, 0)):
                pool = lambda t: F.avg_pool2d(t, kernel, stride, pad)  # noqa: E731
                via_cl = lambda: pool(s.contiguous(memory_format=CL)).contiguous()  # noqa: E731
                rows.append((f"avg pool {kernel}x{kernel} {shape}: channels-last and back", best_ms(lambda: pool(s)),
                             best_ms(via_cl), torch.equal(pool(s), via_cl())))
        for shape, kernel, stride, pad in (((256, 128, 32, 32), 3, 1, 1), ((256, 256, 32, 32), 2, 2, 0)):
            s = spikes(*shape) * torch.randn(shape)  # CIFAR widths, batch 256: the cell's and the reduction's pools
            pool = lambda t: F.avg_pool2d(t, kernel, stride, pad)  # noqa: E731
            via_cl = lambda: pool(s.contiguous(memory_format=CL)).contiguous()  # noqa: E731
            rows.append((f"avg pool {kernel}x{kernel} {shape}: channels-last and back", best_ms(lambda: pool(s), 5),
                         best_ms(via_cl, 5), torch.equal(pool(s), via_cl())))
        x, v = torch.randn(1, 256, 128, 32, 32) * 1.5, torch.rand(256, 128, 32, 32)  # one LIF step, batch 256
        whole = lambda v: lif_scan(x, v, TAU, THRESHOLD, chunk=v.numel())  # noqa: E731
        chunked = lambda v: lif_scan(x, v, TAU, THRESHOLD)  # noqa: E731
        w, c = v.clone(), v.clone()
        rows.append(("LIF step (256, 128, 32, 32): in chunks of LIF_CHUNK elements", best_ms(lambda: whole(v), 5),
                     best_ms(lambda: chunked(v), 5), torch.equal(whole(w), chunked(c)) and torch.equal(w, c)))
        for batch, n in ((64, 12544), (128, 25088)):
            c = spikes(5, batch, n)
            rows.append((f"kernel products c c^T [5, {batch}, {n}]: bfloat16 blocks",
                         best_ms(lambda: c @ c.transpose(1, 2)), best_ms(lambda: blocked_products(c)),
                         torch.equal(c @ c.transpose(1, 2), blocked_products(c))))
    print(f"{machine(args.threads)}")
    print(f"{'operation: variant':<66} {'original ms':>11} {'variant ms':>10}  same bits")
    for name, original, variant, same in rows:
        print(f"{name:<66} {original:>11.2f} {variant:>10.2f}  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
