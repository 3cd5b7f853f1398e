"""Run control: threads and wait policy before torch starts, two runs on a new Dagster home at once,
dead runs marked failed after a real SIGKILL, and (slow, the real model and the real CLI) Ctrl-C,
SIGTERM and SIGKILL on a running `synth-assets run`, with the cache kept and the rerun resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from conftest import CliRun, run_cli, start_cli_run, write_tiny_spec

from synth_assets.run_control import add_partition
from synth_assets.runtime import auto_threads
from synth_assets.spec import load_spec
from synth_assets.storage import Warehouse

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


def _clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without the thread settings a user (or this suite) may have set."""
    names = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith("SYNTH_ASSETS_AUTO")}
    env.pop("SYNTH_ASSETS_THREADS", None)
    return {**env, **extra}


def test_auto_threads_use_the_cores_the_load_leaves_free() -> None:
    assert auto_threads(2, 0.0) == 2
    assert auto_threads(2, 1.3) == 1  # another run on a 2-core box: one thread, not two fighting
    assert auto_threads(2, 7.0) == 1  # never zero
    assert auto_threads(8, 2.4) == 6
    assert auto_threads(4, -1.0) == 4  # never more than the cores this process may use


SHOW_SETTINGS = """
    import json, os, sys
    import synth_assets.definitions
    from synth_assets.runtime import choose_threads
    choice = choose_threads()
    print(json.dumps({
        "torch_loaded_before": "torch" in sys.modules,
        "policy": os.environ.get("OMP_WAIT_POLICY"),
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        "threads": choice.threads,
        "source": choice.source,
    }))
"""


def test_wait_policy_and_threads_are_set_before_torch_and_respect_the_user() -> None:
    default = _python(SHOW_SETTINGS, _clean_env())
    assert default.returncode == 0, default.stderr[-2000:]
    settings = json.loads(default.stdout.strip().splitlines()[-1])
    assert settings["torch_loaded_before"] is False  # definitions.py does not load torch first
    assert settings["policy"] == "PASSIVE" and settings["source"] == "auto"
    assert settings["omp_threads"] == str(settings["threads"])

    users = _python(SHOW_SETTINGS, _clean_env(OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="3"))
    settings = json.loads(users.stdout.strip().splitlines()[-1])
    assert settings["policy"] == "ACTIVE" and settings["omp_threads"] == "3"
    assert (settings["threads"], settings["source"]) == (3, "OMP_NUM_THREADS")

    ours = _python(SHOW_SETTINGS, _clean_env(SYNTH_ASSETS_THREADS="1"))
    settings = json.loads(ours.stdout.strip().splitlines()[-1])
    assert (settings["threads"], settings["source"]) == (1, "SYNTH_ASSETS_THREADS")


def test_spec_threads_win_and_do_not_change_the_fingerprint(tmp_path: Path) -> None:
    plain = load_spec(write_tiny_spec(tmp_path / "a"))
    pinned = load_spec(
        write_tiny_spec(tmp_path / "b", replacements={"batch_size: 8": "batch_size: 8\n  threads: 1"})
    )
    assert pinned.generation.threads == 1 and plain.generation.threads is None
    assert pinned.generation.identity() == plain.generation.identity()  # same answers, same cache keys
    shown = _python(
        f"""
        from synth_assets.runtime import choose_threads, request_threads
        from synth_assets.spec import load_spec
        request_threads(load_spec({str(pinned.source_path)!r}).generation.threads)
        print(choose_threads().describe())
        """,
        _clean_env(OMP_NUM_THREADS="2"),
    )
    assert shown.stdout.startswith("1 threads (spec;"), shown.stdout + shown.stderr


def test_two_runs_starting_at_once_on_a_new_dagster_home_both_open_it(tmp_path: Path) -> None:
    home = tmp_path / "new_home"
    start_at = time.time() + 6  # every process imports Dagster first, then all open the home together
    code = f"""
        import time
        from pathlib import Path
        from synth_assets.run_control import open_instance
        time.sleep(max(0.0, {start_at} - time.time()))
        instance = open_instance(Path({str(home)!r}))
        print("runs", instance.get_runs_count())
    """
    env = _clean_env(DAGSTER_HOME=str(home))
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for _ in range(4)
    ]
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-2000:]
        assert "runs 0" in out
        assert "already exists" not in err


