"""HWA for causal LMs: the per-token distillation loss by hand, weight noise relative to each
channel, learned ranges beside absmax periphery, gradient accumulation (= one big batch with
the noise off), mid-epoch resume (= the uninterrupted run, noise on), teacher-sampled text, and
the HF Trainer (HWACallback + DistillationTrainer) on tiny LLaMA / GPT-2 models from configs."""
import copy
import math

import pytest
import torch
import transformers as tf

import analogformer as af
from analogformer.nn.convert import analog_layers
from analogformer.training import HWAConfig, hwa_after_step, param_groups, prepare_hwa
from analogformer.training.distill import distillation_loss
from analogformer.training.finetune import FinetuneConfig, finetune, total_steps
from analogformer.training.hwa import ChannelRelativeNoise, has_static_range
from analogformer.training.teacher_text import TeacherTextConfig, teacher_text, window_batches
from analogformer.training.train_state import STATE_FILE

VOCAB = 40


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_lm(family="llama", seed=0):
    torch.manual_seed(seed)
    if family == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                            bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()


def windows(n, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (n, length), generator=g)
    return [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r.clone()} for r in ids]


def loader(ws, batch_size, seed=0):
    return window_batches(ws, batch_size, seed)


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------ distillation loss
def test_per_token_distillation_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    T = 2.0
    by_hand, n = 0.0, 0
    for b in range(2):
        for i in range(3):
            if mask[b, i]:
                p = torch.softmax(t[b, i] / T, -1)
                by_hand += T * T * float((p * (p.log() - torch.log_softmax(s[b, i] / T, -1))).sum())
                n += 1
    assert distillation_loss(s, t, T, mask).item() == pytest.approx(by_hand / n, rel=1e-6)
    # no mask: the mean over all 6 tokens; a sequence twice as long with the same tokens: the same loss
    full = distillation_loss(s, t, T)
    assert distillation_loss(torch.cat([s, s], 1), torch.cat([t, t], 1), T).item() == pytest.approx(full.item(), rel=1e-6)
    # padding does not count: appending padded positions with other logits changes nothing
    s2, t2 = torch.cat([s, torch.randn(2, 4, 5)], 1), torch.cat([t, torch.randn(2, 4, 5)], 1)
    m2 = torch.cat([mask, torch.zeros(2, 4, dtype=torch.long)], 1)
    assert distillation_loss(s2, t2, T, m2).item() == pytest.approx(by_hand / n, rel=1e-6)


def test_classification_distillation_is_unchanged_and_shapes_are_checked():
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    ref = torch.nn.functional.kl_div(torch.log_softmax(s / 2, -1), torch.log_softmax(t / 2, -1),
                                     reduction="batchmean", log_target=True) * 4
    assert torch.equal(distillation_loss(s, t, 2.0), ref)
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(s, torch.randn(4, 2), 2.0)
    with pytest.raises(ValueError, match="attention mask"):
        distillation_loss(torch.randn(2, 3, 5), torch.randn(2, 3, 5), 1.0, torch.ones(2, 4))


# ------------------------------------------------------------------ per-channel weight noise
def noise_layer(weight_scale, rel, rows=512, cols=64):
    cfg = af.AnalogConfig.ideal()
    cfg.tile.weight_scale = weight_scale
    layer = af.AnalogLinear(rows, cols, bias=False, config=cfg)
    torch.manual_seed(0)
    with torch.no_grad():  # output channel c has max |w| = 2^-(c % 4)
        w = torch.empty(cols, rows).uniform_(-1, 1)
        w[:, 0] = 1.0
        layer.weight.copy_(w * (0.5 ** (torch.arange(cols) % 4)).unsqueeze(1))
    prepare_hwa(layer, HWAConfig(weight_noise="gaussian", weight_noise_scale=0.05, weight_noise_relative_to=rel,
                                 clip=None, input_range_init=None, learn_input_ranges=False))
    return layer


def injected(layer, seed):
    eye = torch.eye(layer.in_features)
    layer.train()
    torch.manual_seed(seed)
    with torch.no_grad():
        return layer(eye) - eye @ layer.weight.t()  # (in, out): noise × the tile's max |W| (= 1)


