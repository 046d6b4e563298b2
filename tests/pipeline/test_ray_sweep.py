"""The over-time sweep on a Ray cluster (`study.ray_sweep`): on a local two-worker cluster,
its record log holds the bytes of the local sweep's, whatever order the tasks finish in,
also when the driver is killed mid-sweep and the sweep resumed (on Ray or locally); and a
whole `analogformer study --ray` writes the records of the local study.

Skipped when Ray is not installed (`pip install 'analogformer[ray]'`). One cluster for the
module (Ray starts in seconds); the driver runs one torch thread, so the tasks ask one CPU
each and the two workers run side by side.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'analogformer[ray]'")

from analogformer.study.ray_sweep import ExecutionConfig, InOrder, RaySweep  # noqa: E402
from analogformer.study.records import RecordLog  # noqa: E402
from analogformer.study.sweep import CONDITIONS, SweepConfig, run_time_sweep  # noqa: E402
from analogformer.cli import main  # noqa: E402
from conftest import sweep_setup  # noqa: E402
from study_fixtures import _config, setup  # noqa: E402,F401 (fixture)

TESTS = Path(__file__).resolve().parents[1]

CONDS = [CONDITIONS[n] for n in ("digital", "analog-nocomp", "analog", "analog-gamma0.5")]
SWEEP = SweepConfig(times_seconds=(1, 86400, 2592000), repeats=3)
# digital + 3 analog conditions x 3 times x 3 repeats
N = 1 + 3 * 3 * 3


class Killed(BaseException):
    """The driver dies here (not an Exception: nothing catches it)."""


def logit_sums():
    """GLUE evaluations whose metrics also carry `logit_sum`, the sum of the logits they come
    from: on the toy data accuracies of different conditions are often equal, logits are not.
    Returns {name: replacement} for `analogformer.tasks.glue_tasks`."""
    import analogformer.tasks.glue_tasks as glue
    real_predict, real_evaluate, logits = glue.predict, glue.evaluate, []

    def predict(model, loader):
        out = real_predict(model, loader)
        logits.append(out[0])
        return out

    def evaluate(model, batches, task):
        logits.clear()
        metrics = real_evaluate(model, batches, task)
        assert len(logits) == 1
        return {**metrics, "logit_sum": float(logits[0].double().sum())}
    return {"predict": predict, "evaluate": evaluate}


def worker_setup():
    """Ray's worker_process_setup_hook: the workers evaluate with `logit_sums` too."""
    import analogformer.tasks.glue_tasks as glue
    for name, fn in logit_sums().items():
        setattr(glue, name, fn)


@pytest.fixture(scope="module")
def cluster():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    path = os.pathsep.join([str(TESTS), str(TESTS / "pipeline"), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": path},
                          "worker_process_setup_hook": "test_ray_sweep.worker_setup"})
    try:
        yield
    finally:
        ray.shutdown()
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy():
    model, batch, cfg, evaluate = sweep_setup()

    def run(path, runner=None, sweep=SWEEP):
        return run_time_sweep({"digital": model}, "toy", CONDS, evaluate, lambda met: met["mean_logit"], cfg,
                              sweep, RecordLog(path), calib_batches=[batch], progress=False, runner=runner)
    return run


@pytest.fixture(scope="module")
def local(toy, cluster, tmp_path_factory):
    """The bytes of the local sweep (one torch thread, as the workers)."""
    path = tmp_path_factory.mktemp("local") / "results.jsonl"
    toy(path)
    data = path.read_bytes()
    assert len(data.splitlines()) == N
    return data


def _ray_run(toy, path, sweep=SWEEP):
    with RaySweep(ExecutionConfig(ray="local")) as runner:
        return toy(path, runner, sweep)


def test_two_workers_write_the_bytes_of_the_local_sweep(toy, local, tmp_path):
    path = tmp_path / "results.jsonl"
    written = _ray_run(toy, path)
    assert path.read_bytes() == local
    assert [json.dumps(r) for r in written] == [json.dumps(json.loads(l)) for l in local.splitlines()]


