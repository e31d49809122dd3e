"""``python -m spikernel`` (also what ``torchrun -m spikernel`` starts)."""

from .cli import main

main()