def test_runs_adding_the_same_new_spec_at_once_all_succeed(tmp_path: Path) -> None:
    """Dagster looks a dynamic partition up, then inserts it: two runs of a new spec starting together
    both inserted it and one died on the unique index (IntegrityError; 46 of 80 here without the lock)."""
    home = tmp_path / "home"
    home.mkdir()
    instances = [dg.DagsterInstance.from_config(str(home)) for _ in range(4)]
    instances[0].get_runs_count()  # the storage exists before the race
    errors: list[str] = []

    def add(instance: dg.DagsterInstance, barrier: threading.Barrier, key: str) -> None:
        barrier.wait()
        try:
            add_partition(instance, home, "spec", key)
        except Exception as exc:  # what a CLI run would have died of
            errors.append(f"{type(exc).__name__}: {exc}")

    for number in range(10):
        barrier = threading.Barrier(len(instances))
        threads = [threading.Thread(target=add, args=(i, barrier, f"spec_{number}")) for i in instances]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert sorted(instances[0].get_dynamic_partitions("spec")) == sorted(f"spec_{n}" for n in range(10))
    for instance in instances:
        instance.dispose()


SLEEPING_RUN = """
    import sys, time
    import dagster as dg
    from synth_assets.run_control import process_tags

    @dg.op
    def wait_forever() -> None:
        print("STARTED", flush=True)
        time.sleep(600)

    @dg.job
    def stuck() -> None:
        wait_forever()

    instance = dg.DagsterInstance.get()
    stuck.execute_in_process(instance=instance, run_id=sys.argv[1], tags=process_tags())
"""


def test_a_sigkilled_run_is_marked_failed_so_the_queue_moves(tmp_path: Path) -> None:
    from synth_assets.run_control import reap_dead_runs

    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    run_id = "0b7d5b2e-0000-4000-8000-000000000001"
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SLEEPING_RUN), run_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_clean_env(DAGSTER_HOME=str(home)),
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "STARTED"
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert reap_dead_runs(instance) == []  # alive: left alone
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED  # Dagster alone
            assert reap_dead_runs(instance) == [run_id]
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
            assert reap_dead_runs(instance) == []
    finally:
        if process.poll() is None:
            process.kill()


def test_a_bad_db_is_one_line_before_any_work(tmp_path: Path) -> None:
    spec_path = write_tiny_spec(tmp_path / "specs")
    not_duckdb = tmp_path / "notes.txt"
    not_duckdb.write_text("hello\n")
    env = _clean_env(DAGSTER_HOME=str(tmp_path / "home"))
    for db, expected in (
        (tmp_path, "is a directory, not a DuckDB file"),
        (not_duckdb, "not a DuckDB database file"),
    ):
        for args in (("run", "--spec", str(spec_path)), ("report",), ("diff",)):
            result = run_cli("--db", str(db), *args, env=env, timeout=120)
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 2, result.stderr[-2000:]
            assert len(lines) == 1 and expected in lines[0] and str(db) in lines[0], result.stderr
    assert not_duckdb.read_text() == "hello\n"  # untouched


# ---- with the real model ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM", "SIGKILL", "UI terminate"])
def test_stopping_a_real_run_keeps_finished_calls_and_the_rerun_resumes(tmp_path: Path, stop: str) -> None:
    spec_path = write_tiny_spec(
        tmp_path / "specs", num_samples=24, max_new_tokens=16, replacements={"batch_size: 8": "batch_size: 4"}
    )
    home, database = tmp_path / "home", tmp_path / "w.duckdb"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = _clean_env(DAGSTER_HOME=str(home), SYNTH_ASSETS_DB=str(database))
    process = start_cli_run(spec_path, env)
    assert process.stdout is not None
    deadline = time.monotonic() + 600
    for line in process.stdout:  # stop once two batches are stored and more are to come
        if "generated 8/24 calls" in line or time.monotonic() > deadline:
            break
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        run_id = run.run_id
        if stop == "UI terminate":  # what the UI's Terminate button calls
            instance.run_launcher.terminate(run_id)
        else:
            process.send_signal(signal.Signals[stop])
        sent = time.monotonic()
        rest, _ = process.communicate(timeout=120)
        stopped_in = time.monotonic() - sent
        run = instance.get_run_by_id(run_id)
        kept = Warehouse(database).query("SELECT count(*) AS n FROM llm_cache WHERE run_id = ?", [run_id])
        finished = int(kept["n"].iloc[0])
        assert 8 <= finished < 24, rest[-3000:]  # the stored batches survived; the run did not finish
        if stop == "SIGKILL":
            assert process.returncode == -signal.SIGKILL
            assert run.status == dg.DagsterRunStatus.STARTED  # nobody could record anything
        else:
            assert stopped_in < 15, f"took {stopped_in:.1f}s to stop"
            assert process.returncode == 130, rest[-3000:]
            assert run.status == dg.DagsterRunStatus.CANCELED
            last = rest.strip().splitlines()[-1]
            by = "Dagster UI Terminate" if stop == "UI terminate" else stop
            assert last.startswith(f"error: stopped by {by}: run {run_id} recorded as CANCELED"), last
            assert f"{finished} finished LLM calls of this run are kept in llm_cache" in last
            # nothing half-written: no stage after the prompts got a version in this run
            for stage in ("generated_samples", "curated_set"):
                rows = Warehouse(database).query(
                    f"SELECT count(*) AS n FROM {stage}_history WHERE run_id = ?", [run_id]
                )
                assert int(rows["n"].iloc[0]) == 0, stage

        if stop in ("SIGTERM", "UI terminate"):
            # the same graceful stop as SIGINT once it arrives (asserted above, the calls are kept):
            # SIGINT's rerun below covers resuming from it, which saves two full reruns of the graph
            return
        rerun = run_cli("run", "--spec", str(spec_path), env=env)
        assert rerun.returncode in (0, 1), rerun.stderr[-3000:]  # 1: a gate may refuse the tiny data
        assert "Traceback" not in rerun.stderr.strip().splitlines()[-1]
        if stop == "SIGKILL":
            assert f"note: run {run_id} had lost its process (killed); marked failed" in rerun.stdout
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
        second = next(r for r in instance.get_runs() if r.run_id != run_id)
        cache = Warehouse(database).query("SELECT cache_key, run_id FROM llm_cache")
        assert len(cache) == 24 and cache["cache_key"].is_unique
        # the rerun made only the calls the stopped run had not finished
        assert (cache["run_id"] == second.run_id).sum() == 24 - finished


