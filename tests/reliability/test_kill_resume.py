"""Kill / resume at random points of a study with two tasks, HWA and pruning: the records of
an interrupted-then-resumed run are byte-identical to those of an uninterrupted run, and
nothing is recorded twice; a study grown in tasks, time points, repeats, conditions and
retraining seeds gives, record for record, the records of a fresh run of the larger config.

The runs are in-process (`analogformer.cli.main`) unless said otherwise. A crash is
`Killed`, a BaseException raised from a patched method: right after the k-th record was
written and fsynced (`RecordLog.write`), halfway through writing a record, or after an
optimizer step of a fine-tuning (digital, HWA, pruning retraining). Before a resume the
global RNGs are reseeded, as a fresh process would find them. `test_sigkill_of_the_cli_process`
(slow) kills a real `python -m analogformer.cli study` process with SIGKILL.

To keep the file fast, in-process runs use one torch thread and skip the pictures and the
report (matplotlib; no record comes from them). To make "byte-identical" bite, every record
of an in-process run also carries `logit_sum`, the sum of the logits its metrics come from:
on this toy data the accuracies of different models are often equal, their logits are not.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from analogformer.cli import main
from analogformer.study.records import RecordLog, record_key
from study_fixtures import _config, setup  # noqa: F401 (fixture)

# digital, HWA and pruned models and analog conditions of each, 2 time points x 2 repeats;
# one-shot pruning (the cheapest schedule that retrains) with a baseline and two retraining
# seeds, which have resume logic of their own
STUDY = dict(
    tasks=["sst2", "mrpc"],
    conditions=["digital", "analog-nocomp", "analog", "hwa", "pruned-digital", "pruned"],
    finetune={"epochs": 1, "batch_size": 16, "learning_rate": 5e-3},
    hwa={"finetune": {"epochs": 1}, "recipe": {"input_range_batches": 2, "output_noise_pool": 1 << 20}},
    pruning={"prune": {"criterion": "mac", "structure": "rows", "blocks": ["fc2"], "ratio": 0.25},
             "baselines": [{"criterion": "random"}], "retrain_seeds": 2,
             "calibration_batches": 2, "retrain": {"epochs": 1}},
    sweep={"times_seconds": [1, 2592000], "repeats": 2, "calibration_batches": 2, "eval_batch_size": 8},
)
# per task: digital + pruned-digital, 4 analog conditions x 2 times x 2 repeats, and the
# pruning records: dense + 2 methods x (pruned + 2 retrained)
N_RECORDS = 2 * (2 + 4 * 2 * 2 + 1 + 2 * 3)
SEEDS = (0, 1, 2)

class RecordsDiffer(AssertionError):
    """A run's records are not those of the reference."""


class Killed(BaseException):
    """The process dies here. Not an Exception: nothing in the pipeline catches it, and
    `main` lets it through (it catches ValueError, OSError and KeyboardInterrupt)."""


# ------------------------------------------------------------------ helpers

@pytest.fixture(scope="module")
def quick():
    """In-process runs: one torch thread, no pictures and no report, `logit_sum` in every
    record's metrics."""
    import analogformer.study.pipeline as pipeline
    import analogformer.study.prune_step as prune_step
    import analogformer.tasks.glue_tasks as glue_tasks
    logits = []
    real_predict, real_evaluate = glue_tasks.predict, glue_tasks.evaluate

    def predict(model, loader):
        out = real_predict(model, loader)
        logits.append(out[0])
        return out

    def evaluate(model, batches, task):
        logits.clear()
        metrics = real_evaluate(model, batches, task)
        assert len(logits) == 1
        return {**metrics, "logit_sum": float(logits[0].double().sum())}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(glue_tasks, "predict", predict)
            mp.setattr(glue_tasks, "evaluate", evaluate)
            mp.setattr(pipeline, "build_report", lambda out: Path(out) / "report.md")
            mp.setattr(pipeline, "plot_tile_layout", lambda *a, **k: None)
            mp.setattr(prune_step, "plot_tile_layout", lambda *a, **k: None)
            mp.setattr(prune_step, "_mac_pictures", lambda *a, **k: None)
            yield
    finally:
        torch.set_num_threads(threads)


