"""Every bad input of the CLI is one clear error on stderr and an exit code, never a
traceback: one test per defect of the reliability issue (tiny BERT, tiny GLUE folder).

Each test calls `analogformer.cli.main` (which must *return* the exit code, not raise) and
checks that the message names what is wrong and how to fix it. The re-run after a failed
first run (defect 9) is tested in tests/pipeline/test_study.py
(test_a_failed_first_run_does_not_lock_the_folder_against_the_corrected_config)."""
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from analogformer.cli import main
from study_fixtures import _config, _records, setup  # noqa: F401 (fixture)

# the smallest study that trains and evaluates: one task, the digital model, one epoch
TINY = dict(tasks=["sst2"], conditions=["digital"],
            finetune={"epochs": 1, "batch_size": 16, "learning_rate": 5e-3},
            sweep={"times_seconds": [1], "repeats": 1, "calibration_batches": 1, "eval_batch_size": 8})


def _study(cfg_path, out, *extra):
    return main(["study", str(cfg_path), "--out", str(out), "--no-progress", *extra])


def _error(capsys, command="study"):
    """The stderr of a failed command: one "analogformer CMD: error: ..." line, no traceback."""
    err = capsys.readouterr().err
    assert f"analogformer {command}: error: " in err, err
    assert "Traceback" not in err, err
    return err


def _glue_copy(glue, dest, train_bytes):
    """A GLUE folder like `glue` whose SST-2/train.tsv is `train_bytes`."""
    shutil.copytree(glue / "SST-2", dest / "SST-2")
    (dest / "SST-2" / "train.tsv").write_bytes(train_bytes)
    return dest


# ------------------------------------------------------------------ 1. the model cannot be loaded

def test_nonexistent_model_path_names_the_path_and_the_fix(setup, tmp_path, capsys):
    root, glue, _ = setup
    cfg = _config(root, glue, "/no/such/dir", **TINY)
    assert _study(cfg, tmp_path / "out") == 2
    err = _error(capsys)
    assert "/no/such/dir" in err
    assert "config.json" in err and "hub" in err  # what to pass instead


def test_hub_name_while_offline_names_the_model_and_the_fix(setup, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants
    root, glue, _ = setup
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    cfg = _config(root, glue, "someone/not-cached-model", **TINY)
    t = time.time()
    assert _study(cfg, tmp_path / "out") == 2
    assert time.time() - t < 30  # offline: no network retries
    err = _error(capsys)
    assert "someone/not-cached-model" in err
    assert "hub" in err and "folder" in err  # a local folder, or the hub reachable


# ------------------------------------------------------------------ 2. a broken reused checkpoint

def test_truncated_checkpoint_is_named_with_the_fix_and_re_made_once_deleted(setup, tmp_path, capsys):
    root, glue, model_dir = setup
    cfg, out = _config(root, glue, model_dir, **TINY), tmp_path / "out"
    assert _study(cfg, out) == 0
    ckpt = out / "checkpoints" / "sst2" / "digital"
    weights = ckpt / "model.safetensors"
    full = weights.read_bytes()
    for broken in (full[: len(full) // 2], b""):
        weights.write_bytes(broken)
        capsys.readouterr()
        assert _study(cfg, out) == 2, f"{len(broken)} bytes"
        err = _error(capsys)
        assert str(ckpt) in err, err
        assert "delete" in err and "re-make" in err, err
    shutil.rmtree(ckpt)
    assert _study(cfg, out) == 0
    assert len(full) == weights.stat().st_size
    assert len(_records(out)) == 1


# ------------------------------------------------------------------ 3. bad YAML / bad values

def test_override_that_is_not_yaml_names_the_override_and_how_to_quote(setup, tmp_path, capsys):
    root, glue, model_dir = setup
    cfg = _config(root, glue, model_dir, **TINY)
    assert _study(cfg, tmp_path / "out", "--set", "tasks=[sst2") == 2
    err = _error(capsys)
    assert "tasks=[sst2" in err and "not valid YAML" in err
    assert "--set 'tasks=[sst2, mrpc]'" in err  # the fix: quote the list whole
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_yaml_task_that_is_not_a_name_names_the_key_and_the_registered_tasks(setup, tmp_path, capsys):
    root, glue, model_dir = setup
    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(_config(root, glue, model_dir, **TINY).read_text()),
                                   "tasks": [1]}))
    assert _study(cfg, tmp_path / "out") == 2
    err = _error(capsys)
    assert "tasks" in err and "1" in err
    assert "registered tasks" in err and "sst2" in err  # the allowed names


# ------------------------------------------------------------------ 4. an unwritable --out

def test_unwritable_out_folder_names_the_folder_and_the_fix(setup, tmp_path, capsys):
    root, glue, model_dir = setup
    cfg = _config(root, glue, model_dir, **TINY)
    (tmp_path / "a_file").write_text("not a folder\n")
    out = tmp_path / "a_file" / "sub"  # works as root too, unlike chmod
    assert _study(cfg, out) == 2
    err = _error(capsys)
    assert str(out) in err
    assert "writable --out" in err


# ------------------------------------------------------------------ 5. map on a broken config.json

