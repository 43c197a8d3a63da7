"""How many threads torch uses for a training or prediction call, chosen on evidence.

On a machine shared with other work, torch's default (one thread per core) can be many
times slower than one thread: its threads wait for each other at every operation, and a
thread whose core is taken by another process holds all the others up (on 2 cores,
2.3–3.2 times slower beside one busy process, 7–15 times at a load of 12–16,
``benchmarks/speed.md``). With the
cores to itself and large enough minibatches, two threads are faster than one. So
``threads="auto"`` (the default of ``fit`` and of prediction, ``--threads auto``) uses

    min(cores free for this process, threads the work can use), at least 1

where

- the cores this process may use are those of its CPU affinity
  (``os.sched_getaffinity``), fewer where a cgroup CPU quota or ``OMP_NUM_THREADS`` says
  so;
- the cores other processes keep busy are the busy time of those cores in the last
  :data:`SAMPLE_SECONDS` seconds (``/proc/stat``) minus this process's own CPU time; where
  ``/proc/stat`` cannot be read (not Linux), the one-minute load average minus this
  process's own share of it. The load average is not used where the sample exists: it
  lags by a minute, so a job that has just ended still looks busy for a minute after. A
  core counts as free when less than :data:`BUSY_MARGIN` of it is taken (wrongly sharing a
  core costs far more than a thread gains: two threads beside one busy process were 2.3–3.2
  times slower than one, ``benchmarks/threads.md``);
- the work of one step is ``batch_size × n_genes`` (the size of the decoder's output and
  of the ZINB's arrays, the largest tensors of a step); a thread needs
  :data:`ELEMENTS_PER_THREAD` of them to pay for itself (``benchmarks/threads_work.md``).

During training the choice is revisited every :data:`RECHECK_SECONDS` seconds, at the
end of an epoch, from the CPU time used since the last look, so that a competitor that
starts (or stops) in the middle of a long run changes the count. Another thread count
changes the numbers only by floating-point rounding (matrix products add their terms in
another order, ``tests/test_threads.py``); a seed repeats exactly at a fixed count, so pass
a number (``threads=1``, ``--threads 1``) where results must repeat to the last bit.

This module imports nothing heavy at import time (the command lines use it to parse
``--threads``); torch is imported where threads are set.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

from pyro_scvae.errors import InputError

#: Seconds of ``/proc/stat`` sampled when choosing (before a run starts).
SAMPLE_SECONDS = 0.2
#: A core with less than this fraction taken by other processes counts as free.
BUSY_MARGIN = 0.25
#: ``batch_size × n_genes`` elements of work that make one more thread worth it.
ELEMENTS_PER_THREAD = 50_000
#: Seconds between two looks at the machine during training.
RECHECK_SECONDS = 5.0
#: Time constant of the kernel's one-minute load average, seconds.
LOAD_AVERAGE_SECONDS = 60.0


def parse_threads(text: str | int | None) -> int | str:
    """``"auto"`` (or None) or a positive number of threads.

    Raises
    ------
    InputError
        For anything else.
    """
    if text is None or (isinstance(text, str) and text.strip().lower() == "auto"):
        return "auto"
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = 0
    if value < 1 or (isinstance(text, float) and text != value):
        raise InputError(f"threads must be 'auto' or a positive integer, not {text!r}")
    return value


def threads_argument(text: str) -> int | str:
    """The command lines' ``--threads`` type: :func:`parse_threads` for argparse."""
    try:
        return parse_threads(text)
    except InputError as error:
        raise argparse.ArgumentTypeError(
            f"must be auto or a positive integer, got {text}"
        ) from error


# ---------------------------------------------------------------------- evidence
def usable_cores() -> int:
    """Cores this process may run on: its affinity, a cgroup quota and ``OMP_NUM_THREADS``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        cores = min(cores, int(omp))
    return max(1, cores)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by a cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), None if none."""
    try:
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def busy_seconds(cpus: set[int] | None = None) -> float | None:
    """CPU seconds spent busy so far by the given CPUs (all when None), from ``/proc/stat``.

    Busy is everything but idle and I/O wait. None where ``/proc/stat`` cannot be read.
    """
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    for line in lines:
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        numbers = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(numbers) - numbers[3] - numbers[4]
    return total / ticks


def own_cpu_seconds() -> float:
    """CPU seconds this process (all its threads) has used so far."""
    times = os.times()
    return times.user + times.system


def affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return None


def snapshot() -> tuple[float, float, float]:
    """(wall time, busy CPU seconds of this process's CPUs or -1, own CPU seconds)."""
    busy = busy_seconds(affinity())
    return time.monotonic(), -1.0 if busy is None else busy, own_cpu_seconds()


def sampled_elsewhere(
    start: tuple[float, float, float], end: tuple[float, float, float]
) -> float | None:
    """Cores kept busy by other processes between two :func:`snapshot` s (None: unknown)."""
    (start_wall, start_busy, start_own), (end_wall, end_busy, end_own) = start, end
    if start_busy < 0 or end_busy < 0 or end_wall <= start_wall:
        return None
    return max(((end_busy - start_busy) - (end_own - start_own)) / (end_wall - start_wall), 0.0)


def lifetime_load() -> float:
    """This process's share of the load average, from its mean CPU use so far.

    A process that has run at rate r for t seconds adds about r · (1 − e^(−t/60)) to the
    kernel's one-minute load average.
    """
    age = process_age_seconds()
    if not age or age <= 0:
        return 0.0
    return own_cpu_seconds() / age * (1.0 - math.exp(-age / LOAD_AVERAGE_SECONDS))