def test_tasks_finishing_in_reverse_order_are_written_in_the_local_order(toy, local, tmp_path, monkeypatch):
    """ray.wait made to hand the driver every task at once, the last submitted first."""
    real = ray.wait

    def reversed_wait(refs, num_returns=1, timeout=None):
        done, rest = real(refs, num_returns=len(refs), timeout=None)
        return done[::-1], rest
    monkeypatch.setattr(ray, "wait", reversed_wait)
    path = tmp_path / "results.jsonl"
    _ray_run(toy, path)
    assert path.read_bytes() == local


@pytest.mark.parametrize("resume_on", ["ray", "local"])
def test_driver_killed_mid_sweep_then_resumed_gives_the_local_bytes(toy, local, tmp_path, monkeypatch, resume_on):
    """The driver dies right after its k-th record is fsynced (k drawn at random), with tasks
    still running or finished and unwritten; the file then holds the local run's first k
    lines, and a resumed run (on Ray, or in this process) completes the local bytes."""
    k = random.Random(resume_on).randint(2, N - 2)
    path = tmp_path / "results.jsonl"
    real, calls = RecordLog.write, [0]

    def write(self, record):
        real(self, record)
        calls[0] += 1
        if calls[0] == k:
            raise Killed(f"driver killed after record {k}")
    with monkeypatch.context() as mp:
        mp.setattr(RecordLog, "write", write)
        with pytest.raises(Killed):
            _ray_run(toy, path)
    assert path.read_bytes() == b"".join(local.splitlines(keepends=True)[:k])
    torch.manual_seed(1234)  # a fresh process's global RNG
    if resume_on == "ray":
        _ray_run(toy, path)
    else:
        toy(path)
    assert path.read_bytes() == local


def test_a_local_sweep_resumed_and_grown_on_ray(toy, local, tmp_path):
    """A local sweep of fewer repeats and time points, grown on Ray: the records of the
    larger sweep, the first run's lines first."""
    path = tmp_path / "results.jsonl"
    toy(path, sweep=replace(SWEEP, times_seconds=(86400,), repeats=2))
    first = path.read_bytes()
    _ray_run(toy, path)
    data = path.read_bytes()
    assert data.startswith(first)
    assert sorted(data.splitlines()) == sorted(local.splitlines())


def test_in_order_hands_on_results_in_number_order():
    for seed in range(20):
        order = list(range(12))
        random.Random(seed).shuffle(order)
        q, out = InOrder(), []
        for i in order:
            out += q.add(i, f"r{i}")
        assert out == [(i, f"r{i}") for i in range(12)]
        assert not q.waiting
    q = InOrder()
    q.add(0, "a")
    with pytest.raises(ValueError, match="twice"):
        q.add(0, "a")


# ------------------------------------------------------------------ whole studies

@pytest.fixture(scope="module")
def study(setup, cluster, tmp_path_factory):
    """A one-task study (digital fine-tune; digital and three analog conditions, 2 times x 2
    repeats) and the bytes of its local run; in this process GLUE evaluations carry
    `logit_sum`, as in the workers, and the report is not drawn (no record comes from it)."""
    import analogformer.study.pipeline as pipeline
    import analogformer.tasks.glue_tasks as glue
    root, glue_dir, model_dir = setup
    cfg = _config(root, glue_dir, model_dir, tasks=["sst2"], finetune={"epochs": 1, "batch_size": 16,
                  "learning_rate": 5e-3}, data={"glue_dir": str(glue_dir), "max_eval_examples": 16})
    with pytest.MonkeyPatch.context() as mp:
        for name, fn in logit_sums().items():
            mp.setattr(glue, name, fn)
        mp.setattr(pipeline, "build_report", lambda out: Path(out) / "report.md")
        mp.setattr(pipeline, "plot_tile_layout", lambda *a, **k: None)
        ref = tmp_path_factory.mktemp("study") / "local"
        assert main(["study", str(cfg), "--out", str(ref), "--no-progress"]) == 0
        data = (ref / "results.jsonl").read_bytes()
        assert len(data.splitlines()) == 1 + 3 * 2 * 2
        assert all("logit_sum" in json.loads(l)["metrics"] for l in data.splitlines())
        yield cfg, ref, data