def _study(setup, **study) -> Path:
    """The YAML of STUDY changed by `study`, on the fixture's model and data (16 dev examples)."""
    root, glue, model_dir = setup
    return _config(root, glue, model_dir, **{**STUDY, **study},
                   data={"glue_dir": str(glue), "max_eval_examples": 16})


def _run(cfg: Path, out: Path) -> None:
    assert main(["study", str(cfg), "--out", str(out), "--no-progress"]) == 0


def _fresh_process_rng(seed: int) -> None:
    """The global RNGs as some other process would have them."""
    torch.manual_seed(10_000 + seed)
    torch.randn(123)
    random.seed(10_000 + seed)
    np.random.seed(10_000 + seed)


def _dies_after(real, n: int, what: str):
    """`real`, raising Killed right after its n-th call returned."""
    calls = [0]

    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        calls[0] += 1
        if calls[0] == n:
            raise Killed(f"killed after {what} {n}")
        return out
    return wrapper


def _lines(out: Path) -> list:
    return (out / "results.jsonl").read_bytes().splitlines(keepends=True)


def _assert_once_each(out: Path) -> None:
    keys = [record_key(json.loads(line)) for line in _lines(out)]
    assert len(set(keys)) == len(keys), [k for k in keys if keys.count(k) > 1]
    RecordLog(out / "results.jsonl")  # and the log itself accepts the file


def _by_key(out: Path) -> dict:
    """{record key: the record as canonical JSON}."""
    return {record_key(r): json.dumps(r, sort_keys=True) for r in map(json.loads, _lines(out))}


def _assert_same_records(out: Path, ref: Path) -> None:
    got, want = _by_key(out), _by_key(ref)
    assert sorted(got, key=repr) == sorted(want, key=repr)
    differ = [k for k in want if got[k] != want[k]]
    if differ:
        raise RecordsDiffer(f"{len(differ)} record(s) differ, e.g. {differ[:6]}")


class Reference:
    """The uninterrupted run: its config, folder and results.jsonl bytes, and every
    fine-tuning it ran as (phase, optimizer steps before it, its steps) in order, phase one
    of "digital", "hwa", "retrain"."""

    def __init__(self, cfg: Path, out: Path, data: bytes, finetunes: list):
        self.cfg, self.out, self.data, self.finetunes = cfg, out, data, finetunes

    @property
    def total(self) -> int:
        return len(self.data.splitlines())

    def assert_equals(self, out: Path, what: str) -> None:
        _assert_once_each(out)
        if (out / "results.jsonl").read_bytes() != self.data:
            try:
                _assert_same_records(out, self.out)  # names the records that differ
            except RecordsDiffer as e:
                raise type(e)(f"{what}: {e}") from None
            raise RecordsDiffer(f"{what}: the same records, in another order")


@pytest.fixture(scope="module")
def reference(setup, quick):
    import analogformer.study.finetune_step as finetune_step
    import analogformer.study.prune_step as prune_step
    from analogformer.training import finetune as ft
    steps, finetunes = [0], []
    real_step = ft._Loop.step

    def counting(self, batch):
        steps[0] += 1
        return real_step(self, batch)

    def labelled(real, phase):
        def finetune(*args, **kwargs):
            start = steps[0]
            hist = real(*args, **kwargs)
            finetunes.append((phase or ("hwa" if kwargs.get("after_step") else "digital"), start,
                              steps[0] - start))
            return hist
        return finetune

    cfg, out = _study(setup), setup[0] / "kill_reference"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ft._Loop, "step", counting)
        mp.setattr(finetune_step, "finetune", labelled(finetune_step.finetune, None))
        mp.setattr(prune_step, "finetune", labelled(prune_step.finetune, "retrain"))
        _fresh_process_rng(-1)
        _run(cfg, out)
    _assert_once_each(out)
    ref = Reference(cfg, out, (out / "results.jsonl").read_bytes(), sorted(finetunes, key=lambda f: f[1]))
    assert ref.total == N_RECORDS
    assert [f[0] for f in ref.finetunes] == 2 * (["digital", "hwa"] + 4 * ["retrain"])
    return ref


