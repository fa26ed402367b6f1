"""llama.cpp's own tools, found and run: its HF→GGUF converter and its quantizer.

prunekit writes no GGUF serializer and no quantizer of its own. The converter is
``convert_hf_to_gguf.py`` with its ``conversion/`` package and the ``gguf-py`` it was written
against; the quantizer is ``llama_model_quantize`` of the ``llama-cpp-python`` build.

The ``llama-cpp-python`` wheel carries the runtime but not the converter, so the converter is
looked for, in order, in ``$PRUNEKIT_LLAMA_CPP`` (a llama.cpp source tree), in prunekit's cache,
and last in the source package of the installed ``llama-cpp-python`` version, which pip fetches
once from the package index and prunekit unpacks into the cache — so the converter always matches
the runtime that will read its output.

Both tools run in child processes: the converter must import its own ``gguf-py`` (which may be
newer than the installed ``gguf``), and llama.cpp aborts the whole process on some bad inputs.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import PrunekitError
from ..models.loading import cache_root

CONVERTER = "convert_hf_to_gguf.py"
# what the converter needs beside its entry script, relative to a llama.cpp source tree
CONVERTER_PARTS = (CONVERTER, "conversion", "gguf-py")
# written by the converter itself; everything else goes through llama_model_quantize
CONVERTER_TYPES = ("f32", "f16", "bf16")
# llama.cpp's llama_ftype names (llama.h, LLAMA_FTYPE_MOSTLY_*), lower-cased
QUANTIZED_TYPES = (
    "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q5_1", "q4_k_m", "q4_k_s", "q4_0", "q4_1",
    "q3_k_l", "q3_k_m", "q3_k_s", "q2_k", "q2_k_s", "iq4_nl", "iq4_xs", "iq3_m", "iq3_s", "iq3_xs",
    "iq3_xxs", "iq2_m", "iq2_s", "iq2_xs", "iq2_xxs", "iq1_m", "iq1_s", "tq1_0", "tq2_0",
)
OUTTYPES = CONVERTER_TYPES + QUANTIZED_TYPES
# llama.cpp refuses these without an importance matrix (tensor_requires_imatrix in llama-quant.cpp)
NEEDS_IMATRIX = ("iq2_xxs", "iq2_xs", "iq2_s", "iq1_s", "iq1_m", "q2_k_s")


class LlamaCppError(PrunekitError):
    """llama.cpp's tools are missing, or one of them failed."""


@dataclass(frozen=True)
class Converter:
    """A llama.cpp source tree holding the converter (``root/convert_hf_to_gguf.py``)."""

    root: Path

    @property
    def script(self) -> Path:
        return self.root / CONVERTER

    def text_architectures(self) -> set[str]:
        """HF architecture names the converter registers for text models, read from
        ``conversion/__init__.py`` without importing it (that would import torch and transformers)."""
        source = (self.root / "conversion" / "__init__.py").read_text(encoding="utf-8")
        for node in ast.parse(source).body:
            target = node.target if isinstance(node, ast.AnnAssign) else (
                node.targets[0] if isinstance(node, ast.Assign) else None)
            if isinstance(target, ast.Name) and target.id == "TEXT_MODEL_MAP" and node.value is not None:
                return set(ast.literal_eval(node.value))
        raise LlamaCppError(f"{self.root}: no TEXT_MODEL_MAP in conversion/__init__.py (an unknown converter layout)")

    def environment(self) -> dict[str, str]:
        """The child's environment: the converter's own ``gguf-py`` first on the path."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.root / "gguf-py"), str(self.root), env.get("PYTHONPATH", "")])
        return env


def runtime_version() -> str:
    """The installed ``llama-cpp-python`` version, or one clear error naming the extra to install."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("llama-cpp-python")
    except PackageNotFoundError:
        raise LlamaCppError("llama.cpp is not installed: pip install -e '.[gguf]' builds llama-cpp-python "
                            "from source (about 12 CPU-minutes, cached by pip afterwards)") from None


def runtime_available() -> bool:
    try:
        runtime_version()
    except LlamaCppError:
        return False
    return True


