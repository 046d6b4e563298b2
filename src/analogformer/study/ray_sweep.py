"""The over-time sweep on a Ray cluster: the same evaluations as the local sweep, run as Ray
tasks, with this process (the driver) the only writer of the record log.

The work of `sweep.run_time_sweep` comes in units: one per digital condition, and one per
(condition group, repeat) — a device instance, programmed once and drifted to every time
point, exactly `sweep._sweep_repeat`. The driver builds each group's analog model (analogized,
DAC ranges calibrated, INT-N attention prepared) once, as the local sweep does, puts it in
the object store once (`ray.put`), and submits its repeats as tasks; every task starts from
that unprogrammed model, which is what the local sweep's `program` gives (it replaces the
whole programmed state). Each draw is seeded from values (`seeding.derive_seed`), so a unit's
records do not depend on the worker or on what ran before it there.

Tasks finish in any order (`ray.wait`); the driver writes a unit's records once every unit
before it in the local sweep's order is written, so `results.jsonl` holds the local run's
bytes in the local run's order, and a killed driver leaves a prefix of them, which a resumed
run (local or on Ray) continues. Workers run with the driver's torch settings (threads,
default dtype, matmul precision, deterministic algorithms): the float kernels, and so the
bits, are those of the local run on the same hardware and software.

Ray is optional (`pip install 'analogformer[ray]'`); nothing here imports it before a run
asks for it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..config import check_positive, fail

INSTALL = "pip install 'analogformer[ray]'"


@dataclass
class ExecutionConfig:
    """Where the over-time evaluations run. It says how a study runs, not what it computes:
    the records are the same either way, and a folder may be resumed with another setting."""

    ray: Optional[str] = None
    """null = in this process. Else the Ray cluster that evaluates the sweep (`pip install
    'analogformer[ray]'`): `local` starts a private Ray instance on this machine, `auto`
    joins the cluster started on this machine with `ray start --head`, an address
    (`HOST:6379`, `ray://HOST:10001`) joins that cluster. `--ray` sets it."""
    ray_cpus: Optional[int] = None
    """CPUs of the instance `ray: local` starts; null = every CPU of this machine."""
    threads_per_task: Optional[int] = None
    """torch threads of each Ray task, and the CPUs it asks Ray for; null = this process's
    torch thread count, so that the float kernels, and the records, are those of a local
    run. Set 1 (and run the driver with OMP_NUM_THREADS=1) for one task per CPU."""

    def __post_init__(self):
        if self.ray is not None and (not isinstance(self.ray, str) or not self.ray.strip()):
            fail("ExecutionConfig", "ray", f"must be local, auto, a cluster address (HOST:PORT or "
                                           f"ray://HOST:PORT) or null, got {self.ray!r}")
        if self.ray not in (None, "local", "auto") and _host_port(self.ray) is None:
            fail("ExecutionConfig", "ray", f"{self.ray!r} is not a Ray cluster address: give HOST:PORT (the "
                 "head's GCS port, 6379 unless `ray start --head --port` chose another), ray://HOST:10001, "
                 "auto (the cluster started on this machine) or local (a Ray instance of this process)")
        check_positive(self, "ray_cpus", allow_none=True, integer=True)
        check_positive(self, "threads_per_task", allow_none=True, integer=True)
        if self.ray_cpus is not None and self.ray != "local":
            fail("ExecutionConfig", "ray_cpus", "sizes the instance `ray: local` starts; a cluster "
                                                "(auto or an address) has the CPUs it was started with")


def _host_port(address: str) -> Optional[Tuple[str, int]]:
    """(host, port) of a cluster address HOST:PORT or ray://HOST:PORT; None if it is not one."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


# ------------------------------------------------------------------ the worker side

def _torch_settings(threads: Optional[int]) -> dict:
    """This process's torch settings that decide the float kernels of a forward."""
    return {"threads": threads or torch.get_num_threads(), "dtype": torch.get_default_dtype(),
            "matmul": torch.get_float32_matmul_precision(),
            "deterministic": torch.are_deterministic_algorithms_enabled()}


def _apply(settings: dict) -> None:
    torch.set_num_threads(settings["threads"])
    torch.set_default_dtype(settings["dtype"])
    torch.set_float32_matmul_precision(settings["matmul"])
    torch.use_deterministic_algorithms(settings["deterministic"])


class _Todo:
    """The record log, as `_sweep_repeat` asks it, inside a worker: a (condition, time) of
    the repeat is done unless the driver listed it."""

    def __init__(self, todo):
        self.todo = set(todo)

    def has(self, key: Tuple) -> bool:
        return (key[1], float(key[2])) not in self.todo


class _NoBar:
    def update(self, *a, **k):
        pass

    def set_postfix(self, *a, **k):
        pass


def _digital_unit(settings: dict, model, evaluate) -> List[tuple]:
    """A digital condition: one evaluation of the model as it is."""
    _apply(settings)
    model.eval()
    return [(None, evaluate(model))]


def _repeat_unit(settings: dict, model, evaluate, task: str, conds, r: int, cfg, todo) -> List[tuple]:
    """One device instance of one condition group: `sweep._sweep_repeat` on this worker;
    [((condition name, t), metrics)] in the order it evaluated them."""
    from .sweep import _sweep_repeat
    _apply(settings)
    out: List[tuple] = []
    _sweep_repeat(model, task, conds, r, cfg, _Todo(todo), evaluate,
                  lambda c, t, rep, metrics: out.append(((c.name, t), metrics)), _NoBar())
    return out


# ------------------------------------------------------------------ the driver side

