"""Child process: ``python -m prunekit.export.load_child FILE.gguf`` — load the file in llama.cpp.

The weights are memory-mapped, not read (no repacking), and the context holds 8 tokens, so this is
cheap at any model size. llama.cpp's loader checks every tensor against the shapes its graph for
the architecture expects and reports a mismatch on stderr (``error loading model: ...``), which
the parent turns into one line; run apart because llama.cpp may abort instead of returning.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    import llama_cpp

    from ..eval.llamacpp import _model_params

    try:
        with _model_params(repack=False):
            model = llama_cpp.Llama(model_path=argv[0], n_ctx=8, n_batch=8, n_threads=1, verbose=True)
    except ValueError:
        return 1
    model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
