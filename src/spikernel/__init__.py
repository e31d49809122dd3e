"""spikernel: kernel-size exploration and training-free search for small, accurate SNNs."""

import logging as _logging

# torch warns once per process that Triton is absent; on a CPU that is expected, not news.
_logging.getLogger("torch._library.triton").setLevel(_logging.ERROR)

__version__ = "0.1.0"
