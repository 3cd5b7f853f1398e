"""Process settings that must be decided before torch (or any OpenMP runtime) is first imported.

OpenMP threads busy-wait at barriers by default. When the process does not have the cores to itself
(a second run, the test suite, the UI), a spinning thread burns the time slice its partner needs:
five `synth-assets run` processes on 2 cores fell from ~160 to ~1 tok/s each, and two small torch
matmul loops side by side ran 12 ops/s with the default policy against 119 ops/s with
`OMP_WAIT_POLICY=PASSIVE` (DESIGN.md, second-round facts). libgomp reads the policy once, when it
starts, so it is set here, from the CLI entry point and from `definitions.py`, before anything imports
torch. Whatever the user already set in the environment wins.

The thread count of the local backend: the spec's `generation.threads`, else `SYNTH_ASSETS_THREADS`,
else `OMP_NUM_THREADS` when the user set it, else decided here from the cores this process may use
(`os.sched_getaffinity`: taskset, cgroups' cpusets) minus the load already running on them (the
1-minute load average), at least one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

THREADS_ENV = "SYNTH_ASSETS_THREADS"
# The OMP_NUM_THREADS value `prepare_process` chose itself, so a child process (a test's subprocess,
# a run worker) does not mistake it for the user's choice and keeps deciding from the load.
_AUTO_MARKER_ENV = "SYNTH_ASSETS_AUTO_OMP_THREADS"
_POLICY_ENV = "OMP_WAIT_POLICY"
_THREAD_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class ThreadChoice:
    """How many intra-op threads the local model uses and why (shown in the run's metadata)."""

    threads: int
    source: str  # "spec", "SYNTH_ASSETS_THREADS", "OMP_NUM_THREADS" or "auto"
    usable_cores: int
    load_average: float
    wait_policy: str

    def describe(self) -> str:
        return (
            f"{self.threads} threads ({self.source}; {self.usable_cores} usable cores, load "
            f"{self.load_average:.2f}; OMP_WAIT_POLICY={self.wait_policy})"
        )


_state: dict[str, object] = {"spec_threads": None}


def usable_cores() -> int:
    """Cores this process may run on (affinity mask; `os.cpu_count()` would report the whole host)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def auto_threads(cores: int, load: float) -> int:
    """Threads for `cores` usable cores with `load` runnable processes already there: the cores left
    free, rounded, at least 1 and at most `cores` (on a shared box one thread per idle core avoids
    threads waiting on a descheduled partner; issue 14 measured a run pinned to one core 4x faster
    than the default on a busy 2-core machine)."""
    return max(1, min(cores, round(cores - load)))


def _positive_int(value: str | None) -> int | None:
    try:
        number = int(value) if value else 0
    except ValueError:
        return None
    return number if number > 0 else None


def prepare_process() -> None:
    """Set `OMP_WAIT_POLICY=PASSIVE` and the thread variables before torch is imported, unless the user
    set them. Idempotent; call it first thing (CLI entry point, `definitions.py`)."""
    os.environ.setdefault(_POLICY_ENV, "PASSIVE")
    if _user_omp_threads() is None:
        threads = str(choose_threads().threads)
        os.environ["OMP_NUM_THREADS"] = os.environ[_AUTO_MARKER_ENV] = threads
    for name in _THREAD_ENVS[1:]:
        os.environ.setdefault(name, os.environ["OMP_NUM_THREADS"])


def _user_omp_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS")
    if value is not None and value == os.environ.get(_AUTO_MARKER_ENV):
        return None  # ours, from an earlier decision
    return _positive_int(value)


def request_threads(threads: int | None) -> None:
    """The spec's `generation.threads` (None: decide automatically); read by `choose_threads`."""
    _state["spec_threads"] = threads


def choose_threads() -> ThreadChoice:
    """The thread count for the local model now, with where it came from."""
    cores, load = usable_cores(), _load_average()
    policy = os.environ.get(_POLICY_ENV, "default")
    spec_threads = _state["spec_threads"]
    if isinstance(spec_threads, int) and spec_threads > 0:
        return ThreadChoice(spec_threads, "spec", cores, load, policy)
    configured = _positive_int(os.environ.get(THREADS_ENV))
    if configured:
        return ThreadChoice(configured, THREADS_ENV, cores, load, policy)
    user = _user_omp_threads()
    if user is not None:
        return ThreadChoice(user, "OMP_NUM_THREADS", cores, load, policy)
    # decided once per process, so the model and the run's metadata agree on it
    if not isinstance(_state.get("auto"), ThreadChoice):
        _state["auto"] = ThreadChoice(auto_threads(cores, load), "auto", cores, load, policy)
    return _state["auto"]  # type: ignore[return-value]