class InOrder:
    """Results of numbered units, arriving in any order, handed on in number order:
    `add(i, result)` returns the results that are now next in line."""

    def __init__(self):
        self.next = 0
        self.waiting: Dict[int, object] = {}

    def add(self, i: int, result) -> List[tuple]:
        if i < self.next or i in self.waiting:
            raise ValueError(f"unit {i} arrived twice")
        self.waiting[i] = result
        ready = []
        while self.next in self.waiting:
            ready.append((self.next, self.waiting.pop(self.next)))
            self.next += 1
        return ready


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ValueError(f"execution.ray (--ray) needs Ray, which is not installed: {INSTALL}") from None
    return ray


def _probe(address: str, timeout: float = 10.0) -> None:
    """A clear error, at once, if nothing listens at the cluster `address` (HOST:PORT or
    ray://HOST:PORT)."""
    import socket
    host, port = _host_port(address)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ValueError(f"execution.ray: cannot reach the Ray cluster at {address!r} ({e.strerror or e}); "
                         "start it with `ray start --head` on the head machine and pass its HOST:PORT, or use "
                         "--ray local for a Ray instance of this process") from None


class RaySweep:
    """`runner` of `sweep.run_time_sweep` on a Ray cluster; `with RaySweep(cfg) as runner:`
    connects (or starts `local`) and disconnects at the end. A process that has Ray
    initialised already (a notebook, a test) keeps its session."""

    def __init__(self, cfg: ExecutionConfig):
        self.cfg = cfg
        self.ray = _import_ray()
        self._owns = False

    def __enter__(self) -> "RaySweep":
        ray, cfg = self.ray, self.cfg
        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
            if cfg.ray not in ("local", "auto"):
                _probe(cfg.ray)   # ray.init retries an unreachable address for minutes
            try:
                if cfg.ray == "local":
                    ray.init(num_cpus=cfg.ray_cpus or os.cpu_count(), **kwargs)
                else:
                    ray.init(address=cfg.ray, **kwargs)
            except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
                where = ("the Ray cluster started on this machine (auto)" if cfg.ray == "auto"
                         else f"the Ray cluster at {cfg.ray!r}")
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300].rstrip(".")
                raise ValueError(f"execution.ray: cannot reach {where}: {first}. Start one with "
                                 "`ray start --head` (then --ray auto, or --ray HEAD_IP:6379 from "
                                 "another machine), or use --ray local for a Ray instance of this "
                                 "process") from None
            self._owns = True
        self._digital = ray.remote(_digital_unit)
        self._repeat = ray.remote(_repeat_unit)
        return self

    def __exit__(self, *exc) -> None:
        if self._owns:
            self.ray.shutdown()
            self._owns = False

    def cpus(self) -> float:
        return float(self.ray.cluster_resources().get("CPU", 0))

    def __call__(self, task: str, models, digital: Sequence, groups: Sequence, evaluate: Callable,
                 emit: Callable, bar, cfg, log) -> None:
        """Evaluate `digital` conditions and `groups` [(conds, repeats, build)] — `build()`
        makes the group's analog model — as Ray tasks; `emit` every record in the local
        sweep's order."""
        ray = self.ray
        settings = _torch_settings(self.cfg.threads_per_task)
        need = settings["threads"]
        if need > self.cpus():
            raise ValueError(f"execution.threads_per_task: each Ray task takes {need} CPU(s) (torch "
                             f"threads), the cluster has {self.cpus():g}; set execution.threads_per_task "
                             "(e.g. 1) or run the driver with fewer torch threads (OMP_NUM_THREADS=1)")
        opts = dict(num_cpus=need, max_retries=3)   # a lost worker's unit is recomputed: pure, seeded
        units: List[Callable] = []   # unit i -> emits its result
        refs: Dict[object, int] = {}
        order = InOrder()
        try:
            evaluate_ref = ray.put(evaluate)
            puts = {}
            for c in digital:
                if c.model not in puts:
                    models[c.model].eval()   # as the local sweep leaves it
                    puts[c.model] = ray.put(models[c.model])
                refs[self._digital.options(**opts).remote(settings, puts[c.model], evaluate_ref)] = len(units)
                units.append(lambda res, c=c: [emit(c, None, 0, m) for _, m in res])
            del puts
            for conds, repeats, build in groups:
                model_ref = ray.put(build())   # the driver calibrates, as the local sweep does
                by_name = {c.name: c for c in conds}
                for r in repeats:
                    todo = [(c.name, t) for t in cfg.times_seconds for c in conds
                            if t in cfg.times_for(c.name) and not log.has((task, c.name, t, r))]
                    ref = self._repeat.options(**opts).remote(settings, model_ref, evaluate_ref, task,
                                                              conds, r, cfg, todo)
                    refs[ref] = len(units)
                    units.append(lambda res, r=r, by_name=by_name:
                                 [emit(by_name[n], t, r, m) for (n, t), m in res])
                del model_ref
                self._drain(refs, order, units, wait=False)   # write what is ready while building
            while refs:
                self._drain(refs, order, units, wait=True)
        finally:
            for ref in refs:   # the driver stops (an error, Ctrl-C): nothing runs on for it
                ray.cancel(ref, force=True)

    def _drain(self, refs: Dict, order: InOrder, units: List[Callable], wait: bool) -> None:
        if not refs:
            return
        done, _ = self.ray.wait(list(refs), num_returns=1 if wait else len(refs), timeout=None if wait else 0)
        for ref in done:
            i = refs.pop(ref)
            for j, res in order.add(i, self.ray.get(ref)):
                units[j](res)


def sweep_runner(cfg: Optional[ExecutionConfig]):
    """The runner `cfg` asks for: a `RaySweep`, or None (the local sweep) — used as
    ``with sweep_runner(cfg) as runner:``."""
    from contextlib import nullcontext
    if cfg is None or cfg.ray is None:
        return nullcontext(None)
    return RaySweep(cfg)
