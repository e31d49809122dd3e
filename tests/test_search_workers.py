"""The search engine across processes: resume after SIGKILL, two workers on one PostgreSQL study."""

import csv
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from spikernel.nas.engine import RECORD_ATTR, SLOT_ATTR, SUPERSEDED, Search, sqlite_url
from spikernel.space.genotype import sample_many

PG_SERVER = Path(__file__).parent / "pg_server.sh"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two cores, shared: one thread per worker


def search_command(out, *args):
    return [sys.executable, "-m", "spikernel", "search", "-p", "fmnist-tiny", "--repeats", "1", "--heartbeat", "1",
            *args, "--out", str(out)]


def finished_slots(trials):
    """slot -> the trials that finished it (superseded ones excluded): must be exactly one each."""
    slots = {}
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.user_attrs[RECORD_ATTR]["status"] != SUPERSEDED:
            slots.setdefault(t.user_attrs[SLOT_ATTR], []).append(t)
    return slots


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_resume_after_sigkill_scores_every_candidate_once(tmp_path):
    out, n = tmp_path / "run", 10
    command = search_command(out, "--batch", "32", "-n", str(n))
    worker = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = out / "study.db"

    def count(states):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
                marks = ",".join("?" * len(states))
                return con.execute(f"SELECT count(*) FROM trials WHERE state IN ({marks})", states).fetchone()[0]
        except sqlite3.Error:
            return 0  # not created yet

    deadline = time.monotonic() + 300
    while not (count(("COMPLETE", "PRUNED")) >= 3 and count(("RUNNING",)) >= 1):
        assert worker.poll() is None, f"search ended before it could be killed: {worker.stderr.read().decode()[-500:]}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    storage = f"sqlite:///{db}"
    before = optuna.load_study(study_name="search", storage=storage).get_trials()
    killed = [t for t in before if t.state == TrialState.RUNNING]
    done = {t.number: t.user_attrs for t in before if t.state.is_finished()}
    assert len(done) >= 3 and not (out / "search.json").exists()

    rerun = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = optuna.load_study(study_name="search", storage=storage).get_trials()
    by_number = {t.number: t for t in after}
    slots = finished_slots(after)
    assert sorted(slots) == list(range(n)) and all(len(ts) == 1 for ts in slots.values())
    assert {k: by_number[k].user_attrs for k in done} == done  # finished work was not redone
    for t in killed:  # the candidate killed mid-score went stale, failed, and its slot was redone later
        assert by_number[t.number].state == TrialState.FAIL
        assert slots[t.user_attrs[SLOT_ATTR]][0].number > t.number
    assert not [t for t in after if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    scored = Counter(ts[0].user_attrs[RECORD_ATTR]["key"] for ts in slots.values()
                     if ts[0].user_attrs[RECORD_ATTR]["status"] == "scored")
    assert scored and max(scored.values()) == 1  # each architecture scored once, across both runs
    rows = read_csv(out / "candidates.csv")
    assert [r["genotype"] for r in rows] == [str(g) for g in sample_many("1x1_3x3", "backward", n, 0)]


# --------------------------------------------------------------------------- PostgreSQL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on loopback (installed with apt-get where it is missing)."""
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is missing: pip install 'spikernel[postgres]'")
    directory = tempfile.mkdtemp(prefix="spikernel-pg-")  # under /tmp, where the server's user can reach it
    started = subprocess.run(["bash", str(PG_SERVER), "start", directory, str(free_port())],
                             capture_output=True, text=True, timeout=900)
    if started.returncode:
        subprocess.run(["bash", str(PG_SERVER), "stop", directory])
        reason = (started.stderr.strip().splitlines() or ["unknown error"])[-1]
        pytest.skip(f"cannot start a PostgreSQL server: {reason}")
    yield started.stdout.strip()
    subprocess.run(["bash", str(PG_SERVER), "stop", directory])


def test_two_workers_share_one_postgresql_study(postgres, tmp_path):
    n = 20
    workers = [subprocess.Popen(search_command(tmp_path / f"worker{i}", "--batch", "24", "-n", str(n),
                                               "--storage", postgres, "--study", "shared"),
                                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for i in (1, 2)]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-2000:]

    trials = optuna.load_study(study_name="shared", storage=postgres).get_trials()
    slots = finished_slots(trials)
    assert sorted(slots) == list(range(n))  # none lost
    assert all(len(ts) == 1 for ts in slots.values())  # none done twice
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL)]
    by_worker = Counter(ts[0].user_attrs[RECORD_ATTR]["worker"] for ts in slots.values())
    assert len(by_worker) == 2, by_worker  # both processes did part of the study

    # Both workers wrote the whole study's result, which is the uninterrupted seeded stream.
    rows = [read_csv(tmp_path / f"worker{i}" / "candidates.csv") for i in (1, 2)]
    assert rows[0] == rows[1]
    assert [r["genotype"] for r in rows[0]] == [str(g) for g in sample_many("1x1_3x3", "backward", n, 0)]


def test_why_the_engine_claims_trials_itself(tmp_path):
    """DESIGN.md: ``Study.ask`` switches a trial to RUNNING before any heartbeat exists; a worker
    killed in that window leaves a trial Optuna never fails as stale, so its slot would never be
    redone. The engine's claim records the heartbeat first, and such a trial goes stale."""

    storage = optuna.storages.RDBStorage(sqlite_url(tmp_path / "s.db"), heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage)
    asked = study.ask()  # ... and the worker dies here, before its first beat
    worker = Search.__new__(Search)  # only the claim, without a search around it
    worker.storage, worker.interval = storage, 1
    waiting = storage.create_new_trial(storage.get_study_id_from_name(study.study_name), optuna.trial.create_trial(state=TrialState.WAITING))
    assert worker._claim(waiting)  # ... and this worker dies here
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[asked.number] == TrialState.RUNNING  # stuck for good
    assert states[1] == TrialState.FAIL  # stale, so its slot is empty again
