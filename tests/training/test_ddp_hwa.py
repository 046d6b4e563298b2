"""Data-parallel HWA training with torch.distributed: 2 CPU processes on the gloo backend against
one process, on a tiny analogized BERT classifier built from a config.

With the noise off, 2 processes taking their shares of every global batch train the model one
process trains on the whole batches (to float rounding); with the noise on, the processes draw
different noise (rank 0 the noise of one process) yet hold identical weights and DAC ranges after
every step, one decision of `keep_best` and one training-state file, written by rank 0, from which
2 processes resume bit for bit. The workers are forked from a forkserver that imported torch and
transformers once (a spawn per test would import them again in every process)."""
from __future__ import annotations

import os
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, RandomSampler

transformers = pytest.importorskip("transformers")

import analogformer as af  # noqa: E402
from analogformer.nn.convert import analog_layers  # noqa: E402
from analogformer.training import HWAConfig, hwa_after_step, prepare_hwa  # noqa: E402
from analogformer.training import finetune as ft  # noqa: E402
from analogformer.training import train_state  # noqa: E402
from analogformer.training.distributed import Ranks  # noqa: E402
from analogformer.training.finetune import FinetuneConfig, finetune, unlabelled  # noqa: E402

N_EXAMPLES, GLOBAL_BATCH = 21, 8  # batches of 8, 8, 5: the last one is shared 3 + 2
RECIPE = FinetuneConfig(learning_rate=1e-3, epochs=1, batch_size=GLOBAL_BATCH, warmup_ratio=0.0, seed=3)
NOISE_STD = 0.02  # Gaussian weight noise, in units of the tile's max |W|


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ the tiny setup (parent and workers)

def examples() -> list:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 99, (N_EXAMPLES, 10), generator=g)
    mask = torch.ones(N_EXAMPLES, 10, dtype=torch.long)
    mask[::3, 7:] = 0  # some padded rows
    labels = torch.randint(0, 2, (N_EXAMPLES,), generator=g)
    return [dict(input_ids=ids[i], attention_mask=mask[i], labels=labels[i]) for i in range(N_EXAMPLES)]


def loader(batch_size: int = GLOBAL_BATCH) -> DataLoader:
    """Shuffled by the loader's own generator: every process sees the same global batches."""
    data = examples()
    return DataLoader(data, batch_size=batch_size,
                      sampler=RandomSampler(data, generator=torch.Generator().manual_seed(1)))


def hwa_model(noise: bool):
    """A tiny BERT classifier on 16×16 tiles, prepared for HWA (no dropout: its draws depend on the
    batch shape). `noise=False`: no weight or ADC output noise, DAC / ADC quantization and clipping on."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64, num_labels=2,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = transformers.BertForSequenceClassification(config)
    acfg = af.AnalogConfig()
    acfg.tile.rows = acfg.tile.cols = 16
    if not noise:
        acfg.adc.output_noise_std = None
    af.analogize(model, acfg)
    hwa = HWAConfig(weight_noise="gaussian" if noise else None, weight_noise_scale=NOISE_STD,
                    output_noise_pool=1 << 12)
    calib = [unlabelled(b) for b in DataLoader(examples(), batch_size=GLOBAL_BATCH)]
    prepare_hwa(model, hwa, calib_batches=calib, seed=0)
    return model, hwa


def params(model) -> dict:
    """Every trainable tensor: weights, biases, LayerNorms, DAC input ranges."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class NoiseRecorder:
    """An HWA weight-noise hook that keeps its first draw (the same RNG use as the hook it wraps)."""

    def __init__(self, inner):
        self.inner, self.first = inner, None

    def __call__(self, wn):
        noise = self.inner.noise(wn)
        if self.first is None:
            self.first = noise.clone()
        return wn + noise


def record_noise(model) -> NoiseRecorder:
    layer = analog_layers(model)[0][1]
    layer.weight_noise = NoiseRecorder(layer.weight_noise)
    return layer.weight_noise


