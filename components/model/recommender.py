"""The generative recommender bundle: LM + tokenizer + identifier-token table.

The LM is causal (the tiny profile's Llama, or a pretrained model) or, with
`model.architecture: t5`, a small T5 encoder-decoder: the prompt goes to the encoder and the
response (an identifier, or a title) is the decoder's target.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from components.config import ModelConfig
from components.io import atomic_dir
from components.model import attention
from components.model.decoding import CodeLevels, is_encoder_decoder
from components.model.head import ItemRows, set_output_size, trains_item_rows
from components.model.prompts import PromptBuilder, template_texts
from components.model.text_tokenizer import fit_text_tokenizer
from components.tokenizers import code_token

META_FILE = "siit_model.json"


def pick_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class GenerativeRecommender:
    model: torch.nn.Module
    tokenizer: object
    codebook_sizes: tuple[int, ...]
    profile: str = "tiny"
    architecture: str = "llama"  # the tiny profile's: llama (decoder-only) or t5
    code_softmax: bool = False  # model.code_softmax: identifier tokens softmax within their level
    # model.item_inputs: vocabulary rows item_input_base + i are item i's own input token (the
    # items in token-map order); 0 items: histories read as identifiers
    item_inputs: int = 0
    item_input_base: int = 0
    # model.item_inputs_in_head: which softmax covers the item rows: true both, "training"
    # the training loss only, false neither (`head.OutputHead` stops logits at item_input_base)
    item_inputs_in_head: bool | str = True
    # model.text_token: vocabulary rows text_row_base + i are item i's text row, read in its
    # item2id prompts only, fixed while training (`text_rows`); 0 items: none
    text_rows: int = 0
    text_row_base: int = 0

    def __post_init__(self) -> None:
        if self.architecture == "t5":  # gradients the same on any number of threads
            attention.use_on(self.model)
        tokens = [
            [code_token(lvl, c) for c in range(k)] for lvl, k in enumerate(self.codebook_sizes)
        ]
        ids = [self.tokenizer.convert_tokens_to_ids(t) for t in tokens]
        unk = self.tokenizer.unk_token_id
        if any(i is None or i == unk for level in ids for i in level):
            raise ValueError("identifier tokens missing from the tokenizer vocabulary")
        # code_token_ids[level][code] -> vocabulary id
        self.code_token_ids = [torch.tensor(level, dtype=torch.long) for level in ids]
        # what training and decoding read off the model (`decoding.code_levels`)
        levels = None
        if self.code_softmax:
            vocab = self.model.get_output_embeddings().weight.shape[0]
            levels = CodeLevels.build(self.code_token_ids, vocab)
        self.model.siit_code_levels = levels
        if self.item_inputs_in_head not in (True, False, "training"):
            raise ValueError(
                f"item_inputs_in_head must be true, false or 'training', not "
                f"{self.item_inputs_in_head!r}"
            )
        self.model.siit_item_rows = (
            ItemRows(self.item_input_base, self.item_inputs, self.levels)
            if self.item_inputs
            else None
        )
        self.model.siit_text_rows = (
            slice(self.text_row_base, self.text_row_base + self.text_rows)
            if self.text_rows
            else None
        )
        if self.text_rows:  # never a target: the head stops before them
            if self.item_inputs or self.profile != "tiny" or self.architecture != "llama":
                raise ValueError(
                    "text rows (model.text_token) need the tiny Llama without item input rows"
                )
            set_output_size(self.model, self.text_row_base, self.text_row_base)
        elif self.profile == "tiny":  # the pretrained profile has no item rows: its head as is
            if not self.item_inputs or self.item_inputs_in_head is True:
                set_output_size(self.model, None)
            else:
                training = (
                    None if trains_item_rows(self.item_inputs_in_head) else self.item_input_base
                )
                set_output_size(self.model, self.item_input_base, training)

    @property
    def levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def is_encoder_decoder(self) -> bool:
        return is_encoder_decoder(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def item_tokens(self, codes: np.ndarray) -> np.ndarray:
        """Vocabulary ids of every item's identifier: int [n_items, levels]."""
        codes = np.asarray(codes)
        if codes.shape[1] != self.levels:
            raise ValueError(f"token map has {codes.shape[1]} levels, the model {self.levels}")
        return np.stack(
            [self.code_token_ids[lvl].numpy()[codes[:, lvl]] for lvl in range(self.levels)], axis=1
        )

    def input_tokens(self, codes: np.ndarray) -> np.ndarray:
        """How every item reads inside a history: int [n_items, levels]. Its identifier, or
        with item inputs its leading codes and then its own token in place of the last code."""
        return self._read_as_inputs(self.item_tokens(codes))

    def _read_as_inputs(self, tokens: np.ndarray) -> np.ndarray:
        """Identifier tokens [n_items, levels] -> input tokens, in place (item inputs: own token last)."""
        if self.item_inputs:
            if len(tokens) != self.item_inputs:
                raise ValueError(
                    f"token map has {len(tokens)} items, the model's item inputs "
                    f"{self.item_inputs} (model.item_inputs: one input token per catalogue item)"
                )
            tokens[:, -1] = self.item_input_base + np.arange(self.item_inputs)
        return tokens

    def prompt_builder(
        self, codes: np.ndarray, max_text_tokens: int = 48, histories: bool = True
    ) -> PromptBuilder:
        """Prompts of every task for the token map `codes` (the catalogue's items). With
        `histories=False` prompts of the text tasks only, for any identifiers `codes` (e.g. a
        few new items' placeholders): such a builder refuses to write a history."""
        ids = self.item_tokens(codes)
        text_tokens = None
        if self.text_rows and histories:  # the catalogue's items: each its own text row
            if len(ids) != self.text_rows:
                raise ValueError(
                    f"token map has {len(ids)} items, the model's text rows {self.text_rows} "
                    "(model.text_token: one text row per catalogue item)"
                )
            text_tokens = self.text_row_base + np.arange(self.text_rows)
        return PromptBuilder(
            self.tokenizer,
            ids,
            max_text_tokens=max_text_tokens,
            input_tokens=self._read_as_inputs(ids.copy())
            if self.item_inputs and histories
            else None,
            histories=histories,
            text_tokens=text_tokens,
        )

    def init_item_rows(self, features: np.ndarray) -> None:
        """Start item i's own row (`model.item_inputs`: its input token, tied to its output row)
        from `features[i]` (`model.item_rows_init: text`: the item's text embedding).

        The rows become the features' principal components (as many as the width allows, the
        rest of each row stays as initialised), each component's sign fixed by its largest
        entry, scaled so that their spread is the random rows' it replaces: the model's
        optimisation starts at its usual scale, with items of similar text close together.
        """
        if not self.item_inputs:
            raise ValueError("init_item_rows: the model has no item rows (model.item_inputs)")
        weight = self.model.get_input_embeddings().weight
        rows = weight.data[self.item_input_base : self.item_input_base + self.item_inputs]
        comps = _components(features, self.item_inputs, rows.shape[1], "init_item_rows")
        if comps is None:
            return  # identical features: nothing to tell the items apart, rows stay random
        k = comps.shape[1]
        scale = rows[:, :k].double().std() / comps.std()
        rows[:, :k] = (comps * scale).to(rows.dtype)

    def init_text_rows(self, features: np.ndarray) -> None:
        """Set item i's text row (`model.text_token`) to `features[i]` (its text embedding) in
        the features' principal components, scaled as `init_item_rows` scales them; the rest
        of each row is zero, so the row is the text alone. The `Trainer` keeps the rows as
        they are here."""
        if not self.text_rows:
            raise ValueError("init_text_rows: the model has no text rows (model.text_token)")
        weight = self.model.get_input_embeddings().weight
        rows = weight.data[self.text_row_base : self.text_row_base + self.text_rows]
        comps = _components(features, self.text_rows, rows.shape[1], "init_text_rows")
        spread = rows.double().std()
        rows.zero_()
        if comps is None:
            return  # identical features: nothing to tell the items apart
        k = comps.shape[1]
        rows[:, :k] = (comps * (spread / comps.std())).to(rows.dtype)

    def init_code_rows(self, features: np.ndarray, codes: np.ndarray) -> None:
        """Start every identifier token's row (input and, tied, output) from the text of the
        items that hold it (`model.code_rows_init: text`), as residual quantisation reads codes.

        In the features' principal components (`init_item_rows`), a first-level code's row is
        the mean of its items; a level-l code's the mean, over its items, of what is left of
        each item once the mean of the items sharing its first l codes is taken away. Each
        level is scaled to the spread of its random rows; codes no item holds stay random.
        """
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != self.levels:
            raise ValueError(
                f"init_code_rows: codes {codes.shape} must have {self.levels} levels per item"
            )
        weight = self.model.get_input_embeddings().weight
        comps = _components(features, len(codes), weight.shape[1], "init_code_rows")
        if comps is None:
            return
        k, floor = comps.shape[1], comps.std() * 1e-9
        left = comps.clone()  # what the item's first l codes do not say yet
        for lvl in range(self.levels):
            if lvl:  # items that share their first lvl codes: their mean is said
                group = np.unique(codes[:, :lvl], axis=0, return_inverse=True)[1].reshape(-1)
                left = left - _group_means(left, group)[group]
            held, which = np.unique(codes[:, lvl], return_inverse=True)
            rows = _group_means(left, which)  # [len(held), k]
            ids = self.code_token_ids[lvl][torch.as_tensor(held)]
            current = weight.data[ids, :k]
            spread = rows.std()
            if not spread > floor:
                continue  # every code's items average alike: nothing to tell them apart
            weight.data[ids, :k] = (rows * (current.double().std() / spread)).to(weight.dtype)

    # construction -------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        cfg: ModelConfig,
        codebook_sizes: tuple[int, ...],
        texts: list[str],
        seed: int,
        n_items: int | None = None,
    ) -> GenerativeRecommender:
        """A new model whose text tokenizer is fitted on `texts`. `n_items`: the catalogue's
        size, for `model.item_inputs` (tiny profile; the pretrained profile reads histories as
        identifiers); None: one item per text."""
        n_items = len(texts) if n_items is None else n_items
        if cfg.profile == "tiny":
            if (cfg.item_inputs or cfg.text_token) and n_items <= 0:
                what = "model.item_inputs" if cfg.item_inputs else "model.text_token"
                raise ValueError(f"{what} needs at least one catalogue item (n_items)")
            rec = cls._create_tiny(
                cfg,
                codebook_sizes,
                texts,
                seed,
                n_items if cfg.item_inputs else 0,
                n_items if cfg.text_token else 0,
            )
        else:
            from components.model.pretrained import create_pretrained

            new_tokens = [
                code_token(lvl, c) for lvl, k in enumerate(codebook_sizes) for c in range(k)
            ]
            model, tokenizer = create_pretrained(cfg, new_tokens, seed=seed)
            rec = cls(model, tokenizer, tuple(codebook_sizes), profile="pretrained")
        if cfg.code_softmax:
            rec = dataclasses.replace(rec, code_softmax=True)
        return rec

    @classmethod
    def _create_tiny(
        cls,
        cfg: ModelConfig,
        codebook_sizes: tuple[int, ...],
        texts: list[str],
        seed: int,
        item_inputs: int = 0,
        text_rows: int = 0,
    ) -> GenerativeRecommender:
        tokenizer = fit_text_tokenizer(list(texts) + template_texts(), cfg.text_vocab_size)
        tokenizer.add_tokens(
            [code_token(lvl, c) for lvl, k in enumerate(codebook_sizes) for c in range(k)]
        )
        # item input tokens are vocabulary rows past the tokenizer's: no text maps to them
        items = {
            "item_inputs": item_inputs,
            "item_input_base": len(tokenizer),
            "item_inputs_in_head": cfg.item_inputs_in_head,
            "text_rows": text_rows,
            "text_row_base": len(tokenizer) + item_inputs,
        }
        if cfg.architecture == "t5":
            return cls._create_t5(cfg, codebook_sizes, tokenizer, seed, items)
        config = LlamaConfig(
            vocab_size=len(tokenizer) + item_inputs + text_rows,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_heads,
            max_position_embeddings=1024,
            attention_dropout=cfg.dropout,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        return cls(model, tokenizer, tuple(codebook_sizes), profile="tiny", **items)

    @classmethod
    def _create_t5(
        cls, cfg: ModelConfig, codebook_sizes: tuple[int, ...], tokenizer, seed: int, items: dict
    ) -> GenerativeRecommender:
        """A T5 (v1.1 layout: gated-GELU feed-forward) of the same width, heads, feed-forward
        size and dropout as the Llama; `num_layers` encoder layers and as many decoder layers.
        The decoder starts from the padding token, as T5 does; embeddings and head are tied."""
        config = T5Config(
            vocab_size=len(tokenizer) + items["item_inputs"],
            d_model=cfg.hidden_size,
            d_kv=cfg.hidden_size // cfg.num_heads,
            d_ff=cfg.intermediate_size,
            num_layers=cfg.num_layers,
            num_decoder_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            dropout_rate=cfg.dropout,
            feed_forward_proj="gated-gelu",
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(config)
        return cls(
            model, tokenizer, tuple(codebook_sizes), profile="tiny", architecture="t5", **items
        )

    # persistence --------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """safetensors weights + tokenizer + identifier metadata, written atomically.

        The pretrained profile writes the resized base model and the adapter side by side.
        """
        with atomic_dir(Path(path)) as tmp:
            if self.profile == "pretrained":
                from components.model.pretrained import save_pretrained_model

                save_pretrained_model(self.model, tmp)
            else:
                self.model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            meta = {
                "codebook_sizes": list(self.codebook_sizes),
                "profile": self.profile,
                "architecture": self.architecture,
                "code_softmax": self.code_softmax,
                "item_inputs": self.item_inputs,
                "item_input_base": self.item_input_base,
                "item_inputs_in_head": self.item_inputs_in_head,
                "text_rows": self.text_rows,
                "text_row_base": self.text_row_base,
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, path: str | Path, device: torch.device | None = None) -> GenerativeRecommender:
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.exists():
            raise FileNotFoundError(
                f"{path}: not a saved generative recommender ({META_FILE} missing)"
            )
        meta = json.loads(meta_path.read_text())
        architecture = meta.get("architecture", "llama")  # saved before t5 existed: llama
        if meta["profile"] == "pretrained":
            from components.model.pretrained import load_pretrained

            model, tokenizer = load_pretrained(path)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            loader = T5ForConditionalGeneration if architecture == "t5" else AutoModelForCausalLM
            model = loader.from_pretrained(path, trust_remote_code=False)
        model.to(device or pick_device())
        return cls(
            model,
            tokenizer,
            tuple(meta["codebook_sizes"]),
            profile=meta["profile"],
            architecture=architecture,
            code_softmax=bool(meta.get("code_softmax", False)),  # saved before it: False
            item_inputs=int(meta.get("item_inputs", 0)),  # saved before them: none
            item_input_base=int(meta.get("item_input_base", 0)),
            # saved before the setting existed: the head covers them
            item_inputs_in_head=meta.get("item_inputs_in_head", True),
            text_rows=int(meta.get("text_rows", 0)),  # saved before them: none
            text_row_base=int(meta.get("text_row_base", 0)),
        )


def _components(features: np.ndarray, n: int, width: int, what: str) -> torch.Tensor | None:
    """The centred `features`' principal components, float64 [n, k] with k at most `width`
    and the features' rank, each sign fixed by its largest entry; None for identical rows."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    if x.ndim != 2 or len(x) != n:
        raise ValueError(f"{what}: features {tuple(x.shape)} must have one row per item ({n})")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what}: features hold NaN or infinite values")
    x = x - x.mean(dim=0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(width, int((s > s[0] * 1e-9).sum()))  # the features' rank, at most
    if k == 0:
        return None
    comps = x @ vh[:k].T
    return comps * torch.sign(comps.gather(0, comps.abs().argmax(dim=0, keepdim=True)))


def _group_means(x: torch.Tensor, group: np.ndarray) -> torch.Tensor:
    """Row g: the mean of the rows of `x` in group g (groups numbered 0..G-1, none empty)."""
    index = torch.as_tensor(np.asarray(group).reshape(-1), dtype=torch.long)
    sums = torch.zeros(int(index.max()) + 1, x.shape[1], dtype=x.dtype).index_add_(0, index, x)
    return sums / torch.bincount(index).unsqueeze(1).to(x.dtype)