@pytest.mark.slow
def test_dry_run_counts_calls_and_tokens_exactly_and_writes_nothing(
    tmp_path: Path, tiny_cli_run: CliRun
) -> None:
    spec_path = write_tiny_spec(tmp_path / "specs")  # 6 prompts, max_new_tokens 24
    home, database = tmp_path / "home", tmp_path / "w.duckdb"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = _clean_env(DAGSTER_HOME=str(home), SYNTH_ASSETS_DB=str(database))
    dry = run_cli("run", "--spec", str(spec_path), "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr[-2000:]
    lines = dry.stdout.splitlines()
    assert "prompts: 6" in lines
    assert (
        "LLM calls: 6 for the first step, 0 already in llm_cache, 6 to make "
        "(at most 6 with later steps and retries)"
    ) in lines
    assert "completion tokens: at most 144 (calls x max_new_tokens)" in lines
    estimate = next(line for line in lines if line.startswith("estimated generation time: "))
    assert "(1 batch of 6 x " in estimate and "timed by a warm-up batch here" in estimate
    counted = next(line for line in lines if line.startswith("prompt tokens to send: "))
    assert not database.exists()  # nothing written, not even an empty file
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_runs_count() == 0

    # the real run of the same tiny spec (shared with test_pipeline: the same 6 prompts)
    ran, ran_env = tiny_cli_run.result, tiny_cli_run.env
    assert tiny_cli_run.spec_path.read_text() == spec_path.read_text()
    assert ran.returncode == 0, ran.stderr[-2000:]
    # "exactly": the prompt tokens the model was really given, as the run recorded them
    shared = Warehouse(tiny_cli_run.database)
    sent = shared.read_only_query("SELECT sum(prompt_tokens) AS n FROM llm_cache")["n"].iloc[0]
    assert counted == f"prompt tokens to send: {int(sent):,} (exact)"
    again = run_cli("run", "--spec", str(tiny_cli_run.spec_path), "--dry-run", env=ran_env)
    assert "LLM calls: 6 for the first step, 6 already in llm_cache, 0 to make" in again.stdout


@pytest.mark.parametrize(
    ("calls", "cached", "expected"),
    [
        (24, 0, "(3 batches of 8 x 2.0 s"),
        (48, 0, "(1 batch of 48 x 2.0 s"),
        (24, 20, "(1 batch of 4 x 2.0 s"),
    ],
)
def test_the_dry_runs_estimate_names_the_batches_it_will_run(calls: int, cached: int, expected: str) -> None:
    from synth_assets.generation.plan import RunPlan

    batch_size = 8 if calls == 24 else 64
    plan = RunPlan(
        prompts=calls,
        calls=calls,
        cached_calls=cached,
        max_calls=calls,
        prompt_tokens=100,
        max_completion_tokens=10,
        batch_size=batch_size,
        seconds_per_batch=2.0,
        estimate_s=6.0,
    )
    (line,) = [line for line in plan.lines() if line.startswith("estimated generation time")]
    assert expected in line, line