class Killed(Exception):
    pass


# ------------------------------------------------------------------ 2 processes

def _entry(rank: int, store: str, fn, *args) -> None:
    torch.set_num_threads(1)
    # what torchrun sets (the HF Trainer's accelerate reads it; the group itself comes from the file store)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def run_2_processes(tmp_path: Path, fn, *args) -> list:
    """`fn(rank, out, *args)` in 2 gloo processes; returns what each saved to out/rank{r}.pt."""
    out = tmp_path / fn.__name__
    out.mkdir()
    mp.set_forkserver_preload([__name__, "transformers.trainer"])
    mp.start_processes(_entry, args=(str(out / "store"), fn, out, *args), nprocs=2, start_method="forkserver")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def train_noiseless(rank: int, out: Path) -> None:
    model, hwa = hwa_model(noise=False)
    hist = finetune(model, loader(), RECIPE, after_step=hwa_after_step(hwa), progress=False)
    torch.save({"params": params(model), "losses": hist.losses}, out / f"rank{rank}.pt")


def train_noisy(rank: int, out: Path) -> None:
    model, hwa = hwa_model(noise=True)
    recorder, steps, scored, writes = record_noise(model), [], [], []
    clip = hwa_after_step(hwa)

    def after_step(m):
        clip(m)
        steps.append(params(m))

    def score(m):  # rank 0 only; the best is step 1
        scored.append(len(steps))
        return [0.1, 0.5, 0.3, 0.2][len(steps)]

    write = train_state._write
    train_state._write = lambda folder, state: (writes.append(len(steps)), write(folder, state))[1]
    cfg = replace(RECIPE, checkpoint_every=1, eval_every=1, keep_best=True)
    hist = finetune(model, loader(), cfg, after_step=after_step, score=score, progress=False,
                    state_dir=out / "state")
    torch.save({"noise": recorder.first, "steps": steps, "scored": scored, "writes": writes, "evals": hist.evals,
                "best_step": hist.best_step, "final": params(model), "rng": torch.get_rng_state()},
               out / f"rank{rank}.pt")


def train_killed_and_resumed(rank: int, out: Path) -> None:
    cfg = replace(RECIPE, epochs=2, checkpoint_every=2)  # 6 steps; killed after 3, resumed from step 2
    model, hwa = hwa_model(noise=True)
    full = finetune(model, loader(), cfg, after_step=hwa_after_step(hwa), progress=False, state_dir=out / "full")
    want = params(model)
    real, calls = ft._Loop.step, [0]

    def dies_after_3(self, batches):
        calls[0] += 1
        if calls[0] > 3:
            raise Killed()
        return real(self, batches)
    model, hwa = hwa_model(noise=True)
    ft._Loop.step = dies_after_3
    try:
        finetune(model, loader(), cfg, after_step=hwa_after_step(hwa), progress=False, state_dir=out / "resumed")
    except Killed:
        pass
    finally:
        ft._Loop.step = real
    model, hwa = hwa_model(noise=True)  # a fresh process would build it afresh
    resumed = finetune(model, loader(), cfg, after_step=hwa_after_step(hwa), progress=False,
                       state_dir=out / "resumed")
    torch.save({"want": want, "got": params(model), "killed_at": calls[0], "losses": (full.losses, resumed.losses)},
               out / f"rank{rank}.pt")


def hf_train(noise: bool, per_device_batch: int, out: Path):
    """2 steps of the HF Trainer with HWACallback; (params, first weight-noise draw)."""
    from analogformer.training import HWACallback, param_groups
    model, hwa = hwa_model(noise)
    recorder = record_noise(model) if noise else None
    opt = torch.optim.AdamW(param_groups(model, lr=1e-3, input_range_lr=1e-2))
    args = transformers.TrainingArguments(
        output_dir=str(out / f"hf-{noise}"), max_steps=2, per_device_train_batch_size=per_device_batch,
        learning_rate=1e-3, warmup_steps=0, seed=3, report_to=[], save_strategy="no", logging_strategy="no",
        use_cpu=True, ddp_backend="gloo" if dist.is_initialized() else None, disable_tqdm=True,
        # BERT's classification loss is a batch mean that ignores the Trainer's global item count, so
        # the Trainer's default would multiply it by the number of processes (docs/distributed.md)
        average_tokens_across_devices=False)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=examples(), optimizers=(opt, None),
                                   callbacks=[HWACallback(hwa)])
    trainer.train()
    return params(model), None if recorder is None else recorder.first


