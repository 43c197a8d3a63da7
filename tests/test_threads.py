"""torch's thread count: chosen from the free cores and the work, set for a call, restored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pyro_scvae import PyroSCVAE, fit, predict, threads
from pyro_scvae.errors import InputError
from pyro_scvae.simulate import simulate_counts
from pyro_scvae.threads import (
    ELEMENTS_PER_THREAD,
    Machine,
    ThreadPolicy,
    choose_threads,
    parse_threads,
    usable_cores,
)
from pyro_scvae.training import Stepper

BIG = 10 * ELEMENTS_PER_THREAD  # work that could keep ten threads busy


@pytest.fixture
def torch_threads_kept():
    """Whatever a test sets, torch's thread count is put back afterwards."""
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "work, cores, busy, expected",
    [
        (BIG, 2, 0.0, 2),  # an idle 2-core machine: both cores
        (BIG, 2, 0.2, 2),  # a little background noise still leaves a core free
        (BIG, 2, 0.3, 1),  # a core partly taken: sharing it would stall every step
        (BIG, 2, 1.0, 1),  # one CPU-bound competitor
        (BIG, 2, 7.5, 1),  # far more work than cores: still one thread, never zero
        (BIG, 16, 3.0, 10),  # many cores: as many as the work can use
        (BIG, 16, 12.4, 3),  # 0.4 of a thirteenth core taken: that core is not free
        (ELEMENTS_PER_THREAD - 1, 16, 0.0, 1),  # tiny networks gain nothing from threads
        (2 * ELEMENTS_PER_THREAD, 16, 0.0, 2),
        (BIG, 1, 0.0, 1),
    ],
)
def test_choice_follows_free_cores_and_work(work, cores, busy, expected):
    assert choose_threads(work, cores, busy) == expected


def test_usable_cores_are_the_affinity_capped_by_quota_and_omp(monkeypatch, tmp_path):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert usable_cores() == 6
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert usable_cores() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 3.5)
    assert usable_cores() == 3
    monkeypatch.undo()
    # the quota itself, read from a cgroup v2 or v1 tree
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert threads.cgroup_cpu_quota(tmp_path) == 2.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert threads.cgroup_cpu_quota(tmp_path) == 4.0


def test_busy_elsewhere_is_the_sample_or_else_the_load_average(monkeypatch):
    """Others' CPU = busy time of our cores minus our own; the load average only without it."""
    clock = {"wall": 100.0, "busy": 50.0, "own": 10.0}
    monkeypatch.setattr(threads, "snapshot", lambda: (clock["wall"], clock["busy"], clock["own"]))
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "lifetime_load", lambda: 0.0)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    load = {"one_minute": 0.0}
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load["one_minute"], 0.0, 0.0))
    machine = Machine(sample_seconds=0)
    # 10 s in which the cores were busy 18 s, 10 s of them ours: others used 0.8 cores
    clock.update(wall=110.0, busy=68.0, own=20.0)
    assert machine.busy_elsewhere() == pytest.approx(0.8)
    # next 10 s: cores busy only with our work; the load average still says 1.9 (a job
    # that ended a moment ago), but the sample is what counts: nobody else is there
    clock.update(wall=120.0, busy=78.0, own=30.0)
    load["one_minute"] = 1.9
    assert machine.busy_elsewhere() == pytest.approx(0.0)
    # without /proc/stat: the load average less our own share (tracked as the kernel
    # damps it: 1 core for 10 s twice, then 10 s more)
    clock.update(wall=130.0, busy=-1.0, own=40.0)
    decay = np.exp(-10 / 60)
    own = ((1 - decay) * decay + (1 - decay)) * decay + (1 - decay)
    assert machine.busy_elsewhere() == pytest.approx(1.9 - own)


