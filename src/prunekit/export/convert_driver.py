"""Child-process script: llama.cpp's converter, extended for per-layer widths.

Run as ``python convert_driver.py MODEL_DIR --outfile F --outtype T`` with the converter's tree on
``PYTHONPATH`` (see :meth:`prunekit.export.llamacpp.Converter.environment`). Without
``prunekit_gguf_layers`` in ``MODEL_DIR/config.json`` it is exactly ``convert_hf_to_gguf.py``.

With it (a Llama-architecture checkpoint whose layers kept different head counts or MLP widths),
the model is written as llama.cpp's ``deci`` architecture: the Llama graph with per-layer
``head_count``, ``head_count_kv`` and ``feed_forward_length`` arrays, which llama.cpp reads for
every layer (``llama_model_deci``), where its ``llama`` architecture reads layer 0's values for
all. Tensors are converted by the converter's own Llama class; only the head counts its Q/K
RoPE permutation uses are set to each layer's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LAYERS_KEY = "prunekit_gguf_layers"


def _per_layer_class(base, gguf, layers: dict):
    class PerLayerLlamaModel(base):
        model_arch = gguf.MODEL_ARCH.DECI

        def set_gguf_parameters(self):
            writer = self.gguf_writer
            arrays = {"add_head_count": layers["heads"], "add_head_count_kv": layers["kv_heads"],
                      "add_feed_forward_length": layers["ffn"]}
            for method, values in arrays.items():
                original = getattr(writer, method)
                setattr(writer, method, lambda _uniform, original=original, values=values: original(list(values)))
            try:
                super().set_gguf_parameters()
            finally:
                for method in arrays:
                    delattr(writer, method)

        def modify_tensors(self, data_torch, name, bid):
            if bid is None:
                yield from super().modify_tensors(data_torch, name, bid)
                return
            saved = self.hparams["num_attention_heads"], self.hparams["num_key_value_heads"]
            self.hparams["num_attention_heads"] = layers["heads"][bid]
            self.hparams["num_key_value_heads"] = layers["kv_heads"][bid]
            try:
                yield from super().modify_tensors(data_torch, name, bid)
            finally:
                self.hparams["num_attention_heads"], self.hparams["num_key_value_heads"] = saved

    return PerLayerLlamaModel


def main() -> None:
    import convert_hf_to_gguf as cli  # the converter's entry script (its directory is on the path)

    model_dir = Path(sys.argv[1])
    layers = json.loads((model_dir / "config.json").read_text()).get(LAYERS_KEY)
    if layers is not None:
        import gguf
        from conversion.llama import LlamaModel

        original = cli.get_model_class

        def get_model_class(name, mmproj=False):
            model_class = original(name, mmproj=mmproj)
            if not mmproj and model_class is LlamaModel:
                return _per_layer_class(LlamaModel, gguf, layers)
            raise NotImplementedError(f"per-layer widths are written for llama.cpp's Llama architecture only, not {name}")

        cli.get_model_class = get_model_class
    cli.main()


if __name__ == "__main__":
    main()
