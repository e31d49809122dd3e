"""spikernel: kernel-size exploration and training-free search for small, accurate SNNs.

``import spikernel as sk`` is cheap: the API's names (``sk.search``, ``sk.train``, ... listed in
``spikernel.api``) load PyTorch and the rest on first use.
"""

__version__ = "0.1.0"

_API = ("proxies", "load_dataset", "preset", "MacroConfig", "MacroSpace", "Genotype", "kernel_set", "sample", "footprint", "score", "search",
        "build", "train", "evaluate", "explore", "select", "quantize", "energy", "export", "load", "Scored",
        "Evaluation", "SearchResult", "TrainResult", "TrainConfig", "Dataset")

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from spikernel import api

        return getattr(api, name)
    raise AttributeError(f"module 'spikernel' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