@pytest.mark.parametrize("which", ["folder", "file"])
def test_map_on_a_broken_config_json_names_it_and_the_fix(tmp_path, capsys, which):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bert", "hidden_size": 32,')  # cut short
    arg = model if which == "folder" else model / "config.json"
    assert main(["map", str(arg)]) == 2
    err = _error(capsys, "map")
    assert "cannot read a model config" in err and str(model) in err
    assert "valid config.json" in err and "bert-base" in err  # the fix: a valid file or a preset


# ------------------------------------------------------------------ 6. GLUE TSV files

def test_non_utf8_train_tsv_names_the_file_line_and_the_fix(setup, tmp_path, capsys):
    root, glue, model_dir = setup
    data = _glue_copy(glue, tmp_path / "glue", b"sentence\tlabel\na good movie\t1\nun caf\xe9 bad\t0\n")
    cfg = _config(root, data, model_dir, **TINY)
    assert _study(cfg, tmp_path / "out") == 2
    err = _error(capsys)
    assert str(data / "SST-2" / "train.tsv") in err and "line 3" in err
    assert "not UTF-8" in err and "re-encode" in err


def test_header_only_train_tsv_names_the_file(setup, tmp_path, capsys):
    root, glue, model_dir = setup
    data = _glue_copy(glue, tmp_path / "glue", b"sentence\tlabel\n")
    cfg = _config(root, data, model_dir, **TINY)
    assert _study(cfg, tmp_path / "out") == 2
    err = _error(capsys)
    assert str(data / "SST-2" / "train.tsv") in err
    assert "no examples" in err and "only a header" in err


def test_trailing_blank_lines_in_a_tsv_are_accepted(setup, tmp_path):
    """Through the task's dataset loading, the code path of a study (TaskData -> Task.dataset)."""
    from transformers import AutoTokenizer

    from analogformer.study.config import DataConfig
    from analogformer.tasks import find_task
    _, glue, model_dir = setup
    rows = (glue / "SST-2" / "train.tsv").read_bytes()
    n = len(rows.decode().splitlines()) - 1  # below the header
    data = _glue_copy(glue, tmp_path / "glue", rows + b"\n\r\n \n")  # blank, CRLF-blank, spaces
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    enc = find_task("sst2").task.dataset("train", tok, DataConfig(glue_dir=str(data)), None, 0)
    assert len(enc) == n


# ------------------------------------------------------------------ 7. two processes, one folder

def test_second_run_on_a_locked_folder_names_the_holder_and_the_fix(setup, tmp_path, capsys):
    from analogformer.study.folder import StudyFolder
    root, glue, model_dir = setup
    cfg, out = _config(root, glue, model_dir, **TINY), tmp_path / "out"
    with StudyFolder(out):
        assert _study(cfg, out) == 2
    err = _error(capsys)
    assert str(out) in err and "in use by another analogformer process" in err
    assert f"pid {os.getpid()}" in err
    assert "wait for it to finish" in err and "another --out" in err
    assert not (out / "results.jsonl").exists()


# ------------------------------------------------------------------ 8. CLI polish

def test_version(capsys):
    from analogformer import __version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"analogformer {__version__}"


def test_help_lists_condition_names_and_tile_defaults_where_the_options_are(capsys, monkeypatch):
    from analogformer.study.sweep import CONDITIONS
    monkeypatch.setenv("COLUMNS", "300")  # argparse wraps at hyphens: "analog-\nnocomp" at 80 columns
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--conditions" in out and all(c in out for c in CONDITIONS)
    with pytest.raises(SystemExit) as e:
        main(["map", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--tile-rows" in out and "(default: 512)" in out


def test_study_help_lists_the_condition_names_and_the_tile_rows_default(capsys):
    from analogformer.study.sweep import CONDITIONS
    with pytest.raises(SystemExit) as e:
        main(["study", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert all(c in out for c in CONDITIONS), out
    assert "tile" in out and "512" in out, out


def test_a_config_error_is_reported_before_transformers_is_imported():
    code = textwrap.dedent("""
        import sys, time
        t = time.time()
        from analogformer.cli import main
        rc = main(["study", "configs/quickstart.yaml", "--set", "sweep.repeats=0", "--out", "never-made"])
        print(rc, "transformers" in sys.modules, round(time.time() - t, 1))
    """)
    t = time.time()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=os.path.join(os.path.dirname(__file__), "..", ".."))
    seconds = time.time() - t
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "analogformer study: error: " in proc.stderr and "repeats" in proc.stderr, proc.stderr
    rc, imported, _ = proc.stdout.split()
    assert rc == "2"
    print(f"subprocess: {seconds:.1f} s, transformers imported: {imported}")
    assert imported == "False", f"transformers imported before the config error ({seconds:.1f} s)"


def test_a_failed_first_evaluate_can_be_corrected(setup, tmp_path, capsys):
    """`evaluate` copies the given checkpoint into the folder; that copy is not a result, so a
    first run that failed (a wrong --glue-dir) does not lock the folder against the fix."""
    root, glue, model_dir = setup
    out = tmp_path / "eval"
    args = ["evaluate", str(model_dir), "--task", "sst2", "--out", str(out), "--conditions", "digital",
            "--no-progress", "--set", "sweep.times_seconds=[1]", "--set", "sweep.repeats=1"]
    assert main(args + ["--glue-dir", str(tmp_path / "no-glue")]) == 2
    assert "no-glue" in capsys.readouterr().err
    assert main(args + ["--glue-dir", str(glue)]) == 0
    assert (out / "results.jsonl").read_text().count("\n") == 1
