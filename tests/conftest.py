import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py and friends

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fashion_mnist_dir():
    """The real full Fashion-MNIST, where this checkout or the machine has it; else skip."""
    candidates = [os.environ.get("SPIKERNEL_DATA", ""), REPO.parent / "shared" / "data", "/usr/share/datasets"]
    for root in candidates:
        path = Path(root) / "fashion-mnist"
        if root and (path / "train-images-idx3-ubyte.gz").exists():
            return path
    pytest.skip("full Fashion-MNIST not found (set SPIKERNEL_DATA)")


@pytest.fixture
def one_thread():
    """Run a test on one thread: tiny networks train faster so, a shared CPU does not stall them, and
    in-process runs then match subprocess runs started with one thread. The environment pins it too,
    so that a command run in-process keeps one thread instead of taking the idle cores (a patch of
    its own: a test's ``monkeypatch.undo()`` must not lift it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)