def test_study_with_ray_writes_the_records_of_the_local_study(study, tmp_path):
    cfg, ref, data = study
    out = tmp_path / "ray"
    assert main(["study", str(cfg), "--out", str(out), "--no-progress", "--ray", "local"]) == 0
    assert (out / "results.jsonl").read_bytes() == data
    assert (out / "config.yaml").read_text() != (ref / "config.yaml").read_text()  # execution.ray: local


def test_study_driver_killed_mid_sweep_resumes_locally_and_on_ray(study, tmp_path, monkeypatch):
    """Killed on Ray after its 3rd record; resumed in this process (the folder takes another
    `execution`) and killed after 4 more; resumed on Ray: the local study's bytes."""
    cfg, ref, data = study
    out = tmp_path / "killed"
    real = RecordLog.write
    for k, resume in ((3, ["--ray", "local"]), (4, [])):
        calls = [0]

        def write(self, record):
            real(self, record)
            calls[0] += 1
            if calls[0] == k:
                raise Killed(f"driver killed after record {k}")
        with monkeypatch.context() as mp:
            mp.setattr(RecordLog, "write", write)
            with pytest.raises(Killed):
                main(["study", str(cfg), "--out", str(out), "--no-progress"] + resume)
        on_disk = (out / "results.jsonl").read_bytes()
        assert data.startswith(on_disk) and len(on_disk.splitlines()) in (3, 7)
    assert main(["study", str(cfg), "--out", str(out), "--no-progress", "--ray", "local"]) == 0
    assert (out / "results.jsonl").read_bytes() == data


def test_cli_errors_name_the_key_and_the_fix(study, tmp_path, monkeypatch, capsys):
    cfg, _, _ = study
    assert main(["study", str(cfg), "--out", str(tmp_path / "a"), "--ray", "nonsense"]) == 2
    assert "execution: ExecutionConfig.ray: 'nonsense' is not a Ray cluster address" in capsys.readouterr().err
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as a process without Ray running
    assert main(["study", str(cfg), "--out", str(tmp_path / "b"), "--ray", "127.0.0.1:1"]) == 2
    assert "cannot reach the Ray cluster at '127.0.0.1:1'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    assert main(["study", str(cfg), "--out", str(tmp_path / "c"), "--ray", "local"]) == 2
    assert "pip install 'analogformer[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "c" / "results.jsonl").exists()


@pytest.mark.slow
def test_sigkill_of_a_ray_driver_process(study, tmp_path):
    """A real `analogformer study --ray ADDRESS` process on this module's cluster, killed
    with SIGKILL once k records are on disk, then run again: the local study's bytes (less
    `logit_sum`: the worker hook belongs to this process's Ray job, not to the CLI's)."""
    cfg, _, data = study

    def strip(line):
        r = json.loads(line)
        del r["metrics"]["logit_sum"]
        return (json.dumps(r) + "\n").encode()
    data = b"".join(map(strip, data.splitlines()))
    address = ray.get_runtime_context().gcs_address
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "analogformer.cli", "study", str(cfg), "--out", str(tmp_path / "x"),
           "--no-progress", "--ray", address]
    k, path = 4, tmp_path / "x" / "results.jsonl"
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while p.poll() is None and time.time() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= k:
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    _, err = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL, err.decode()[-3000:]
    assert k <= len(path.read_bytes().splitlines()) < len(data.splitlines())
    p = subprocess.run(cmd, env=env, capture_output=True, timeout=600)
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    assert path.read_bytes() == data
