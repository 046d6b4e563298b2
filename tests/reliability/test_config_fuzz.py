"""Property-based: every study config and every `--set` override either validates or raises
one clear ValueError naming the key — never another exception type (a traceback)."""
import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analogformer.config import to_dict
from analogformer.study.config import StudyConfig, load_study_config

_DEFAULTS = to_dict(StudyConfig(hwa={}, pruning={}))


def _paths(d, prefix=""):
    for k, v in d.items():
        path = f"{prefix}.{k}" if prefix else k
        yield path
        if isinstance(v, dict) and v:
            yield from _paths(v, path)


KEYS = sorted(_paths(_DEFAULTS))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 6, 10 ** 9),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)
keys = st.one_of(st.sampled_from(KEYS), st.text(alphabet="abcdefghijklmnopqrstuvwxyz._", min_size=1, max_size=20))


def _clear(err: ValueError, keys) -> bool:
    """The message names the key (a path component of it) or the offending override."""
    msg = str(err)
    parts = [part.strip() for k in keys for part in re.split(r"[.]", str(k)) if part.strip()]
    return any(part in msg or repr(part)[1:-1] in msg for part in parts)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(keys, values), min_size=1, max_size=3))
def test_overrides_validate_or_name_the_key(overrides):
    try:
        load_study_config(None, [("tasks", ["sst2"])] + overrides)
    except ValueError as err:
        assert _clear(err, [k for k, _ in overrides] + ["tasks"]), str(err)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_set_text_validates_or_names_itself(text):
    try:
        load_study_config(None, ["tasks=[sst2]", text])
    except ValueError as err:
        assert "--set" in str(err) or _clear(err, [text.partition("=")[0]]), str(err)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["tasks", "conditions", "sweep", "seed", "best_of", "data", "model"]),
                       values, max_size=4))
def test_any_yaml_file_validates_or_names_the_key(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load_study_config(str(path))
    except ValueError as err:
        assert _clear(err, list(data) + ["tasks"]) or str(path) in str(err), str(err)


@pytest.mark.parametrize("text, message", [
    ("tasks=[sst2", "the value is not valid YAML"),
    ("=3", "the key must be a dotted path"),
    ("sweep..repeats=3", "the key must be a dotted path"),
    ("nothing", "expected KEY=VALUE"),
])
def test_bad_set_texts_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=re.escape(f"--set {text!r}: {message}")):
        load_study_config(None, ["tasks=[sst2]", text])


def test_an_empty_yaml_runs_nothing_by_default(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ValueError, match=r"empty.yaml names no `tasks`; a study says what it runs"):
        load_study_config(str(path))


@pytest.mark.parametrize("over, message", [
    ({"conditions": ["digital", "analog", "analog"]}, "conditions: lists ['analog'] more than once"),
    ({"tasks": ["sst2", "SST-2"]}, "tasks: 'SST-2' evaluates 'sst2' (sst2 dev), which 'sst2' evaluates already"),
    ({"tasks": ["mnli", "mnli-m"]}, "tasks: 'mnli-m' evaluates"),
    ({"sweep": {"times_seconds": [1, 3600, 1.0]}}, "times_seconds: lists [1.0] more than once"),
    ({"tasks": [1]}, "tasks: a task is a name, got int 1; registered tasks: ["),
])
def test_duplicates_in_lists_are_refused(over, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_study_config(None, [("tasks", ["sst2"])] + list(over.items()))
