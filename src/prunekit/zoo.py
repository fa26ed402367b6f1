"""The architecture zoo: every capability of prunekit tried on a tiny random model of every type.

For each decoder-only model type in the installed transformers (``models/tiny.py`` builds it from
its own config class), each capability runs on a fresh model and is then *checked*: a mask
method's pruned fraction is exact (N:M groups valid), a depth or width step leaves the shapes it
claims, and the saved checkpoint, reloaded by plain ``transformers`` (``trust_remote_code`` only
where prunekit wrote per-layer shapes), gives the same logits as the in-memory pruned model. A
capability passes (``None``) or fails with one line saying why. ``benchmarks/zoo.py`` writes the
full matrix; the default test run covers every type for one mask method, depth and reload.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .models.adapters.experts import expert_count
from .models.tiny import causal_lm_types, sub_configs, tiny_config, tiny_model

# width: half of the heads (KV groups) and MLP channels of every layer — a fraction of units, not of all
# parameters, which a tiny model's 49,152-row embedding would swamp (its layers hold a few percent of them)
WIDTH = "llm-pruner 50% units"
CAPABILITIES = ("ppl", "magnitude 50%", "wanda 50%", "sparsegpt 50%", "sparsegpt 2:4", "shortgpt -1",
                WIDTH, "expert-prune 50%", "stream wanda 50%")
LOGIT_TOLERANCE = 1e-4
CALIBRATION = {"corpus": "c4", "nsamples": 4, "seqlen": 32}


def not_in_zoo(model_type: str) -> str | None:
    """Why ``model_type`` gets no row of capabilities (not a decoder-only text model), or None."""
    from .models.loading import not_decoder_only

    try:
        config = tiny_config(model_type)
    except Exception as exc:  # noqa: BLE001 - a config class that rejects the tiny shapes is a row's reason
        return f"tiny config rejected: {_one_line(exc)}"
    nested = sub_configs(config)
    if nested:
        return f"a multimodal / composite wrapper ({', '.join(nested)}); its text decoder has its own type"
    return not_decoder_only(config)


def _one_line(exc: BaseException, limit: int = 140) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def tiny_loaded(model_type: str, tokenizer, **extra):
    """A fresh tiny random ``model_type`` (``extra`` overrides its config) as prunekit's loaded
    model with ``tokenizer``, the adapter chosen as ``prunekit.load`` would."""
    from .models.loading import LoadedModel, check_config

    model = tiny_model(model_type, **extra)
    model.config.use_cache = False
    adapter_cls = check_config(model.config, model_type, require_adapter=False)
    return LoadedModel(model, tokenizer, adapter_cls(model), {"model": f"tiny-{model_type}", "model_type": model_type,
                                                              "family": adapter_cls.family})


def _probe_ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, min(vocab, 1000), (2, 12), generator=torch.Generator().manual_seed(1))


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits.float()


def _reload_matches(lm, directory: Path) -> None:
    """The saved checkpoint, reloaded by transformers, computes what the in-memory model computes."""
    from transformers import AutoModelForCausalLM

    remote = bool(getattr(lm.model.config, "auto_map", None))
    again = AutoModelForCausalLM.from_pretrained(str(directory), trust_remote_code=remote, dtype=torch.float32).eval()
    ids = _probe_ids(int(lm.model.config.get_text_config().vocab_size))
    diff = float((_logits(again, ids) - _logits(lm.model, ids)).abs().max())
    if not diff <= LOGIT_TOLERANCE:
        raise AssertionError(f"reloaded logits differ by {diff:.2e}" + (" (trust_remote_code)" if remote else ""))


def _save(lm, record: dict, directory: Path) -> None:
    from . import api

    api.save(lm, directory, record=api.build_record(lm, [record]), overwrite=True, report=False)


def _check_mask(lm, record: dict, pattern: str | None) -> None:
    from .sparsity import check_nm

    pruned = record["sparsity"]["pruned"]
    if pattern is None and abs(pruned - 0.5) > 1e-6:
        raise AssertionError(f"pruned fraction {pruned:.6f}, asked 0.5")
    if pattern is not None:
        for index in range(lm.adapter.num_layers()):
            for view in lm.adapter.linears(index):
                if view.name in record["sparsity"]["layers"] and not check_nm(view.weight, 2, 4):
                    raise AssertionError(f"{view.name} breaks the 2:4 pattern")
    if not record["sparsity"]["pruned_matrices"]:
        raise AssertionError("no matrix was pruned")


class _Verdict(Exception):
    """A capability's one-line result that is not a failure trace (n/a, a bad value): returned as written."""


def _outcome(check: Callable[[Path], None]) -> str | None:
    """Run ``check(tmp)`` quietly in a scratch folder: None when it holds, else its one-line reason."""
    from .errors import PrunekitError

    try:
        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
            warnings.simplefilter("ignore")
            check(Path(tmp))
            return None
    except _Verdict as verdict:
        return str(verdict)
    except PrunekitError as exc:
        return str(exc).splitlines()[0]
    except Exception as exc:  # noqa: BLE001 - the zoo reports every failure as its one line
        return _one_line(exc)


def _removes_one_layer(lm, before: int) -> None:
    if lm.adapter.num_layers() != before - 1:
        raise AssertionError(f"{before} -> {lm.adapter.num_layers()} layers")


