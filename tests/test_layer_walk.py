"""The layer walk feeds every decoder layer exactly what the model itself would.

Many families pass different arguments to different layers (a sliding-window mask to some, the
full causal mask to others; Gemma-3 also local rotary embeddings). A walk that reused the first
layer's arguments for every layer would calibrate later layers on the wrong inputs; these tests
compare the walk's hidden states with the model's own ``output_hidden_states``.
"""

from __future__ import annotations

import pytest
import torch

SLIDING = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


def _config(family: str):
    import transformers as tf

    shape = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256)
    if family == "gemma3_text":
        return tf.Gemma3TextConfig(**shape, head_dim=16, sliding_window=4, layer_types=SLIDING)
    if family == "gemma2":
        return tf.Gemma2Config(**shape, head_dim=16, sliding_window=4, layer_types=SLIDING)
    if family == "olmo3":
        return tf.Olmo3Config(**shape, sliding_window=4, layer_types=SLIDING)
    raise ValueError(family)


@pytest.mark.parametrize("family", ["gemma3_text", "gemma2", "olmo3"])
def test_walk_reproduces_the_models_own_hidden_states_layer_by_layer(family):
    from transformers import AutoModelForCausalLM

    from prunekit.capture.layerwise import _first_layer_inputs, _run_layer
    from prunekit.models.adapters import adapter_for
    from prunekit.models.loading import LoadedModel

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(family)).eval()
    loaded = LoadedModel(model, None, adapter_for(model, require_family=False), {})
    ids = torch.randint(0, 256, (3, 16))  # 16 tokens > the 4-token window: the masks differ
    with torch.no_grad():
        reference = model(ids, output_hidden_states=True, use_cache=False).hidden_states
    inputs = _first_layer_inputs(loaded, ids, 2, False)  # batches of 2 and 1: each size has its arguments
    out = torch.empty_like(inputs.hidden)
    for index, layer in enumerate(loaded.adapter.decoder_layers()):
        torch.testing.assert_close(inputs.hidden, reference[index], rtol=0, atol=1e-5, msg=f"layer {index} input")
        _run_layer(layer, inputs.at(index), out, 2)
        inputs.hidden, out = out, inputs.hidden
    # the stand-ins are gone: the model runs as before
    with torch.no_grad():
        again = model(ids, output_hidden_states=True, use_cache=False).hidden_states
    torch.testing.assert_close(again[-1], reference[-1], rtol=0, atol=0)


def test_layer_arguments_that_change_with_the_tokens_are_refused():
    """Gemma-3n/4 hand each decoder layer a per-token input besides its hidden states: the walk, which
    replays one batch's layer arguments for every batch, refuses such a model in one line instead of
    calibrating later batches on the first batch's inputs."""
    import transformers as tf
    from transformers.modeling_outputs import BaseModelOutputWithPast

    from prunekit.capture.layerwise import _first_layer_inputs
    from prunekit.errors import UnsupportedArchitectureError
    from prunekit.models.adapters import adapter_for
    from prunekit.models.loading import LoadedModel

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = tf.LlamaForCausalLM(config).eval()
    inner = model.model

    def forward_with_token_inputs(input_ids=None, **_):
        hidden = inner.embed_tokens(input_ids)
        positions = inner.rotary_emb(hidden, torch.arange(input_ids.shape[1]).unsqueeze(0))
        for layer in inner.layers:
            hidden = layer(hidden, position_embeddings=positions, attention_mask=None,
                           token_input=inner.embed_tokens(input_ids)[..., :8])
        return BaseModelOutputWithPast(last_hidden_state=hidden)

    loaded = LoadedModel(model, None, adapter_for(model), {})
    ids = torch.randint(0, 256, (4, 16))
    _first_layer_inputs(loaded, ids, 2, False)  # the stock forward: its arguments are the same for every batch
    inner.forward = forward_with_token_inputs
    with pytest.raises(UnsupportedArchitectureError, match="changes with the tokens .'token_input'"):
        _first_layer_inputs(loaded, ids, 2, False)


def test_layers_that_share_another_layers_kv_cache_are_refused(tokenizer):
    """Gemma-3n/4's last num_kv_shared_layers layers read the key/value cache an earlier layer left in
    a shared state: a walk that runs one layer over every batch would hand them the last batch's,
    and a depth cut would change which layer each reads; both are refused in one line."""
    from prunekit import api
    from prunekit.errors import ArgumentError, UnsupportedArchitectureError
    from prunekit.recipe import CalibrationSettings
    from prunekit.zoo import tiny_loaded

    lm = tiny_loaded("gemma4_text", tokenizer, num_kv_shared_layers=1,
                     layer_types=["sliding_attention", "full_attention", "full_attention"])
    with pytest.raises(UnsupportedArchitectureError, match="num_kv_shared_layers"):
        api.prune(lm, "wanda", sparsity=0.5, progress=False,
                  calibration=CalibrationSettings(corpus="c4", nsamples=2, seqlen=16))
    with pytest.raises(ArgumentError, match="num_kv_shared_layers"):
        api.prune(lm, "shortgpt", layers=[0], progress=False)
    assert lm.adapter.num_layers() == 3