def test_channel_relative_noise_scales_with_each_channel_max():
    layer = noise_layer("tile", "channel")
    assert isinstance(layer.weight_noise, ChannelRelativeNoise)
    n = injected(layer, 1)
    for k in range(4):  # 16 channels × 512 rows per magnitude: std known to ~1 %
        std = n[:, k::4].std().item()
        assert std == pytest.approx(0.05 * 0.5 ** k, rel=0.04)
    tile = injected(noise_layer("tile", "tile"), 1)
    assert tile[:, 3::4].std().item() == pytest.approx(0.05, rel=0.04)  # relative to the tile: 8× more


def test_channel_noise_equals_tile_noise_under_a_per_column_mapping():
    for noise in ("gaussian", "pcm"):
        a, b = noise_layer("column", "channel"), noise_layer("column", "tile")
        if noise == "pcm":
            for layer, rel in ((a, "channel"), (b, "tile")):
                prepare_hwa(layer, HWAConfig(weight_noise="pcm", weight_noise_relative_to=rel, clip=None,
                                             input_range_init=None, learn_input_ranges=False))
        # the same draws times each column's max |w_n| = 1 (up to rounding of w/max|w|)
        torch.testing.assert_close(injected(a, 3), injected(b, 3), rtol=1e-5, atol=1e-7)


def test_weight_noise_relative_to_is_validated():
    with pytest.raises(ValueError, match="weight_noise_relative_to"):
        HWAConfig(weight_noise_relative_to="layer")


# ------------------------------------------------------------------ input ranges and absmax periphery
def test_absmax_layers_have_no_range_to_learn_and_need_no_calibration():
    model = af.analogize(tiny_lm("gpt2"), af.AnalogConfig.preset("llm"))
    before = {n: layer.input_range.item() for n, layer in analog_layers(model)}
    prepare_hwa(model, HWAConfig(clip="sigma", clip_granularity="column", clip_sigma=3.0))  # no calib_batches
    layers = analog_layers(model)
    assert not any(has_static_range(layer) or layer.input_range.requires_grad for _, layer in layers)
    assert {n: layer.input_range.item() for n, layer in layers} == before
    groups = param_groups(model, lr=1e-3, input_range_lr=0.1)
    assert all(g["lr"] == 1e-3 for g in groups)  # no group of ranges
    # a static layer in the same model is calibrated and learned as before
    cfg = af.AnalogConfig.preset("llm")
    static = af.analogize(tiny_lm("gpt2"), cfg)
    name, first = analog_layers(static)[0]
    first.config = copy.deepcopy(cfg)
    first.config.dac.input_scaling = "static"
    with pytest.raises(ValueError, match="calib_batches"):
        prepare_hwa(static, HWAConfig())
    batch = {"input_ids": torch.randint(2, VOCAB, (2, 8))}
    prepare_hwa(static, HWAConfig(), calib_batches=[batch])
    assert first.input_range.requires_grad and float(first.input_range) != before[name]
    assert sum(layer.input_range.requires_grad for _, layer in analog_layers(static)) == 1


# ------------------------------------------------------------------ gradient accumulation
@pytest.mark.parametrize("n,micro,k", [(8, 2, 2), (10, 2, 3)])
def test_gradient_accumulation_equals_one_big_batch_with_noise_off(n, micro, k):
    ws = windows(n)
    runs = []
    for bs, steps in ((micro, k), (micro * k, 1)):
        model = af.analogize(tiny_lm("llama"), af.AnalogConfig.ideal())
        cfg = FinetuneConfig(learning_rate=1e-2, epochs=2, batch_size=bs, gradient_accumulation_steps=steps,
                             warmup_ratio=0.0, max_grad_norm=1.0)
        hist = finetune(model, loader(ws, bs), cfg, progress=False)
        runs.append((params(model), hist))
    (pa, ha), (pb, hb) = runs
    assert total_steps(FinetuneConfig(gradient_accumulation_steps=k, epochs=2), loader(ws, micro)) == hb.steps
    assert ha.steps == hb.steps == 2 * math.ceil(n / (micro * k))
    assert ha.losses == pytest.approx(hb.losses, rel=1e-5)
    for key in pa:
        torch.testing.assert_close(pa[key], pb[key], rtol=0, atol=1e-5)  # Adam's steps are ~1e-2


def test_gradient_accumulation_is_validated():
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        FinetuneConfig(gradient_accumulation_steps=0)


# ------------------------------------------------------------------ resume
class Killed(BaseException):
    pass