def train_hf(rank: int, out: Path) -> None:
    result = {noise: hf_train(noise, GLOBAL_BATCH // 2, out) for noise in (False, True)}
    torch.save(result, out / f"rank{rank}.pt")


# ------------------------------------------------------------------ tests

def test_2_processes_with_the_noise_off_train_as_1_process_on_the_global_batch(tmp_path):
    ranks = run_2_processes(tmp_path, train_noiseless)
    model, hwa = hwa_model(noise=False)
    hist = finetune(model, loader(), RECIPE, after_step=hwa_after_step(hwa), progress=False)
    one = params(model)
    assert hist.steps == 3 and any(n.endswith("input_range") for n in one)
    for r in ranks:  # every weight, bias and DAC range, and the loss of every step (of the whole batch)
        assert r["params"].keys() == one.keys()
        for name, want in one.items():
            torch.testing.assert_close(r["params"][name], want, rtol=0, atol=1e-6, msg=name)
        assert r["losses"] == pytest.approx(hist.losses, rel=1e-6, abs=0)
    for name in one:  # and the processes agree bit for bit
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), name
    # the steps did change every DAC range and the weights (the comparison above is not vacuous)
    moved = {n: float((one[n] - p).abs().max()) for n, p in params(hwa_model(noise=False)[0]).items()}
    assert min(v for n, v in moved.items() if n.endswith("input_range")) > 1e-5
    assert max(moved.values()) > 1e-3


def test_2_processes_draw_their_own_noise_and_stay_identical(tmp_path):
    ranks = run_2_processes(tmp_path, train_noisy)
    model, _ = hwa_model(noise=True)
    recorder = record_noise(model)
    finetune(model, loader(), replace(RECIPE, max_steps=1), progress=False)
    # rank 0 draws what one process draws; rank 1 its own noise: same std, uncorrelated
    assert torch.equal(ranks[0]["noise"], recorder.first)
    a, b = ranks[0]["noise"].flatten(), ranks[1]["noise"].flatten()
    n = a.numel()
    assert float(b.std()) == pytest.approx(NOISE_STD, rel=5 / (2 * n) ** 0.5)
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 5 / n ** 0.5
    # identical weights and DAC ranges after every step
    assert len(ranks[0]["steps"]) == len(ranks[1]["steps"]) == 3
    for k, (s0, s1) in enumerate(zip(ranks[0]["steps"], ranks[1]["steps"])):
        for name in s0:
            assert torch.equal(s0[name], s1[name]), (k, name)
    # one evaluation per point, on rank 0; the same best state kept everywhere
    assert ranks[0]["scored"] == [0, 1, 2, 3] and ranks[1]["scored"] == []
    assert ranks[0]["evals"] == ranks[1]["evals"] == [(0, 0.1), (1, 0.5), (2, 0.3), (3, 0.2)]
    assert ranks[0]["best_step"] == ranks[1]["best_step"] == 1
    for r in ranks:
        for name, p in r["final"].items():
            assert torch.equal(p, ranks[0]["steps"][0][name]), name
    # one file, written by rank 0 after every step: its model is the last step's, its RNG states each rank's
    assert ranks[0]["writes"] == [1, 2, 3] and ranks[1]["writes"] == []
    saved = torch.load(tmp_path / "train_noisy" / "state" / train_state.STATE_FILE, weights_only=False)
    for name, p in ranks[0]["steps"][-1].items():
        assert torch.equal(saved["model"][name], p), name
    assert saved["ranks"]["size"] == 2
    for k, r in enumerate(ranks):
        assert torch.equal(saved["ranks"]["draws"][k]["rng"], r["rng"])


def test_2_processes_resume_from_the_rank_0_state_as_if_never_stopped(tmp_path):
    ranks = run_2_processes(tmp_path, train_killed_and_resumed)
    for r in ranks:
        assert r["killed_at"] == 4 and len(r["losses"][0]) == 6
        assert r["losses"][0] == r["losses"][1]
        for name, p in r["want"].items():
            assert torch.equal(r["got"][name], p), name
    # a state of 2 processes is not resumed by 1
    model, hwa = hwa_model(noise=True)
    cfg = replace(RECIPE, epochs=2, checkpoint_every=2)
    with pytest.raises(ValueError, match=r"saved by a run of 2 process\(es\) and this run has 1.*--nproc_per_node=2"):
        finetune(model, loader(), cfg, after_step=hwa_after_step(hwa), progress=False,
                 state_dir=tmp_path / "train_killed_and_resumed" / "full")


def test_hf_trainer_under_2_processes_trains_as_1_process_and_draws_noise_per_rank(tmp_path):
    ranks = run_2_processes(tmp_path, train_hf)
    for noise in (False, True):
        one, first = hf_train(noise, GLOBAL_BATCH, tmp_path)
        (p0, n0), (p1, n1) = ranks[0][noise], ranks[1][noise]
        for name in one:  # the Trainer's DDP sums every gradient, DAC ranges included; the callback clips alike
            assert torch.equal(p0[name], p1[name]), (noise, name)
            if not noise:  # 2 × 4 examples per step = 1 × 8
                torch.testing.assert_close(p0[name], one[name], rtol=0, atol=1e-6, msg=name)
        if noise:  # rank 0 keeps the draws of one process, rank 1 has its own
            assert torch.equal(n0, first)
            a, b = n0.flatten(), n1.flatten()
            assert float(b.std()) == pytest.approx(NOISE_STD, rel=5 / (2 * a.numel()) ** 0.5)
            assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 5 / a.numel() ** 0.5


# ------------------------------------------------------------------ without processes

def test_shares_of_a_batch_are_contiguous_and_differ_by_at_most_one():
    for n in (5, 8, 9, 21):
        for size in (2, 3, 4):
            bounds = [Ranks(r, size).bounds(n) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [b - a for a, b in bounds]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert [Ranks(r, 2).bounds(5) for r in range(2)] == [(0, 3), (3, 5)]


def test_rank_0_keeps_the_seed_and_other_ranks_get_their_own():
    seeds = [Ranks(r, 4).seed(7) for r in range(4)]
    assert seeds[0] == 7 and len(set(seeds)) == 4
    assert Ranks(1, 4).seed(7) != Ranks(1, 4).seed(8) and Ranks(1, 4).seed(8) != 7


def test_a_batch_smaller_than_the_processes_is_refused_before_training():
    data = list(range(21))
    Ranks(0, 3).check_loader(DataLoader(data, batch_size=8))  # 8, 8, 5: fine
    with pytest.raises(ValueError, match=r"a batch of 1 example\(s\) cannot be shared by 2 processes.*at least 2"):
        Ranks(0, 2).check_loader(DataLoader(data, batch_size=4))  # last batch: 1
    Ranks(0, 2).check_loader(DataLoader(data, batch_size=4, drop_last=True))
    with pytest.raises(ValueError, match=r"a batch of 2 example\(s\) cannot be shared by 3 processes.*at most 2"):
        Ranks(1, 3).check_loader(DataLoader(data[:20], batch_size=2))
    Ranks().check_loader(DataLoader(data, batch_size=1))  # one process: anything goes
    with pytest.raises(ValueError, match=r"batch\['labels'\] has shape \(3,\).*4 examples"):
        Ranks(0, 2).shard({"input_ids": torch.zeros(4, 5), "labels": torch.zeros(3)})
