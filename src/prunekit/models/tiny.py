"""Tiny random models of any decoder-only type in the installed transformers, from its config class.

The architecture zoo (``benchmarks/zoo.py``) and the default test run build one per model type
to prove the plumbing — adapters, calibration walk, depth surgery, save and reload — on every
family transformers ships, without downloading weights. The overrides below shrink a config's
defaults to a few layers of width 64; a key is set only where the config class has it (and not
where it is a read-only property), so one table serves every family. Random weights say nothing
about quality: quality claims use the real model in ``../shared/models``.
"""

from __future__ import annotations

from typing import Any

import torch

TINY_VOCAB = 49152  # the shared SmolLM2 tokenizer's vocabulary, so tiny models read real calibration text
TINY_LAYERS = 3

# documented shrink of a config's defaults: 3 layers, width 64, 4 heads / 2 KV heads of 16, MoE 4 experts top-2
TINY_OVERRIDES: dict[str, Any] = {
    # depth
    "num_hidden_layers": TINY_LAYERS, "n_layer": TINY_LAYERS, "num_layers": TINY_LAYERS,
    # width
    "hidden_size": 64, "n_embd": 64, "d_model": 64, "intermediate_size": 128, "ffn_dim": 128, "n_inner": 128,
    "ffn_hidden_size": 128,
    # attention
    "num_attention_heads": 4, "n_head": 4, "num_key_value_heads": 2, "head_dim": 16, "rotary_dim": 8,
    # multi-head latent attention (DeepSeek-V2/V3, MiniCPM3, ...)
    "q_lora_rank": 32, "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    "qk_head_dim": 16, "index_head_dim": 16, "index_n_heads": 4, "index_topk": 8,  # DeepSeek sparse attention
    # mixture of experts
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
    "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64, "n_shared_experts": 1,
    "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,  # group-limited routing over the 4 experts
    # vocabulary and context
    "vocab_size": TINY_VOCAB, "unpadded_vocab_size": TINY_VOCAB,  # (Inkling-2 pads the embedding to it on save)
    "max_position_embeddings": 256, "n_positions": 256,
    # GPT-Neo's per-layer attention pattern must cover the layer count
    "attention_types": [[["global", "local", "global"], 1]],
}
# types whose config defaults do not shrink with the table above (each says why)
TYPE_OVERRIDES: dict[str, dict[str, Any]] = {
    # its default rope_parameters is empty, but the rotary embedding reads one entry per layer type
    "cohere_compass_text": {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 10000.0}}},
    # layer_types defaults to None (the model indexes it), and two leading dense layers of three leave one MoE layer
    "lfm2_moe": {"layer_types": ["conv", "full_attention", "conv"], "num_dense_layers": 1},
    # 15 KV-sharing layers and a 262k-row per-layer embedding do not fit three layers of width 64
    "gemma3n_text": {"num_kv_shared_layers": 0, "vocab_size_per_layer_input": TINY_VOCAB,
                     "hidden_size_per_layer_input": 16, "layer_types": ["sliding_attention", "sliding_attention",
                                                                        "full_attention"]},
    # a 262k-row per-layer embedding 256 wide per layer does not fit width 64 either
    "gemma4_text": {"vocab_size_per_layer_input": TINY_VOCAB, "hidden_size_per_layer_input": 16},
    "gemma4_unified_text": {"vocab_size_per_layer_input": TINY_VOCAB, "hidden_size_per_layer_input": 16},
    # its default mlp_layer_types makes every one of three layers dense: no MoE layer to test
    "beam": {"mlp_layer_types": ["dense", "sparse", "sparse"]},
    # dense by default (is_moe false): its CDMoE (product-key experts as embedding rows) is the part to test, on a
    # 4 x 4 key grid (4 experts would be a 2 x 2 grid, whose smallest cut leaves 1 expert, fewer than top-2)
    "doge": {"is_moe": True, "num_experts": 16},
    # qkv_proj is split into mp_num = 4 model-parallel blocks that keep equal head counts: 4 heads would be one per
    # block, so removing half of them could only remove all; 8 heads of width 8 leave two per block
    "codegen": {"n_head": 8, "num_attention_heads": 8},
    # the shared transformer block is tied across its layers: at least two of the three must hold it
    "zamba": {"layers_block_type": ["hybrid", "linear_attention", "hybrid"]},
}
SPECIAL_TOKEN_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id")


def causal_lm_types() -> list[str]:
    """Every model type in the installed transformers' causal-LM mapping, sorted."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _settable(config: Any, key: str) -> bool:
    try:
        present = hasattr(config, key)
    except Exception:  # Gemma-4 raises on reading an attribute that varies by layer (head_dim): not a global key
        return False
    return present and not isinstance(getattr(type(config), key, None), property)


def tiny_config(model_type: str, **extra: Any):
    """A tiny config of ``model_type`` (see :data:`TINY_OVERRIDES`; ``extra`` wins over them)."""
    from transformers import AutoConfig

    defaults = AutoConfig.for_model(model_type)
    overrides = {key: value for key, value in TINY_OVERRIDES.items() if _settable(defaults, key)}
    for key, value in vars(defaults).items():  # every other MLP width a family names (Ergo's first dense block: 32768)
        if key.endswith("intermediate_size") and key not in overrides and isinstance(value, int) and value > 128 \
                and _settable(defaults, key):
            overrides[key] = 128
    for key in SPECIAL_TOKEN_KEYS:  # token ids past the tiny vocabulary would index out of range
        value = getattr(defaults, key, None)
        if isinstance(value, int) and value >= TINY_VOCAB:
            overrides[key] = 0
    if _settable(defaults, "qk_rope_head_dim"):  # multi-head latent attention
        if "head_dim" in overrides:  # head_dim is the rotary part
            overrides["head_dim"] = TINY_OVERRIDES["qk_rope_head_dim"]
        if "num_key_value_heads" in overrides:  # every head has its own key (kv_b_proj): no grouping
            overrides["num_key_value_heads"] = TINY_OVERRIDES["num_attention_heads"]
    overrides.update(TYPE_OVERRIDES.get(model_type, {}))
    overrides.update(extra)
    return AutoConfig.for_model(model_type, **overrides)


def sub_configs(config: Any) -> list[str]:
    """Names of nested configs (vision, audio, text towers): a multimodal wrapper, not a decoder."""
    return [key for key, value in vars(config).items() if key.endswith("config") and hasattr(value, "to_dict")]


def tiny_model(model_type: str, seed: int = 0, **extra: Any) -> torch.nn.Module:
    """A tiny random causal LM of ``model_type`` in eval mode (``seed`` fixes its weights)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(model_type, **extra)).eval()
