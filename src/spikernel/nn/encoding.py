"""How an image enters the network (``MacroConfig.encoding``): the stem's input per timestep.

- ``direct`` (SNASNet's): the normalised analog image itself, the same at every step; the stem
  runs once and its output is reused for all T steps.
- ``poisson`` (rate coding): at each step each pixel spikes with probability equal to its
  intensity in [0, 1], drawn from torch's generator on the images' device (seed it for
  reproducible spikes: the scorer seeds it before building each candidate).
- ``latency`` (time-to-first-spike): each pixel spikes once, at step
  ``round((1 - intensity) * (T - 1))`` (half to even, ``torch.round``): the brightest at step 0,
  the faintest last. Pixels below ``LATENCY_THRESHOLD`` never spike: without it the black
  background of every image would fire together at the last step.

Spike encodings see intensities: the images arrive normalised (``Dataset.normalize``, as for
direct input: every training, scoring and evaluation batch is made the same way), and the encoder
undoes the normalisation with the mean and std ``MacroConfig.for_data`` recorded. So no data path
depends on the encoding, and a trained network carries what it needs to read its input.
"""

from __future__ import annotations

import torch

from spikernel.errors import ConfigError
from spikernel.nn.macro import DIRECT, MacroConfig

LATENCY_THRESHOLD = 0.05  # ~13/255: near-black pixels stay silent instead of all firing at the last step


def check_encodable(macro: MacroConfig) -> None:
    """A spike encoding needs the normalisation's mean and std to see intensities."""
    if macro.spiking_input and not macro.input_mean:
        raise ConfigError(f"the {macro.encoding} encoding needs the images' mean and std: build the network "
                          "from settings fitted to the dataset (MacroConfig.for_data), or give input_mean=(0.0,) "
                          "and input_std=(1.0,) per channel for images already in [0, 1]")


def intensities(images: torch.Tensor, macro: MacroConfig) -> torch.Tensor:
    """Normalised images [B, C, H, W] back to intensities in [0, 1] (clamped: float rounding);
    ``macro`` has the statistics (``SNN`` checks it when it is built)."""
    shape = (1, -1, 1, 1)
    mean = torch.tensor(macro.input_mean, dtype=images.dtype, device=images.device).view(shape)
    std = torch.tensor(macro.input_std, dtype=images.dtype, device=images.device).view(shape)
    return (images * std + mean).clamp_(0.0, 1.0)


def direct(images: torch.Tensor, steps: int) -> torch.Tensor:
    return images


def poisson(intensity: torch.Tensor, steps: int) -> torch.Tensor:
    """[T, B, C, H, W] spikes, each an independent draw with P(spike) = intensity."""
    draws = torch.rand((steps, *intensity.shape), dtype=intensity.dtype, device=intensity.device)
    return (draws < intensity).to(intensity.dtype)


def latency(intensity: torch.Tensor, steps: int) -> torch.Tensor:
    """[T, B, C, H, W] spikes, at most one per pixel, brighter pixels earlier."""
    first = torch.round((1.0 - intensity) * (steps - 1))
    times = torch.arange(steps, dtype=intensity.dtype, device=intensity.device).view(-1, *([1] * intensity.dim()))
    return ((times == first) & (intensity >= LATENCY_THRESHOLD)).to(intensity.dtype)


ENCODINGS = {"direct": direct, "poisson": poisson, "latency": latency}


def encode(images: torch.Tensor, macro: MacroConfig) -> torch.Tensor:
    """The stem's input: the image [B, C, H, W] (direct), else its spikes [T, B, C, H, W]."""
    if macro.encoding == DIRECT:
        return images
    return ENCODINGS[macro.encoding](intensities(images, macro), macro.timesteps)