def hwa_run(tmp_path, kill_after=None, state=True, **over):
    over.setdefault("checkpoint_every", 2)
    """HWA distillation of a tiny LLaMA on tiles (PCM noise, output noise, per-column clip), 2 epochs
    of 6 micro-batches in steps of 2 (max 5 steps), a state every 2 steps."""
    teacher = tiny_lm("llama")
    model = af.analogize(tiny_lm("llama", seed=1), af.AnalogConfig())
    hwa = HWAConfig(clip="sigma", clip_granularity="column", clip_sigma=3.0, weight_noise_relative_to="channel",
                    output_noise_pool=1 << 12)
    ws = windows(12)
    prepare_hwa(model, hwa, calib_batches=[{"input_ids": w["input_ids"][None]} for w in ws], seed=0)
    cfg = FinetuneConfig(**{**dict(learning_rate=1e-3, epochs=2, batch_size=2, gradient_accumulation_steps=2,
                                   max_steps=5, distill_weight=1.0), **over})
    if not state:
        cfg = FinetuneConfig(**{**cfg.__dict__, "checkpoint_every": None})
    after = hwa_after_step(hwa)
    steps = [0]

    def after_step(m):
        after(m)
        steps[0] += 1
        if steps[0] == kill_after:
            raise Killed()

    hist = finetune(model, loader(ws, 2, seed=3), cfg, after_step=after_step, progress=False, teacher=teacher,
                    state_dir=tmp_path / "state" if state else None)
    return params(model), hist


def test_resume_mid_epoch_and_at_an_epoch_end_trains_exactly_as_uninterrupted(tmp_path):
    ref, ref_hist = hwa_run(tmp_path / "ref", state=False)
    assert ref_hist.steps == 5
    # killed in step 3 / 4 / 5, the last state is after step 2 (epoch 1, 4 of 6 batches), step 3 (the end of
    # epoch 1) or step 4 (epoch 2, 2 batches)
    for every, kill in ((2, 3), (3, 4), (2, 5)):
        folder = tmp_path / f"kill{kill}"
        with pytest.raises(Killed):
            hwa_run(folder, kill_after=kill, checkpoint_every=every)
        assert (folder / "state" / STATE_FILE).exists()
        torch.manual_seed(12345)  # a fresh process finds another global RNG state
        got, hist = hwa_run(folder, checkpoint_every=every)
        assert hist.losses == ref_hist.losses and hist.learning_rates == ref_hist.learning_rates
        for key in ref:
            assert torch.equal(got[key], ref[key]), key


def test_resume_under_another_recipe_is_refused(tmp_path):
    with pytest.raises(Killed):
        hwa_run(tmp_path, kill_after=3)
    with pytest.raises(ValueError, match="learning_rate"):
        hwa_run(tmp_path, learning_rate=2e-3)


def test_checkpoint_every_needs_a_state_dir():
    with pytest.raises(ValueError, match="state_dir"):
        finetune(tiny_lm(), loader(windows(2), 2), FinetuneConfig(checkpoint_every=1), progress=False)


# ------------------------------------------------------------------ LM distillation through our loop
def mean_kl(student, teacher, ws):
    batch = {k: torch.stack([w[k] for w in ws]) for k in ("input_ids", "attention_mask")}
    student.eval()
    with torch.no_grad():
        return float(distillation_loss(student(**batch).logits, teacher(**batch).logits, 1.0, batch["attention_mask"]))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_hwa_distillation_pulls_an_lm_on_tiles_to_its_teacher(family):
    teacher = tiny_lm(family)
    student = copy.deepcopy(teacher)
    with torch.no_grad():  # a damaged copy
        g = torch.Generator().manual_seed(5)
        for p in student.parameters():
            if p.ndim == 2:
                p.add_(torch.randn(p.shape, generator=g) * 0.3 * p.std())
    student = af.analogize(student, af.AnalogConfig.preset("llm"))
    hwa = HWAConfig(clip=None, weight_noise_relative_to="channel", output_noise_pool=1 << 14)
    prepare_hwa(student, hwa)
    ws = windows(16, seed=2)
    before = mean_kl(student, teacher, ws)
    finetune(student, loader(ws, 4), FinetuneConfig(learning_rate=3e-3, epochs=6, distill_weight=1.0,
                                                    distill_temperature=1.0, warmup_ratio=0.0),
             after_step=hwa_after_step(hwa), progress=False, teacher=teacher)
    after = mean_kl(student, teacher, ws)
    assert after < 0.5 * before, (before, after)


