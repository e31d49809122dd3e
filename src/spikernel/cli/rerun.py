"""A command re-run on a folder it has already finished, answered from the stored results.

Resuming a finished search or training does no work, but finding that out in the library means
importing PyTorch (1.6 s of a 2-core machine) to read the data and rebuild the run's identity. So
after a command finishes, the folder keeps what was asked (``REQUEST_FILE``: the options, the
dataset files' sizes and times, the version, and the sizes and times of the results it wrote); the
same command on the same folder, with nothing changed since, prints those results without
importing PyTorch. Anything else, or any doubt, takes the library's own resume path.
"""

from __future__ import annotations

import json
from contextlib import suppress
from importlib import resources
from pathlib import Path

from spikernel import __version__
from spikernel.errors import WriteError
from spikernel.files import write_json

REQUEST_FILE = ".request.json"


def request_of(command: str, params: dict, data_dir=None, dataset: str | None = None, also: tuple = ()) -> dict | None:
    """What a command is asked to do, comparable across calls; None where its inputs cannot be named
    without loading them (a dataset in a default cache, a shared storage URL)."""
    if dataset and data_dir is None and dataset != "fashion-mnist-mini":
        return None
    embedded = Path(str(resources.files("spikernel") / "datasets" / "fashion-mnist-mini"))
    inputs = {"data": _stats(Path(data_dir) if data_dir else embedded),
              **{str(p): _stats(Path(p)) for p in also if p is not None}}
    options = {k: str(v) for k, v in sorted(params.items()) if k not in ("threads", "resume")}
    return {"command": command, "version": __version__, "options": options, "inputs": inputs}


def finished_results(out: Path, asked: dict | None, results: tuple[str, ...]) -> dict | None:
    """The stored results (name -> parsed JSON) when ``out`` holds exactly this finished request."""
    try:
        kept = json.loads((Path(out) / REQUEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    if asked is None or kept.get("asked") != asked or kept.get("results") != _results(out, results):
        return None
    try:
        return {name: json.loads((Path(out) / name).read_text()) for name in results}
    except (OSError, ValueError):
        return None


def remember_request(out: Path, asked: dict | None, results: tuple[str, ...]) -> None:
    """Keep ``asked`` beside the results; best effort: without it a re-run takes the library's path."""
    if asked is not None:
        with suppress(WriteError):
            write_json(Path(out) / REQUEST_FILE, {"asked": asked, "results": _results(out, results)})


def _results(out: Path, names: tuple[str, ...]) -> list:
    return [_stats(Path(out) / name) for name in names]


def _stats(path: Path) -> list:
    """[name, size, mtime] of a file, or of each file directly inside a folder (names only: no
    machine path goes into a run folder)."""
    try:
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        return [[f.name, st.st_size, st.st_mtime_ns] for f in files for st in (f.stat(),)]
    except OSError:
        return [[path.name, None, None]]