def test_auto_policy_chooses_revisits_and_restores(monkeypatch, torch_threads_kept):
    busy = {"now": 0.0}
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(Machine, "busy_elsewhere", lambda self: busy["now"])
    clock = {"now": 0.0}
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(threads.time, "sleep", lambda seconds: None)
    torch.set_num_threads(1)
    with ThreadPolicy("auto", BIG) as policy:
        assert torch.get_num_threads() == 2 and policy.used == [2]
        busy["now"] = 1.0  # a competitor starts
        assert not policy.recheck()  # too soon to look again
        clock["now"] = threads.RECHECK_SECONDS + 1
        assert policy.recheck() and torch.get_num_threads() == 1
        assert policy.describe() == "2, 1 threads (auto: 2 cores, other processes using 1.0)"
        assert policy.summary()["used"] == [2, 1]
    assert torch.get_num_threads() == 1  # as before the call
    with ThreadPolicy(3, BIG) as policy:
        assert torch.get_num_threads() == 3 and not policy.recheck()
        assert policy.describe() == "3 threads"
    with ThreadPolicy(None, 100) as policy:  # too small to look at the machine at all
        assert policy.used == [1] and policy.reason == "small minibatches"


def test_parse_threads():
    assert parse_threads("auto") == parse_threads(None) == parse_threads(" Auto ") == "auto"
    assert parse_threads("4") == parse_threads(4) == 4
    for bad in ("0", "-1", "two", 1.5):
        with pytest.raises(InputError, match="threads must be 'auto' or a positive integer"):
            parse_threads(bad)


@pytest.fixture(scope="module")
def cells():
    """600 cells × 300 genes: a minibatch of 512 is large enough for torch to split."""
    adata = simulate_counts(n_cells=600, n_genes=300, n_classes=3, labelled_fraction=0.5, seed=4)
    PyroSCVAE.setup_anndata(adata, labels_key="label")
    return adata


def test_fit_sets_the_threads_for_training_and_restores_them(
    cells, monkeypatch, torch_threads_kept
):
    seen = []
    step = Stepper.step
    monkeypatch.setattr(
        Stepper, "step", lambda self, *a: (seen.append(torch.get_num_threads()), step(self, *a))[1]
    )
    torch.set_num_threads(2)
    model = PyroSCVAE(cells, seed=0).fit(epochs=2, progress=False, threads=1, device="cpu")
    assert set(seen) == {1} and len(seen) > 2
    assert torch.get_num_threads() == 2
    assert model.history.threads == [1] * len(model.history.elbo)  # every epoch of both fits
    assert model.history.threads_summary == {"requested": 1, "used": [1], "reason": ""}

    model.predict(threads=1)
    assert torch.get_num_threads() == 2 and model.prediction_threads.used == [1]
    with pytest.raises(InputError, match="threads must be"):
        PyroSCVAE(cells, seed=0).fit(epochs=1, progress=False, threads=0)


def test_thread_count_changes_the_numbers_only_by_rounding(cells, torch_threads_kept):
    """Matrix products split over threads add in another order: float32 rounding, no more.

    (So ``auto``, which may change the count mid-run, keeps a seed's results to rounding;
    a fixed ``threads=N`` repeats them exactly.)
    """

    def run(n_threads):
        model = PyroSCVAE(cells, seed=0).fit(
            epochs=1, progress=False, threads=n_threads, device="cpu"
        )
        return model.history.elbo, model.predict(soft=True, threads=n_threads).to_numpy()

    (elbo_1, proba_1), (elbo_2, proba_2) = run(1), run(2)
    np.testing.assert_allclose(elbo_1, elbo_2, rtol=1e-5)
    # rounding grows through the optimiser's steps of both fits: measured 1.4e-4
    np.testing.assert_allclose(proba_1, proba_2, atol=1e-3)
    assert run(1)[0] == elbo_1  # one thread count: the same numbers exactly


def test_cli_threads_flag_is_used_and_reported(cells, tmp_path, capsys):
    path, out = tmp_path / "cells.h5ad", tmp_path / "out"
    cells.write_h5ad(path)
    command = ["--adata", str(path), "--labels-key", "label", "--epochs", "1"]
    assert fit.main([*command, "--threads", "1", "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "cells/s, 1 thread)" in summary
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["threads"] == {"requested": 1, "used": [1], "reason": ""}
    args = ["--model", str(out / "model"), "--adata", str(out / "annotated.h5ad")]
    assert predict.main([*args, "--threads", "1", "--out", str(tmp_path / "p")]) == 0
    assert "(1 thread)" in capsys.readouterr().out
    for bad in ("0", "many"):
        with pytest.raises(SystemExit) as raised:
            fit.main(["--threads", bad])
        assert raised.value.code == 2
        assert "--threads: must be auto or a positive integer" in capsys.readouterr().err
