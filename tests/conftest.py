"""Shared fixtures: the shared data root and models, and tiny random models of every family.

Tiny models check shapes and plumbing; quality claims use the real model in ../shared/models.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

# No model hub is reachable from the test machines: without this, every check of a missing local
# file waits ~23 s in huggingface_hub's retries before the hub fallback gives up.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PRUNEKIT_SHARED", REPO.parent / "shared"))
DATA_ROOT = SHARED / "data"
MODELS = SHARED / "models"
REAL_MODEL = MODELS / "smollm2-135m-instruct"

TINY_VOCAB = 49152  # the real tokenizer's vocabulary, so tiny models can read real text


def tiny_config(family: str):
    """A 2-layer random config of ``family`` with hidden width 64 (16 inputs per 2:4... groups)."""
    import transformers as tf

    common = dict(vocab_size=TINY_VOCAB, tie_word_embeddings=False)
    if family in ("llama", "mistral", "qwen2"):
        cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config}[family]
        return cls(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=256, **common)
    if family == "opt":
        return tf.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=256, word_embed_proj_dim=64, **common)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                max_position_embeddings=256, **common)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **common)
    if family == "gpt_neo":
        return tf.GPTNeoConfig(hidden_size=64, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
                               window_size=16, max_position_embeddings=256, intermediate_size=128, **common)
    if family == "mamba":  # a state-space model: evaluated, never pruned
        return tf.MambaConfig(hidden_size=64, num_hidden_layers=2, state_size=8, **common)
    if family in ZOO_FAMILIES:  # the architecture zoo's shapes (models/tiny.py), two layers
        from prunekit.models.tiny import tiny_config as zoo_config

        return zoo_config(family, num_hidden_layers=2, **common)
    raise ValueError(family)


# families built with the architecture zoo's config shrink; bitnet has no family adapter (the
# structural fallback serves it)
ZOO_FAMILIES = ("stablelm", "helium", "starcoder2", "phi", "phi3", "glm4", "gptj", "gpt_bigcode", "bitnet")
UNADAPTED_FAMILIES = ("bitnet",)
TINY_FAMILIES = ("llama", "mistral", "qwen2", "opt", "gpt_neox", "gpt2", "gpt_neo")


def _missing_shared(what: str) -> None:
    """The shared assets are part of the CI contract: under CI a missing one fails the run, and a
    local run without them skips (pytest's -ra summary lists each skip and its reason)."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI runs with ../shared beside the clone)", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not DATA_ROOT.is_dir():
        _missing_shared(f"shared data root not found at {DATA_ROOT}")
    return DATA_ROOT


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    if not REAL_MODEL.is_dir():
        _missing_shared(f"shared model not found at {REAL_MODEL}")
    return REAL_MODEL


@pytest.fixture(scope="session")
def real_float_dir(real_model_dir) -> Path:
    """The shared GGUF converted once to a float HF directory (prunekit's own cache)."""
    from prunekit.models.loading import _find_gguf, convert_gguf

    return convert_gguf(real_model_dir, _find_gguf(real_model_dir))


@pytest.fixture(scope="session")
def tokenizer(real_float_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_float_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """``tiny_model_dir(family)`` -> a saved random model of that family with the real tokenizer."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    made: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in made:
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(tiny_config(family))
            path = tmp_path_factory.mktemp(f"tiny-{family}")
            # quiet: the first test to ask for a family may be one that asserts its stderr is one line
            hf_logging.disable_progress_bar()
            try:
                model.save_pretrained(path)
            finally:
                hf_logging.enable_progress_bar()
            tokenizer.save_pretrained(path)
            made[family] = path
        return made[family]

    return make


@pytest.fixture(scope="session")
def real_lm(real_model_dir):
    """The real shared model, loaded once; tests that change it take ``fresh_real_lm``."""
    import prunekit

    return prunekit.load(real_model_dir)


def fresh_copy(lm):
    """A private deep copy of a loaded model that a test may prune."""
    from prunekit.models.adapters import adapter_for
    from prunekit.models.loading import LoadedModel

    model = copy.deepcopy(lm.model)
    return LoadedModel(model, lm.tokenizer, adapter_for(model), dict(lm.source))


@pytest.fixture
def fresh_real_lm(real_lm):
    """A private deep copy of the real model that a test may prune."""
    return fresh_copy(real_lm)