# ------------------------------------------------------------------ teacher-sampled text
def test_teacher_text_is_seeded_and_follows_the_teacher():
    teacher = tiny_lm("llama")
    cfg = TeacherTextConfig(sequences=3000, tokens=2, batch_size=1000, seed=0)
    ws = teacher_text(teacher, cfg)
    assert len(ws) == 3000 and all(w["input_ids"][0] == 0 for w in ws)  # the BOS token first
    assert torch.equal(ws[5]["labels"], ws[5]["input_ids"])
    second = torch.stack([w["input_ids"][1] for w in ws])
    with torch.no_grad():
        p = torch.softmax(teacher(input_ids=torch.zeros(1, 1, dtype=torch.long)).logits[0, -1], -1)
    freq = torch.bincount(second, minlength=VOCAB).float() / len(ws)
    sigma = (p * (1 - p) / len(ws)).sqrt()
    assert ((freq - p).abs() <= 4.5 * sigma + 1e-9).all()
    again = teacher_text(teacher, cfg)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(ws, again))
    other = teacher_text(teacher, TeacherTextConfig(sequences=3000, tokens=2, batch_size=1000, seed=1))
    assert not torch.equal(second, torch.stack([w["input_ids"][1] for w in other]))


def test_teacher_text_with_the_kv_cache_equals_greedy_decoding_without():
    teacher = tiny_lm("gpt2")
    ws = teacher_text(teacher, TeacherTextConfig(sequences=4, tokens=10, top_k=1, batch_size=3),
                      first_tokens=[5, 6, 7])
    assert {int(w["input_ids"][0]) for w in ws} <= {5, 6, 7}
    for w in ws:
        ids = w["input_ids"][:1][None]
        with torch.no_grad():
            for _ in range(9):
                ids = torch.cat([ids, teacher(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
        assert torch.equal(ids[0], w["input_ids"])


def test_teacher_text_config_is_validated():
    with pytest.raises(ValueError, match="TeacherTextConfig.tokens"):
        TeacherTextConfig(tokens=1)
    with pytest.raises(ValueError, match="TeacherTextConfig.top_k"):
        TeacherTextConfig(top_k=0)


# ------------------------------------------------------------------ HF Trainer
def test_hf_trainer_with_hwa_callback_and_distillation(tmp_path):
    from analogformer.training import DistillationTrainer, HWACallback

    teacher = tiny_lm("llama")
    model = af.analogize(tiny_lm("llama", seed=1), af.AnalogConfig())
    # a fixed clip below the largest weights (init std 0.02): Adam steps of 1e-3 push clipped weights past it
    # unless the callback clips again; calibration at the median: every range gets a PACT gradient
    hwa = HWAConfig(clip="fixed", clip_value=0.03, input_range_percentile=50.0, output_noise_pool=1 << 12)
    ws = windows(8)
    prepare_hwa(model, hwa, calib_batches=[{"input_ids": w["input_ids"][None]} for w in ws[:2]])
    ranges = {n: float(layer.input_range) for n, layer in analog_layers(model)}
    opt = torch.optim.AdamW(param_groups(model, lr=1e-3, input_range_lr=0.05))
    args = tf.TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2,
                                gradient_accumulation_steps=2, report_to=[], save_strategy="no",
                                logging_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = DistillationTrainer(model=model, args=args, train_dataset=ws, teacher=teacher, distill_temperature=2.0,
                                  optimizers=(opt, None), callbacks=[HWACallback(hwa)])
    batch = {k: torch.stack([w[k] for w in ws[:2]]) for k in ("input_ids", "attention_mask", "labels")}
    model.eval()  # the loss by hand, without training noise (the output noise draws from the global RNG)
    with torch.no_grad():
        torch.manual_seed(4)
        want = distillation_loss(model(**batch).logits, teacher(**batch).logits, 2.0, batch["attention_mask"])
        torch.manual_seed(4)
        got = trainer.compute_loss(model, batch)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    trainer.train()
    assert trainer.state.global_step == 2
    for name, layer in analog_layers(model):  # clipped after the last step; ranges learned
        w = layer.weight.detach()
        assert w.abs().max().item() <= 0.03 and (w.abs() == 0.03).sum() >= 2, name
        assert float(layer.input_range) != ranges[name], name
