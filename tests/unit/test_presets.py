"""Presets: `AnalogConfig.preset(name, **overrides)`, YAML `analog: {preset: ..., ...}` (the preset,
then the other keys over it, section by section), round trips, and the registry."""
import dataclasses
import math

import pytest
import torch
import yaml
from torch import nn

import analogformer as af
from analogformer import config as config_mod
from analogformer.config import (PRESETS, ADCConfig, AnalogConfig, CompensationConfig, PCMConfig, TileConfig,
                                 from_dict, to_dict)
from analogformer.study.config import dump_study_config, load_study_config

AIHWKIT = dict(dac=dict(bits=7, input_scaling="absmax_tile", init_range=3.0),
               adc=dict(bits=9, bound=12.0, output_noise_std=0.06, bound_management="iterative",
                        bound_management_max_iters=4))


def test_the_spec_preset_is_the_default_config():
    assert AnalogConfig.preset("spec") == AnalogConfig()
    c = AnalogConfig()
    assert (c.dac.bits, c.dac.input_scaling, c.adc.bits, c.adc.bound, c.adc.output_noise_std,
            c.adc.bound_management, c.pcm.read_noise_time) == (8, "static", 10, 10.0, 0.04, None, "t")


def test_the_aihwkit_inference_preset_holds_aihwkit_defaults():
    """InferenceRPUConfig(): inp_res 1/(2^7-2) (7 bits), out_res 1/(2^9-2) (9 bits), out_bound 12,
    out_noise 0.06, NoiseManagementType.ABS_MAX per tile, BoundManagementType.ITERATIVE, the
    PCMLikeNoiseModel (our PCM constants, read noise over t + t0), GlobalDriftCompensation."""
    c = AnalogConfig.preset("aihwkit-inference")
    for section, values in AIHWKIT.items():
        got = getattr(c, section)
        assert {k: getattr(got, k) for k in values} == values
    assert c.pcm == PCMConfig(read_noise_time="t_plus_t0")
    assert c.tile == TileConfig() and c.compensation == CompensationConfig()
    assert (c.include, c.exclude) == (AnalogConfig().include, AnalogConfig().exclude)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_dicts_and_yaml(name):
    cfg = AnalogConfig.preset(name)
    assert from_dict(AnalogConfig, to_dict(cfg)) == cfg
    text = yaml.safe_dump({"analog": to_dict(cfg)})
    assert from_dict(AnalogConfig, yaml.safe_load(text)["analog"], prefix="analog") == cfg
    assert from_dict(AnalogConfig, {"preset": name}) == cfg


def test_yaml_preset_then_overrides_section_by_section(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("tasks: [sst2]\nanalog:\n  preset: aihwkit-inference\n  adc: {bits: 8}\n"
                    "  exclude: ['classifier']\n")
    cfg = load_study_config(str(path)).analog
    base = AnalogConfig.preset("aihwkit-inference")
    assert cfg == dataclasses.replace(base, adc=dataclasses.replace(base.adc, bits=8), exclude=("classifier",))
    assert cfg.adc.bound == 12.0 and cfg.adc.bound_management == "iterative"  # the rest of the preset's ADC
    assert cfg == AnalogConfig.preset("aihwkit-inference", adc={"bits": 8}, exclude=["classifier"])
    # the dump writes the expanded config (no `preset` key), which reads back the same
    dumped = yaml.safe_load(dump_study_config(load_study_config(str(path))))
    assert "preset" not in dumped["analog"] and from_dict(AnalogConfig, dumped["analog"]) == cfg
    # --set works the same way
    over = load_study_config(None, ["tasks=[sst2]", "analog.preset=aihwkit-inference", "analog.adc.bits=8"])
    assert over.analog == AnalogConfig.preset("aihwkit-inference", adc={"bits": 8})


def test_a_config_object_replaces_its_section_and_overrides_are_validated():
    cfg = AnalogConfig.preset("aihwkit-inference", adc=ADCConfig(bits=6))
    assert cfg.adc == ADCConfig(bits=6) and cfg.dac.bits == 7
    with pytest.raises(ValueError, match=r"analog.adc: unknown key\(s\) \['bitz'\]"):
        from_dict(AnalogConfig, {"preset": "spec", "adc": {"bitz": 8}}, prefix="analog")
    with pytest.raises(ValueError, match=r"analog.adc.bits: expected"):
        from_dict(AnalogConfig, {"preset": "spec", "adc": {"bits": "eight"}}, prefix="analog")
    with pytest.raises(ValueError, match="ADCConfig.bound_management: re-reads tiles"):  # preset + override clash
        AnalogConfig.preset("aihwkit-inference", adc={"bits": None})


@pytest.mark.parametrize("name, hint", [("aihwkit-inferance", "; did you mean 'aihwkit-inference'?"),
                                        ("spce", "; did you mean 'spec'?"), ("gpu", ""), (["spec"], "")])
def test_unknown_presets_name_the_key_and_the_closest_preset(name, hint):
    msg = f"analog.preset: unknown preset {name!r}{hint} (presets: spec, aihwkit-inference, llm)"
    with pytest.raises(ValueError) as err:
        load_study_config(None, [("tasks", ["sst2"]), ("analog", {"preset": name})])
    assert str(err.value) == msg
    with pytest.raises(ValueError, match="^preset: unknown preset"):
        AnalogConfig.preset(name)


def test_a_preset_is_one_registry_entry(monkeypatch):
    monkeypatch.setitem(PRESETS, "tiny-adc", lambda: AnalogConfig(adc=ADCConfig(bits=4, bound=2.0)))
    cfg = load_study_config(None, [("tasks", ["sst2"]), ("analog", {"preset": "tiny-adc", "dac": {"bits": 6}})])
    assert (cfg.analog.adc.bits, cfg.analog.adc.bound, cfg.analog.dac.bits) == (4, 2.0, 6)
    assert config_mod.PRESETS is PRESETS


def test_the_aihwkit_preset_reads_noisy_conductances_at_t0():
    """read_noise_time t + t0: a drift to t = 0 already reads 1/f noise (seeded statistics: the
    relative deviations of the read weights have std Q_s·sqrt(ln((t0 + t_read)/(2 t_read)))),
    where the SPEC option reads the programmed conductances exactly."""
    torch.manual_seed(0)
    for name in ("spec", "aihwkit-inference", "llm"):
        cfg = AnalogConfig.preset(name, pcm={"prog_noise": False, "drift": False})
        layer = af.AnalogLinear(256, 256, config=cfg).eval()
        with torch.no_grad():
            layer.weight.fill_(0.8).mul_(torch.sign(torch.randn(256, 256)))  # |w| = w_max: g = 25 µS
        af.program(nn.Sequential(layer), seed=0)
        programmed = layer.read_weights().clone()
        af.drift(nn.Sequential(layer), 0.0)
        rel = (layer.read_weights() - programmed) / programmed
        if name in ("spec", "llm"):  # SPEC's read-noise time t: no 1/f noise at t = 0
            assert torch.equal(layer.read_weights(), programmed)
            continue
        # g+ = g_max, g− = 0 (no read noise at 0 µS): w = 1 + Q_s(g_max)·f·Z, Q_s(g_max) = 0.0088
        sigma = 0.0088 * math.sqrt(math.log((20.0 + 250e-9) / 500e-9))
        n = rel.numel()
        assert abs(rel.mean().item()) < 4 * sigma / math.sqrt(n)
        assert abs(rel.std().item() - sigma) < 4 * sigma / math.sqrt(2 * n)