def load_elsewhere(own_load: float, cores: int) -> float:
    """The one-minute load average less ``own_load``, on ``cores`` of the machine's CPUs.

    The load of other processes is taken as spread evenly over all the machine's CPUs.
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    all_cpus = os.cpu_count() or 1
    return max(load - own_load, 0.0) * min(cores, all_cpus) / all_cpus


def process_age_seconds() -> float | None:
    """Seconds since this process started (``/proc/self/stat``), None where unknown."""
    try:
        fields_after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields_after_name[19])  # field 22, starttime, in clock ticks
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------- the choice
def useful_threads(work: int) -> int:
    """Threads that ``work`` elements per step keep busy: one per ELEMENTS_PER_THREAD."""
    return max(1, int(work // ELEMENTS_PER_THREAD))


def free_cores(cores: int, busy: float) -> int:
    """Cores not taken by others; a core is free when less than BUSY_MARGIN of it is taken."""
    return max(0, cores - max(0, math.ceil(busy - BUSY_MARGIN)))


def choose_threads(work: int, cores: int, busy: float) -> int:
    """The thread count for ``work`` elements per step on ``cores`` with ``busy`` taken.

    Parameters
    ----------
    work
        ``batch_size × n_genes`` of the run (see :data:`ELEMENTS_PER_THREAD`).
    cores
        Cores this process may use (:func:`usable_cores`).
    busy
        Cores' worth of CPU that other processes keep busy (:class:`Machine`).
    """
    return max(1, min(free_cores(cores, busy), useful_threads(work)))


class Machine:
    """What the machine is doing besides this process, looked at now and then.

    :meth:`busy_elsewhere` is the CPU time other processes took on this process's cores
    since the last look (``/proc/stat``); where that cannot be read, the one-minute load
    average less this process's own share, which is tracked as the kernel damps it.
    """

    def __init__(self, sample_seconds: float = SAMPLE_SECONDS) -> None:
        self.cores = usable_cores()
        self.own_load = lifetime_load()
        self.last = snapshot()
        if sample_seconds > 0:
            time.sleep(sample_seconds)  # a first sample of what others do

    def busy_elsewhere(self) -> float:
        """Cores' worth of CPU taken by other processes (since the last call, and lately)."""
        now = snapshot()
        elapsed = now[0] - self.last[0]
        if elapsed > 0:  # our own share of the load average, damped as the kernel does
            rate = (now[2] - self.last[2]) / elapsed
            decay = math.exp(-elapsed / LOAD_AVERAGE_SECONDS)
            self.own_load = self.own_load * decay + rate * (1.0 - decay)
        sampled = sampled_elsewhere(self.last, now)
        self.last = now
        return sampled if sampled is not None else load_elsewhere(self.own_load, self.cores)


class ThreadPolicy:
    """torch's thread count for one call: set on entry, revisited, restored on exit.

    Parameters
    ----------
    requested
        A number of threads (used as given) or ``"auto"`` (or None): chosen by
        :func:`choose_threads` from what :class:`Machine` sees, and revisited by
        :meth:`recheck` (one thread without looking where the work is too small for two).
    work
        ``batch_size × n_genes`` of one step.

    Attributes
    ----------
    used
        The counts set, in order (one entry per change).
    reason
        The evidence of the last automatic choice, in words.
    """

    def __init__(self, requested: int | str | None, work: int) -> None:
        self.requested = parse_threads(requested)
        self.work = work
        self.used: list[int] = []
        self.reason = ""
        self._machine: Machine | None = None
        self._previous: int | None = None

    @property
    def current(self) -> int:
        return self.used[-1]

    def describe(self, short: bool = False) -> str:
        """E.g. ``"1 thread (auto: 2 cores, other processes using 1.0)"``; ``short``: the count.

        Counts that changed during the call are listed in order (``"2, 1 threads"``).
        """
        counts = ", ".join(str(n) for n in dict.fromkeys(self.used))
        text = f"{counts} thread" + ("" if counts == "1" else "s")
        if short or self.requested != "auto":
            return text
        return f"{text} (auto: {self.reason})"

    def summary(self) -> dict:
        """For metrics.json: ``requested``, ``used`` (in order) and ``reason``."""
        return {"requested": self.requested, "used": list(self.used), "reason": self.reason}

    def _choose(self) -> int:
        cores, busy = self._machine.cores, self._machine.busy_elsewhere()
        self.reason = f"{cores} core{'s' * (cores != 1)}, other processes using {busy:.1f}"
        return choose_threads(self.work, cores, busy)

    def _set(self, threads: int) -> bool:
        import torch

        if self.used and threads == self.used[-1]:
            return False
        torch.set_num_threads(threads)
        self.used.append(threads)
        return True

    def __enter__(self) -> ThreadPolicy:
        import torch

        self._previous = torch.get_num_threads()
        if self.requested != "auto":
            self._set(int(self.requested))
        elif useful_threads(self.work) == 1:  # no need to look at the machine
            self.reason = "small minibatches"
            self._set(1)
        else:
            self._machine = Machine()
            self._set(self._choose())
        return self

    def recheck(self) -> bool:
        """Revisit an automatic choice, at most every RECHECK_SECONDS; True if it changed."""
        if self._machine is None or time.monotonic() - self._machine.last[0] < RECHECK_SECONDS:
            return False
        return self._set(self._choose())

    def __exit__(self, *exc) -> None:
        import torch

        if self._previous is not None:
            torch.set_num_threads(self._previous)
