"""A causal-LM study end to end on tiny LLaMA / GPT-2 models built from configs: perplexity
records (digital = a plain computation on the same windows), lower-is-better in the report,
generated texts per condition and time in the report, and resume without duplicates."""
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lm_fixtures import save_tiny, tiny_tokenizer, wikitext_dir  # noqa: E402

from analogformer.study.config import load_study_config  # noqa: E402
from analogformer.study.pipeline import run_study  # noqa: E402
from analogformer.tasks import lm_metrics  # noqa: E402
from analogformer.tasks.lm_data import LMDataConfig, encode_windows, read_split_text, window_loader  # noqa: E402


def _study(tmp_path, family, **extra):
    model = save_tiny(family, tmp_path / f"tiny-{family}")
    wt = wikitext_dir(tmp_path / "wt2") if not (tmp_path / "wt2").exists() else tmp_path / "wt2"
    cfg = {"model": str(model), "tasks": ["wikitext2"], "seed": 0,
           "data": {"lm": {"wikitext2_dir": str(wt), "window_tokens": 16}, "max_eval_examples": 6,
                    "max_train_examples": 8},
           "finetune": {"batch_size": 4},
           "analog": {"preset": "llm", "tile": {"rows": 16, "cols": 16}},
           "sweep": {"times_seconds": [1, 2592000], "repeats": 2, "calibration_batches": 2, "eval_batch_size": 4},
           "conditions": ["digital", "analog-nocomp", "analog"],
           "generation": {"prompts": ["once upon a time", "the cat"], "max_new_tokens": 5}}
    cfg.update(extra)
    path = tmp_path / f"{family}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _lines(p):
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip()]


@pytest.mark.parametrize("family", ["llama", pytest.param("gpt2", marks=pytest.mark.slow)])
def test_lm_study_end_to_end_and_resume(tmp_path, family):
    path = _study(tmp_path, family)
    cfg = load_study_config(str(path))
    out = tmp_path / "out"
    report = run_study(cfg, str(out), progress=False)
    recs = _lines(out / "results.jsonl")
    assert {(r["condition"], r["t_seconds"]) for r in recs} == {("digital", None)} | {
        (c, t) for c in ("analog-nocomp", "analog") for t in (1.0, 2592000.0)}
    assert len(recs) == 1 + 2 * 2 * 2
    digital = next(r for r in recs if r["condition"] == "digital")
    assert digital["headline"] == digital["metrics"]["perplexity"]
    # the digital record equals a plain computation on the same (seeded) windows
    from transformers import AutoModelForCausalLM
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / f"tiny-{family}").eval()
    lm = LMDataConfig(wikitext2_dir=str(tmp_path / "wt2"), window_tokens=16)
    ds = encode_windows(read_split_text("wikitext2", "eval", lm), tiny_tokenizer(), lm, False, 6, 0)
    ref = lm_metrics(plain, list(window_loader(ds, 4, False)))
    assert digital["metrics"]["cross_entropy"] == pytest.approx(ref["cross_entropy"], abs=1e-6)
    assert digital["metrics"]["tokens"] == 6 * 15
    # generations: each prompt × (digital + each analog condition × time), instance 0
    gens = _lines(out / "generations.jsonl")
    assert len(gens) == 2 * (1 + 2 * 2)
    assert {g["prompt"] for g in gens} == {"once upon a time", "the cat"}
    text = report.read_text()
    assert "Generated text" in text and "“the cat”" in text and "analog, compensated" in text
    assert "values as they are, lower is better" in text and "(%)" not in text.split("## Plots")[0]
    # the drop table: condition minus digital for a perplexity
    analog_1mo = [r["headline"] for r in recs if r["condition"] == "analog" and r["t_seconds"] == 2592000.0]
    drop = sum(analog_1mo) / 2 - digital["headline"]
    assert f"{drop:+.2f}" in text
    # resume: nothing recomputed; a lost generation line comes back identical
    before = (out / "generations.jsonl").read_text().splitlines()
    (out / "generations.jsonl").write_text("\n".join(before[:-1]) + "\n")
    run_study(cfg, str(out), progress=False)
    after = (out / "generations.jsonl").read_text().splitlines()
    strip = lambda ls: [{k: v for k, v in json.loads(l).items() if k != "seconds"} for l in ls]
    assert strip(after) == strip(before)
    assert len(_lines(out / "results.jsonl")) == len(recs)


def test_generation_needs_an_lm_task(tmp_path):
    path = _study(tmp_path, "llama", tasks=["sst2"])
    with pytest.raises(ValueError, match="generation"):
        load_study_config(str(path))
    path = _study(tmp_path, "llama", generation={"prompts": ["a"], "conditions": ["hwa"]})
    with pytest.raises(ValueError, match="generation.conditions"):
        load_study_config(str(path))


@pytest.mark.slow
def test_lm_study_int_attention_conditions(tmp_path):
    """hwa / hwa-int8 / hwa-int6 on a tiny LLaMA: the HWA model trains with the task's loss
    (labels = input_ids), INT-N attention quantizes LLaMA's attention at a small cost."""
    path = _study(tmp_path, "llama", conditions=["digital", "hwa", "hwa-int8", "hwa-int6"],
                  hwa={"finetune": {"max_steps": 2}}, generation={"prompts": ["the cat"], "max_new_tokens": 3},
                  sweep={"times_seconds": [1], "repeats": 1, "calibration_batches": 2, "eval_batch_size": 4})
    out = tmp_path / "out"
    run_study(load_study_config(str(path)), str(out), progress=False)
    recs = {r["condition"]: r for r in _lines(out / "results.jsonl")}
    assert set(recs) == {"digital", "hwa", "hwa-int8", "hwa-int6"}
    assert recs["hwa-int8"]["attention_bits"] == 8 and recs["hwa-int6"]["attention_bits"] == 6
    ppl = [recs[c]["headline"] for c in ("hwa", "hwa-int8", "hwa-int6")]
    assert ppl[1] == pytest.approx(ppl[0], rel=0.02) and ppl[2] == pytest.approx(ppl[0], rel=0.05)
    assert len(_lines(out / "generations.jsonl")) == 4