def _kill_at_record(ref: Reference, out: Path, k: int, seed: int, half: bool = False) -> None:
    """Run until the k-th record is on disk (and, with `half`, half of the next line: the
    write in flight), die, resume; the bytes of the reference."""
    from analogformer.study import records
    real, calls = records.RecordLog.write, [0]

    def write(self, record):
        calls[0] += 1
        if calls[0] <= k:
            real(self, record)
            if calls[0] < k or half:
                return
        else:
            line = json.dumps(record)
            with self.path.open("a") as f:
                f.write(line[:len(line) // 2])
        raise Killed(f"killed after record {k}" + (" and half of the next" if half else ""))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(records.RecordLog, "write", write)
        with pytest.raises(Killed):
            _run(ref.cfg, out)
    # written and fsynced in order, before the crash
    on_disk = (out / "results.jsonl").read_bytes()
    head = b"".join(ref.data.splitlines(keepends=True)[:k])
    assert on_disk.startswith(head) and (on_disk == head) != half
    _fresh_process_rng(seed)
    if half:  # the resume drops the half line, with a warning, and writes that record again
        with pytest.warns(UserWarning, match="truncated"):
            _run(ref.cfg, out)
    else:
        _run(ref.cfg, out)
    ref.assert_equals(out, f"killed after record {k} of {ref.total}" + (" (and half a line)" if half else ""))


def _kill_at_step(ref: Reference, out: Path, n: int, seed: int) -> None:
    """Run until optimizer step n (counted over the whole run) is taken, die, resume."""
    from analogformer.training import finetune as ft
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ft._Loop, "step", _dies_after(ft._Loop.step, n, "optimizer step"))
        with pytest.raises(Killed):
            _run(ref.cfg, out)
    _fresh_process_rng(seed)
    _run(ref.cfg, out)
    ref.assert_equals(out, f"killed after optimizer step {n}")


# ------------------------------------------------------------------ kill / resume

@pytest.mark.parametrize("seed, half", [(0, False), (1, False), (2, True)], ids=["0", "1", "2-half-line"])
def test_killed_after_a_random_record_and_resumed_gives_the_same_bytes(setup, reference, quick, seed, half):
    """Seed i draws k from the i-th of three equal parts of 1 .. total-1, so the kills fall
    early and late, in both tasks; the last one dies halfway through writing record k+1."""
    i, n = SEEDS.index(seed), reference.total - 1
    k = random.Random(seed).randint(1 + i * n // len(SEEDS), (i + 1) * n // len(SEEDS))
    _kill_at_record(reference, setup[0] / f"kill_record_{seed}", k, seed, half)


@pytest.mark.parametrize("phase", [
    "digital",
    "hwa",
    "retrain",
])
def test_killed_during_a_fine_tuning_and_resumed_gives_the_same_bytes(setup, reference, quick, phase):
    """Killed after a random optimizer step of a random fine-tuning of that phase: the
    model, never saved, is trained again from the start, to the same weights; the rest of
    the run is unchanged."""
    rng = random.Random(phase)
    _, before, steps = rng.choice([f for f in reference.finetunes if f[0] == phase])
    _kill_at_step(reference, setup[0] / f"kill_{phase}", before + rng.randint(1, steps), len(phase))


@pytest.mark.slow
def test_killed_after_every_record_and_during_every_fine_tuning(setup, reference, quick):
    """Every record boundary, then a random step of every fine-tuning (digital, HWA,
    pruning retraining)."""
    failed = []
    for k in range(1, reference.total):
        try:
            _kill_at_record(reference, setup[0] / f"kill_every_record_{k}", k, k)
        except AssertionError as e:
            failed.append(f"record {k}: {str(e).splitlines()[0]}")
    rng = random.Random(0)
    for i, (phase, before, steps) in enumerate(reference.finetunes):
        n = before + rng.randint(1, steps)
        try:
            _kill_at_step(reference, setup[0] / f"kill_every_step_{n}", n, i)
        except AssertionError as e:
            failed.append(f"{phase} fine-tuning {i}, step {n}: {str(e).splitlines()[0]}")
    assert not failed, "\n".join(failed)


def _cli(cfg: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "analogformer.cli", "study", str(cfg), "--out", str(out),
                             "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish(p: subprocess.Popen) -> None:
    _, err = p.communicate(timeout=900)
    assert p.returncode == 0, err.decode()[-3000:]


@pytest.mark.slow
def test_sigkill_of_the_cli_process(setup):
    """A real `analogformer study` process (unpatched) killed with SIGKILL once k records
    are on disk — no exception, no `finally`, the folder lock released by the kernel —
    and the same command run again: the bytes of one uninterrupted run of the command."""
    root = setup[0]
    cfg = _study(setup)
    ref = root / "sigkill_reference"
    _finish(_cli(cfg, ref))
    data = (ref / "results.jsonl").read_bytes()
    total = len(data.splitlines())
    assert total == N_RECORDS
    for seed in SEEDS[:2]:
        k = random.Random(seed).randint(1, total - 1)
        out = root / f"sigkill_{seed}"
        p = _cli(cfg, out)
        deadline = time.time() + 900
        while p.poll() is None and time.time() < deadline:
            path = out / "results.jsonl"
            if path.exists() and path.read_bytes().count(b"\n") >= k:
                p.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        p.communicate(timeout=60)
        assert p.returncode == -signal.SIGKILL, "the study ended before it was killed"
        assert k <= len(_lines(out)) < total
        _finish(_cli(cfg, out))
        _assert_once_each(out)
        assert (out / "results.jsonl").read_bytes() == data, f"SIGKILL after {k} or more records"


# ------------------------------------------------------------------ growth

def test_a_grown_study_equals_a_fresh_run_of_the_larger_config(setup, reference, quick):
    """A finished study of one task, one time point, one repeat, three conditions and one
    retraining seed, then the reference config in the same folder (every EXTENDABLE list
    grown: tasks, conditions, sweep.times_seconds, sweep.repeats, pruning.retrain_seeds):
    the records of the fresh reference run, field for field. The first run's lines stay
    at the top of results.jsonl, as they were, and the new ones follow, so the order is
    not the fresh run's: the records are compared by key."""
    out = setup[0] / "grown"
    _run(_study(setup, tasks=["sst2"], conditions=["digital", "analog", "hwa"],
                pruning=dict(STUDY["pruning"], retrain_seeds=1),
                sweep=dict(STUDY["sweep"], times_seconds=[2592000], repeats=1)), out)
    first = (out / "results.jsonl").read_bytes()
    assert len(first.splitlines()) == 3 + 5  # digital, analog, hwa; dense + 2 x (pruned, retrained)
    _fresh_process_rng(5)
    _run(reference.cfg, out)
    _assert_once_each(out)
    assert (out / "results.jsonl").read_bytes().startswith(first)
    _assert_same_records(out, reference.out)


def test_adding_hwa_to_a_finished_study_equals_a_fresh_run(setup, reference, quick):
    """A finished study without the HWA condition, grown by it: the HWA model is trained in
    a run that reuses the digital checkpoint."""
    out = setup[0] / "grown_hwa"
    _run(_study(setup, tasks=["sst2"], conditions=[c for c in STUDY["conditions"] if c != "hwa"]), out)
    _fresh_process_rng(6)
    _run(reference.cfg, out)
    _assert_once_each(out)
    _assert_same_records(out, reference.out)