def run_capability(model_type: str, capability: str, tokenizer, data_root: str | Path) -> str | None:
    """Run one capability on a fresh tiny ``model_type``; None when it passed its checks, else why not."""
    from .recipe import CalibrationSettings

    calibration = CalibrationSettings(**CALIBRATION)
    if capability == "stream wanda 50%":
        return _outcome(lambda tmp: _stream_matches(model_type, tokenizer, data_root, calibration, tmp))
    return _outcome(lambda tmp: _capability_holds(model_type, capability, tokenizer, data_root, calibration, tmp))


def _capability_holds(model_type: str, capability: str, tokenizer, data_root, calibration, tmp: Path) -> None:
    from . import api

    lm = tiny_loaded(model_type, tokenizer)
    if capability == "ppl":
        ppl = api.evaluate_perplexity(lm, ["wikitext2"], seqlen=32, max_windows=2, data_root=data_root,
                                      progress=False)["ppl"]["wikitext2"]
        if not (ppl == ppl and ppl < float("inf")):
            raise _Verdict(f"perplexity {ppl}")
        return
    if capability == "expert-prune 50%" and expert_count(lm.model.config) is None:
        raise _Verdict("n/a (dense model)")
    method, options = _method_options(capability)
    config = lm.model.config
    if method == "llm-pruner" and (getattr(config, "multi_query", False) or getattr(config, "num_key_value_heads", 0) == 1):
        options["head_grouping"] = "query"  # one KV head is one unit under KV grouping: half of it is all of it
    before = lm.adapter.num_layers()
    if method == "expert-prune":
        from .methods.expert_prune import expert_survivors

        experts_expected = expert_survivors(lm.model.config, options["remove_fraction"])
    record = api.prune(lm, method, progress=False, calibration=calibration, data_root=data_root, **options)
    if method == "shortgpt":
        _removes_one_layer(lm, before)
    if method == "llm-pruner" and not record["width"]["params_after"] < record["width"]["params_before"]:
        raise AssertionError("no unit was removed")
    if method == "expert-prune" and record["experts"]["experts_after"] != experts_expected:
        raise AssertionError(f"experts {record['experts']['experts_before']} -> {record['experts']['experts_after']}")
    if "sparsity" in record and record["sparsity"].get("pruned_matrices") is not None:
        _check_mask(lm, record, options.get("pattern"))
    _save(lm, record, tmp / "out")
    _reload_matches(lm, tmp / "out")


def _method_options(capability: str) -> tuple[str, dict[str, Any]]:
    name, _, amount = capability.partition(" ")
    if name == "shortgpt":
        return "shortgpt", {"remove_layers": 1}
    if name == "llm-pruner":
        return "llm-pruner", {"ratio": 0.5, "layer_range": "0:1.0"}
    if name == "expert-prune":
        return "expert-prune", {"remove_fraction": 0.5}
    if amount == "2:4":
        return name, {"pattern": "2:4"}
    return name, {"sparsity": 0.5}


def _stream_matches(model_type: str, tokenizer, data_root, calibration, tmp: Path) -> None:
    """Streamed Wanda 50% gives the same checkpoint as in-memory Wanda 50% (same logits)."""
    from . import api

    source = tmp / "dense"
    lm = tiny_loaded(model_type, tokenizer)
    lm.model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    out = tmp / "streamed"
    api.prune_streaming(source, "wanda", out, calibration=calibration, data_root=data_root, progress=False, sparsity=0.5)
    record = api.prune(lm, "wanda", sparsity=0.5, progress=False, calibration=calibration, data_root=data_root)
    _check_mask(lm, record, None)
    _reload_matches(lm, out)


def quick_check(model_type: str, tokenizer, data_root: str | Path) -> str | None:
    """The default test run's check of one type: Wanda 50% on a little calibration data, then the
    middle layer removed, then one save and reload — None when all of it holds, else why not."""
    from . import api
    from .recipe import CalibrationSettings

    def check(tmp: Path) -> None:
        lm = tiny_loaded(model_type, tokenizer)
        mask = api.prune(lm, "wanda", sparsity=0.5, progress=False, data_root=data_root,
                         calibration=CalibrationSettings(corpus="c4", nsamples=2, seqlen=16))
        _check_mask(lm, mask, None)
        before = lm.adapter.num_layers()
        depth = api.prune(lm, "shortgpt", layers=[1], progress=False)
        _removes_one_layer(lm, before)
        api.save(lm, tmp, record=api.build_record(lm, [mask, depth]), overwrite=True, report=False)
        _reload_matches(lm, tmp)

    return _outcome(check)


def zoo_types() -> list[str]:
    """The model types the zoo tests: decoder-only text models of the installed transformers."""
    return [t for t in causal_lm_types() if not_in_zoo(t) is None]


def zoo_matrix(tokenizer, data_root: str | Path, types: list[str] | None = None,
               capabilities: tuple[str, ...] = CAPABILITIES,
               on_row: Callable[[str, dict[str, str | None]], None] | None = None) -> dict[str, dict]:
    """``{model_type: {"reason": why not in the zoo} | {"capabilities": {capability: None | reason}}}``."""
    rows: dict[str, dict] = {}
    for model_type in types or causal_lm_types():
        reason = not_in_zoo(model_type)
        if reason:
            rows[model_type] = {"reason": reason}
        else:
            rows[model_type] = {"capabilities": {c: run_capability(model_type, c, tokenizer, data_root) for c in capabilities}}
        if on_row is not None:
            on_row(model_type, rows[model_type])
    return rows
