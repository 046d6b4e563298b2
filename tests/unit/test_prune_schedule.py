"""Pruning schedules as one tagged choice (`pruning.schedule`), the deprecated keys they
replace, the one compatibility check, and the criteria registry. Config only: no training."""
import re
import warnings

import pytest
import torch

from analogformer.config import from_dict, to_dict
from analogformer.pruning import (CRITERIA, CRITERION_REGISTRY, SCHEDULES, ADMMSchedule, GradualSchedule,
                                  OneShotSchedule, ProgressiveSchedule, PruneConfig, criterion, unit_scores)
from analogformer.study.config import config_changes
from analogformer.study.prune_config import PruneStudyConfig

RATIOS = [0.1, 0.3]


def parse(data):
    """PruneStudyConfig from a YAML-like mapping, failing on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return from_dict(PruneStudyConfig, data)


# ---------------------------------------------------------------- the new spelling

@pytest.mark.parametrize("data,want", [
    ({}, OneShotSchedule()),
    ({"schedule": {"kind": "oneshot"}}, OneShotSchedule()),
    ({"schedule": "oneshot"}, OneShotSchedule()),
    ({"schedule": {"kind": "gradual", "stages": 3}}, GradualSchedule(stages=3)),
    ({"schedule": {"kind": "progressive"}, "ratios": RATIOS}, ProgressiveSchedule()),
    ({"schedule": {"kind": "progressive", "round_seeds": 1}, "ratios": RATIOS}, ProgressiveSchedule(round_seeds=1)),
    ({"schedule": {"kind": "admm", "rho": 0.01, "interval_steps": 2}}, ADMMSchedule(rho=0.01, interval_steps=2)),
])
def test_every_schedule_kind_parses_from_its_tagged_mapping(data, want):
    p = parse(data)
    assert p.schedule == want and type(p.schedule) is type(want)
    assert to_dict(p)["schedule"] == to_dict(want)
    again = parse(to_dict(p))  # the dump (config.yaml) reads back the same, without warnings
    assert again == p


def test_registered_kinds_and_what_they_support():
    assert list(SCHEDULES) == ["oneshot", "gradual", "progressive", "admm"]
    support = {k: (c.supports_reconstruct, c.supports_retrain_seeds, c.supports_ema_decay)
               for k, c in SCHEDULES.items()}
    assert support == {"oneshot": (True, True, True), "gradual": (False, False, False),
                       "progressive": (True, True, True), "admm": (True, False, True)}


def test_labels_and_seeds_follow_the_schedule():
    prune = {"criterion": "l2", "scope": "global", "reconstruct": True}
    labels = {kind: parse({"prune": prune, "schedule": {"kind": kind, **extra}, "ratios": RATIOS}).label(
        PruneConfig(**prune)) for kind, extra in (("oneshot", {}), ("progressive", {}), ("admm", {"rho": 0.1}))}
    assert labels == {"oneshot": "l2-rows-global-ls", "progressive": "l2-rows-global-ls-prog",
                      "admm": "l2-rows-admm-global-ls"}
    p = parse({"schedule": {"kind": "progressive", "round_seeds": 1}, "ratios": RATIOS, "retrain_seeds": 3})
    assert [p.seeds_at(r) for r in p.ratios] == [1, 3]
    assert parse({"retrain_seeds": 3, "ratios": RATIOS}).seeds_at(0.1) == 3


def test_admm_schedule_sets_what_the_admm_pruner_reads():
    p = parse({"schedule": {"kind": "admm", "rho": 0.5, "interval_steps": 4}, "baselines": [{"criterion": "random"}]})
    assert all((pc.admm_rho, pc.admm_interval_steps) == (0.5, 4) for _, pc, _ in p.runs())
    assert parse({}).prune.admm_rho is None


# ---------------------------------------------------------------- deprecated keys

@pytest.mark.parametrize("old,new,messages", [
    ({"stages": 3}, {"schedule": {"kind": "gradual", "stages": 3}},
     ["pruning.stages is deprecated: use pruning.schedule: {kind: gradual, stages: 3}"]),
    ({"progressive": True, "ratios": RATIOS}, {"schedule": {"kind": "progressive"}, "ratios": RATIOS},
     ["pruning.progressive is deprecated: use pruning.schedule: {kind: progressive}"]),
    ({"progressive": True, "round_seeds": 1, "ratios": RATIOS},
     {"schedule": {"kind": "progressive", "round_seeds": 1}, "ratios": RATIOS},
     ["pruning.progressive is deprecated: use pruning.schedule: {kind: progressive, round_seeds: 1}",
      "pruning.round_seeds is deprecated: use pruning.schedule: {kind: progressive, round_seeds: 1}"]),
    ({"prune": {"criterion": "l2", "admm_rho": 0.01}},
     {"prune": {"criterion": "l2"}, "schedule": {"kind": "admm", "rho": 0.01}},
     ["pruning.prune.admm_rho is deprecated: use pruning.schedule: {kind: admm, rho: 0.01, interval_steps: 10}"]),
    ({"prune": {"admm_rho": 0.01, "admm_interval_steps": 2}},
     {"schedule": {"kind": "admm", "rho": 0.01, "interval_steps": 2}},
     ["pruning.prune.admm_rho is deprecated: use pruning.schedule: {kind: admm, rho: 0.01, interval_steps: 2}",
      "pruning.prune.admm_interval_steps is deprecated: use pruning.schedule: "
      "{kind: admm, rho: 0.01, interval_steps: 2}"]),
])
def test_deprecated_keys_translate_to_the_schedule_and_warn(old, new, messages):
    with pytest.warns(DeprecationWarning) as caught:
        translated = from_dict(PruneStudyConfig, old)
    got = [str(w.message) for w in caught if w.category is DeprecationWarning]
    assert got == messages
    assert translated.schedule == parse(new).schedule
    assert to_dict(translated) == to_dict(parse(new))  # the same dump: either spelling resumes the other


def test_the_match_of_one_deprecation_message():
    with pytest.warns(DeprecationWarning, match=re.escape(
            "pruning.stages is deprecated: use pruning.schedule: {kind: gradual, stages: 3}")):
        from_dict(PruneStudyConfig, {"stages": 3})


@pytest.mark.parametrize("kind,extra", [("oneshot", {}), ("gradual", {"stages": 3}), ("progressive", {"round_seeds": 2}),
                                        ("admm", {"rho": 0.01, "interval_steps": 3})])
def test_the_dump_keeps_the_old_keys_so_older_study_folders_resume(kind, extra):
    """config.yaml of an older analogformer had no `schedule` but the old keys: the new dump
    writes them mirroring the schedule, so nothing an old config.yaml holds has changed."""
    new = to_dict(parse({"schedule": {"kind": kind, **extra}, "ratios": RATIOS}))
    old = {k: v for k, v in new.items() if k != "schedule"}
    assert config_changes(old, new) == []
    mirror = {"stages": new["stages"], "progressive": new["progressive"], "round_seeds": new["round_seeds"],
              "admm_rho": new["prune"]["admm_rho"], "admm_interval_steps": new["prune"]["admm_interval_steps"]}
    assert mirror == {"oneshot": {"stages": 1, "progressive": False, "round_seeds": None, "admm_rho": None,
                                  "admm_interval_steps": 10},
                      "gradual": {"stages": 3, "progressive": False, "round_seeds": None, "admm_rho": None,
                                  "admm_interval_steps": 10},
                      "progressive": {"stages": 1, "progressive": True, "round_seeds": 2, "admm_rho": None,
                                      "admm_interval_steps": 10},
                      "admm": {"stages": 1, "progressive": False, "round_seeds": None, "admm_rho": 0.01,
                               "admm_interval_steps": 3}}[kind]


def test_old_key_conflicting_with_the_schedule_is_an_error_naming_both():
    with pytest.raises(ValueError, match=re.escape(
            "PruneStudyConfig.schedule: pruning.stages: 2 (deprecated) means pruning.schedule: "
            "{kind: gradual, stages: 2}, which conflicts with pruning.schedule: {kind: progressive}; "
            "remove pruning.stages")):
        from_dict(PruneStudyConfig, {"stages": 2, "schedule": {"kind": "progressive"}, "ratios": RATIOS})
    with pytest.raises(ValueError, match=re.escape(
            "PruneStudyConfig.schedule: pruning.stages: 2 (gradual pruning) and pruning.prune.admm_rho: 0.01 "
            "(ADMM pruning) choose two schedules; keep one: pruning.schedule: {kind: gradual, stages: 2} or "
            "pruning.schedule: {kind: admm, rho: 0.01, interval_steps: 10}")):
        from_dict(PruneStudyConfig, {"stages": 2, "prune": {"criterion": "l1", "admm_rho": 0.01}})
    with pytest.raises(ValueError, match=re.escape("PruneStudyConfig.round_seeds: sets the retraining seeds of "
                                                   "the rounds before the last and needs progressive: true")):
        from_dict(PruneStudyConfig, {"round_seeds": 1, "ratios": RATIOS})
    with pytest.raises(ValueError, match=re.escape("PruneStudyConfig.baselines: admm_rho belongs to the schedule "
                                                   "every method shares")):
        parse({"baselines": [{"criterion": "random", "admm_rho": 0.1}]})


# ---------------------------------------------------------------- errors

def test_unknown_or_malformed_schedule_lists_the_registered_kinds():
    with pytest.raises(ValueError, match=re.escape(
            "pruning.schedule.kind: unknown schedule 'cyclic'; registered: "
            "['oneshot', 'gradual', 'progressive', 'admm']")):
        parse({"schedule": {"kind": "cyclic"}})
    with pytest.raises(ValueError, match=re.escape("pruning.schedule: must be a mapping with a `kind`, one of "
                                                   "['oneshot', 'gradual', 'progressive', 'admm']")):
        parse({"schedule": {"stages": 3}})
    with pytest.raises(ValueError, match=re.escape("pruning.schedule: unknown key(s) ['round_seeds']; "
                                                   "allowed: ['kind', 'stages']")):
        parse({"schedule": {"kind": "gradual", "round_seeds": 1}})
    for bad, msg in (({"kind": "gradual", "stages": 1}, "GradualSchedule.stages: must be ≥ 2"),
                     ({"kind": "admm", "rho": 0}, "ADMMSchedule.rho: must be > 0"),
                     ({"kind": "progressive", "round_seeds": 0}, "ProgressiveSchedule.round_seeds: must be > 0")):
        with pytest.raises(ValueError, match=re.escape(msg)):
            parse({"schedule": bad, "ratios": RATIOS})
    with pytest.raises(ValueError, match="kind 'progressive' prunes in rounds across `ratios`: give at least two"):
        parse({"schedule": "progressive"})


@pytest.mark.parametrize("data,message", [
    ({"schedule": {"kind": "gradual", "stages": 2}, "prune": {"reconstruct": True}},
     "PruneStudyConfig.prune.reconstruct: true is not supported by schedule 'gradual' (gradual pruning): the "
     "least-squares refit runs once, right after pruning, on masks that stay fixed during the retraining; "
     "schedules that support it: ['oneshot', 'progressive', 'admm']"),
    ({"schedule": {"kind": "gradual", "stages": 2}, "baselines": [{"criterion": "l1"}, {"reconstruct": True}]},
     "PruneStudyConfig.baselines[1].reconstruct: true is not supported by schedule 'gradual'"),
    ({"schedule": {"kind": "admm", "rho": 0.01}, "retrain_seeds": 2},
     "PruneStudyConfig.retrain_seeds: 2 is not supported by schedule 'admm' (ADMM pruning): several retraining "
     "seeds all start from one pruned state, fixed by one-shot pruning before the retraining; "
     "schedules that support it: ['oneshot', 'progressive']"),
    ({"schedule": {"kind": "gradual", "stages": 2}, "retrain_seeds": 2},
     "PruneStudyConfig.retrain_seeds: 2 is not supported by schedule 'gradual' (gradual pruning)"),
])
def test_unsupported_options_fail_with_the_one_generic_message(data, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse(data)


# ---------------------------------------------------------------- criteria registry

def test_criteria_registry():
    assert CRITERIA == tuple(CRITERION_REGISTRY) == ("mac", "obs", "magnitude", "l1", "l2", "activation", "random")
    assert {n for n, c in CRITERION_REGISTRY.items() if c.needs_calibration} == {"mac", "obs", "activation"}
    assert [n for n, c in CRITERION_REGISTRY.items() if c.needs_gram] == ["obs"]
    assert PruneConfig(criterion="activation").needs_calibration and not PruneConfig(criterion="l1").needs_calibration
    assert criterion("l2").structures == ("rows", "columns", "blocks")
    with pytest.raises(ValueError, match=re.escape("unknown criterion 'lottery'; registered: ['mac', 'obs'")):
        criterion("lottery")
    with pytest.raises(ValueError, match=re.escape("PruneConfig.criterion: must be one of ['mac', 'obs', 'magnitude', "
                                                   "'l1', 'l2', 'activation', 'random'], got 'lottery'")):
        PruneConfig(criterion="lottery")


@pytest.mark.parametrize("name", CRITERIA)
def test_the_registry_rejects_a_structure_it_does_not_allow_naming_the_allowed_ones(name):
    allowed = list(CRITERION_REGISTRY[name].structures)
    for structure in ("rows", "columns", "irregular", "blocks"):
        if structure in allowed:
            continue
        with pytest.raises(ValueError, match=re.escape(
                f"PruneConfig.structure: criterion {name!r} supports structures {allowed}, got {structure!r}")):
            PruneConfig(criterion=name, structure=structure, block_shape=(2, 2))


def test_registered_scores_dispatch_by_criterion():
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    assert torch.equal(unit_scores(w, PruneConfig(criterion="l1")), torch.tensor([1.0, 5.0, 1.5], dtype=torch.float64))
    assert torch.equal(unit_scores(w, PruneConfig(criterion="magnitude")), unit_scores(w, PruneConfig(criterion="l1")))
    assert torch.allclose(unit_scores(w, PruneConfig(criterion="l2", structure="columns")),
                          torch.tensor([5.25, 10.0], dtype=torch.float64).sqrt())
    assert unit_scores(w, PruneConfig(criterion="random", structure="irregular", seed=3)).shape == (2, 3)
    with pytest.raises(ValueError, match="criterion 'activation' needs calibration statistics"):
        unit_scores(w, PruneConfig(criterion="activation"))