def find_converter(fetch: bool = True) -> Converter:
    """The converter to use; with ``fetch`` unpack it from the runtime's source package if needed."""
    configured = os.environ.get("PRUNEKIT_LLAMA_CPP")
    if configured:
        tree = Path(configured).expanduser()
        if not (tree / CONVERTER).is_file() or not (tree / "conversion").is_dir():
            raise LlamaCppError(f"PRUNEKIT_LLAMA_CPP={configured} is not a llama.cpp source tree "
                                f"({CONVERTER} and conversion/ expected there)")
        return Converter(tree)
    version = runtime_version()
    cached = cache_root() / "llama.cpp" / version
    if (cached / CONVERTER).is_file():
        return Converter(cached)
    if not fetch:
        raise LlamaCppError(f"llama.cpp's converter for llama-cpp-python {version} is not in {cached}")
    _unpack_converter(version, cached)
    return Converter(cached)


def _unpack_converter(version: str, target: Path) -> None:
    """Fetch ``llama-cpp-python==version``'s source package and keep only the converter parts."""
    with tempfile.TemporaryDirectory(prefix="prunekit-llama-cpp-") as scratch:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               "-q", "-d", scratch, f"llama-cpp-python=={version}"], capture_output=True, text=True)
        archives = sorted(Path(scratch).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode or not archives:
            raise LlamaCppError(f"cannot fetch llama-cpp-python {version}'s sources for llama.cpp's converter "
                                f"({_last_line(proc.stderr) or 'no archive'}); set PRUNEKIT_LLAMA_CPP to a llama.cpp "
                                "source tree instead")
        staging = Path(scratch) / "tree"
        with tarfile.open(archives[0]) as archive:
            prefix = f"{archive.getmembers()[0].name.split('/')[0]}/vendor/llama.cpp/"
            members = [m for m in archive.getmembers() if m.name.startswith(prefix)
                       and m.name[len(prefix):].split("/")[0] in CONVERTER_PARTS and (m.isfile() or m.isdir())]
            for member in members:
                member.name = member.name[len(prefix):]
            archive.extractall(staging, members=members, filter="data")
        if not (staging / CONVERTER).is_file():
            raise LlamaCppError(f"llama-cpp-python {version}'s sources hold no {CONVERTER}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(staging, partial)
        try:
            partial.rename(target)
        except OSError:  # another process unpacked it first
            shutil.rmtree(partial, ignore_errors=True)


def run_converter(converter: Converter, source: Path, out_file: Path, outtype: str, driver: Path | None = None) -> None:
    """Convert the HF directory ``source`` into ``out_file`` (``f32``/``f16``/``bf16``).

    ``driver`` is a script run in place of ``convert_hf_to_gguf.py`` that extends it (prunekit's
    per-layer shapes) and then calls its ``main``; it gets the same arguments.
    """
    script = driver or converter.script
    command = [sys.executable, str(script), str(source), "--outfile", str(out_file), "--outtype", outtype]
    proc = subprocess.run(command, capture_output=True, text=True, env=converter.environment())
    if proc.returncode or not out_file.is_file():
        raise LlamaCppError(f"llama.cpp's converter failed on {source}: {_last_line(proc.stderr) or _last_line(proc.stdout)}")


def quantize(source: Path, out_file: Path, outtype: str, threads: int | None = None,
             imatrix: Path | None = None) -> None:
    """``llama_model_quantize(source → out_file, outtype)`` in a child process (llama.cpp aborts the
    process on some inputs); ``imatrix`` is a ``.npz`` of per-tensor importance vectors."""
    runtime_version()
    command = [sys.executable, "-m", "prunekit.export.quantize_child", str(source), str(out_file), outtype,
               str(threads or os.cpu_count() or 1)]
    if imatrix is not None:
        command.append(str(imatrix))
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode or not out_file.is_file():
        raise LlamaCppError(f"llama.cpp's quantizer failed ({outtype}): {_last_line(proc.stderr) or _last_line(proc.stdout)}")


def check_loads(path: Path, architecture: str) -> None:
    """Raise one line with llama.cpp's own reason when it cannot load ``path`` (see ``load_child``):
    llama.cpp's graphs fix some shapes that no config field states — e.g. its qwen2, olmo2 and phi2
    graphs build the attention output ``n_embd × n_embd``, so heads removed from those families
    give a file llama.cpp rejects."""
    runtime_version()
    proc = subprocess.run([sys.executable, "-m", "prunekit.export.load_child", str(path)], capture_output=True,
                          text=True)
    if proc.returncode:
        reasons = [line.split("error loading model:", 1)[1].strip() for line in proc.stderr.splitlines()
                   if "error loading model:" in line]
        raise LlamaCppError(f"llama.cpp cannot load the {architecture} GGUF written from these shapes, so nothing was "
                            f"written: {reasons[0] if reasons else _last_line(proc.stderr)}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""
