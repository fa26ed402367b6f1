"""Child process: ``python -m prunekit.export.quantize_child SRC DST OUTTYPE THREADS [IMATRIX.npz]``.

Calls llama.cpp's ``llama_model_quantize`` through ``llama-cpp-python``'s bindings. Run apart from
prunekit's process because llama.cpp aborts (not raises) on some inputs. The importance matrix is
passed as llama.cpp's ``llama_model_imatrix_data`` array: per GGUF tensor name, one float per
input column (the mean squared activation the column saw), ended by a null name.
"""

from __future__ import annotations

import ctypes
import sys


def main(argv: list[str]) -> int:
    source, target, outtype, threads = argv[:4]
    imatrix_file = argv[4] if len(argv) > 4 else None
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{outtype.upper()}", None)
    if ftype is None:
        print(f"this llama.cpp build has no quantization type {outtype}", file=sys.stderr)
        return 2
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = int(threads)
    keep_alive = []
    if imatrix_file:
        import numpy as np

        entries = np.load(imatrix_file)
        table = (llama_cpp.llama_model_imatrix_data * (len(entries.files) + 1))()
        for slot, name in zip(table, entries.files):
            values = np.ascontiguousarray(entries[name], dtype=np.float32)
            keep_alive.append(values)
            slot.name = name.encode()
            slot.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            slot.size = values.size
        table[len(entries.files)].name = None
        params.imatrix = ctypes.cast(table, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    status = llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params))
    if status != 0:
        print(f"llama_model_quantize returned {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
