"""Knowledge distillation of a pruned model from the dense model it came from.

Loss per batch (every token position of the training windows)::

    α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + β·mean_l ‖h_s(l) − h_t(map(l))‖² / ‖h_t(map(l))‖² + γ·CE

with ``--kd-alpha`` α, ``--kd-temperature`` T, ``--kd-hidden-weight`` β and ``--kd-ce-weight`` γ.
Choices made here, and why:

- The hidden term compares each student decoder layer's *output* (caught by a forward hook, so
  the same on every family) with the teacher layer it descends from. ``map`` comes from the
  pruning record: a depth step keeps layers by their original indices, so the student's layer
  ``l`` is the teacher's ``kept[l]``; width steps keep the residual stream's width, so their
  layers map one to one. Each layer's squared error is divided by the teacher's mean square and
  the layers are averaged (not summed): the residual stream of an LLM carries a few "massive
  activation" channels hundreds of times larger than the rest, which would otherwise decide the
  loss alone, and β then means the same at any depth.
- ``--kd-topk K`` keeps the teacher's K largest logits per token and renormalises them; the
  student's log-probabilities at those tokens come from its full softmax (the usual sparse-KD
  estimate; never negative). When the hidden term is off, the teacher's top-K is computed for all
  windows *before* training and the teacher is freed, so teacher and student never share memory.
- The teacher is the dense ancestor: the model the run (or the run that wrote the pruned
  directory, followed back through each ``prunekit.json``) started from, or ``--teacher DIR``.
  It runs in ``torch.no_grad`` in ``--teacher-dtype`` (bfloat16 halves it).

Training (LoRA or all weights, the kept zeros, the schedule) is :mod:`prunekit.recovery.training`.
"""

from __future__ import annotations

import gc
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import ArgumentError
from ..io import RECORD_NAME, peak_rss_mb
from ..models.loading import LoadedModel
from .lora import training_windows
from .training import LoraSettings, train

PARAMS = ("lora", "full")
TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class KdSettings(LoraSettings):
    """Distillation on top of the recovery run's settings (``lr`` applies to what is trained:
    LoRA's 1e-4 by default; all weights want less, e.g. 2e-5)."""

    kd_alpha: float = 1.0
    kd_temperature: float = 1.0
    kd_hidden_weight: float = 0.0
    kd_ce_weight: float = 0.0
    kd_params: str = "lora"
    kd_topk: int = 0  # 0: the teacher's whole distribution
    teacher: str | None = None
    teacher_dtype: str = "auto"

    def validate(self) -> None:
        super().validate()
        checks = [(self.kd_alpha >= 0, "--kd-alpha must be >= 0"), (self.kd_temperature > 0, "--kd-temperature must be positive"),
                  (self.kd_hidden_weight >= 0, "--kd-hidden-weight must be >= 0"),
                  (self.kd_ce_weight >= 0, "--kd-ce-weight must be >= 0"),
                  (self.kd_alpha + self.kd_hidden_weight + self.kd_ce_weight > 0,
                   "distillation needs a loss: --kd-alpha, --kd-hidden-weight or --kd-ce-weight above 0"),
                  (self.kd_params in PARAMS, f"--kd-params must be one of {', '.join(PARAMS)}"),
                  (self.kd_topk >= 0, "--kd-topk must be >= 0 (0: the whole vocabulary)"),
                  (self.teacher_dtype in TEACHER_DTYPES, f"--teacher-dtype must be one of {', '.join(TEACHER_DTYPES)}")]
        for ok, message in checks:
            if not ok:
                raise ArgumentError(message)
        if self.teacher is not None and not Path(self.teacher).expanduser().exists():
            raise ArgumentError(f"--teacher {self.teacher} does not exist")


def lineage(source: dict) -> tuple[dict, list[dict]]:
    """Follow ``prunekit.json`` records back from ``source`` to the model without one (the dense
    ancestor); return that model's source and every step recorded on the way, oldest first."""
    current = {"model": source.get("model"), "gguf_file": source.get("gguf_file")}
    steps: list[dict] = []
    seen: set[Path] = set()
    while current["model"] is not None:
        path = Path(str(current["model"])).expanduser()
        record_file = path / RECORD_NAME
        if not record_file.is_file() or path.resolve() in seen:
            break
        seen.add(path.resolve())
        record = json.loads(record_file.read_text())
        steps = list(record.get("steps", [])) + steps
        current = {"model": record.get("model", {}).get("model"), "gguf_file": record.get("model", {}).get("gguf_file")}
    return current, steps


def layer_map(steps: list[dict], teacher_layers: int) -> list[int]:
    """The teacher layer each student layer descends from, composed over the depth steps."""
    origin = list(range(teacher_layers))
    for step in steps:
        kept = (step.get("depth") or {}).get("kept")
        if kept is not None:
            origin = [origin[k] for k in kept]
    return origin


def distill_kl(student_logits: torch.Tensor, teacher: torch.Tensor, temperature: float,
               teacher_index: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens of KL(teacher ‖ student) at temperature T. ``teacher`` is the full logits,
    or with ``teacher_index`` the teacher's top-K logits and their token ids (renormalised)."""
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher.float() / temperature, dim=-1)
    if teacher_index is not None:
        log_q = log_q.gather(-1, teacher_index.long())
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def relative_hidden_error(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of ‖h_s − h_t‖² / ‖h_t‖² (see the module note for why it is relative)."""
    terms = [(s.float() - t.float()).pow(2).mean() / t.float().pow(2).mean().clamp_min(1e-12)
             for s, t in zip(student, teacher)]
    return torch.stack(terms).mean()


class _LayerOutputs:
    """Forward hooks that keep the outputs of chosen decoder layers, in the order given."""

    def __init__(self, layers, indices: list[int]):
        self.outputs: dict[int, torch.Tensor] = {}
        self.indices = indices
        self.handles = [layers[i].register_forward_hook(self._keep(slot)) for slot, i in enumerate(indices)]

    def _keep(self, slot: int):
        def hook(_module, _args, output):
            self.outputs[slot] = output[0] if isinstance(output, tuple) else output
        return hook

    def take(self) -> list[torch.Tensor]:
        values = [self.outputs[slot] for slot in range(len(self.indices))]
        self.outputs.clear()
        return values

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def load_teacher(loaded: LoadedModel, settings: KdSettings, history: list[dict]) -> tuple[LoadedModel, dict, list[int]]:
    """The teacher model, where it came from, and the student→teacher layer map."""
    from ..models.loading import load_model

    ancestor, recorded = lineage(loaded.source)
    source = {"model": settings.teacher, "gguf_file": None} if settings.teacher else ancestor
    if source["model"] is None or not Path(str(source["model"])).expanduser().exists():
        raise ArgumentError(f"the dense model this run descends from ({source['model']}) is not here: pass --teacher DIR")
    teacher = load_model(source["model"], gguf_file=source.get("gguf_file"), dtype=settings.teacher_dtype,
                         device=str(loaded.device))
    teacher.model.eval()
    for p in teacher.model.parameters():
        p.requires_grad_(False)
    mapping = layer_map(recorded + list(history), teacher.adapter.num_layers())
    if settings.kd_hidden_weight > 0 and len(mapping) != loaded.adapter.num_layers():
        raise ArgumentError(f"the pruning record maps {len(mapping)} layers onto the teacher, the student has "
                            f"{loaded.adapter.num_layers()}: the hidden-state term needs the record of every depth step "
                            "(or set --kd-hidden-weight 0)")
    if teacher.model.config.get_text_config().vocab_size != loaded.model.config.get_text_config().vocab_size:
        raise ArgumentError(f"teacher {source['model']} and student have different vocabularies")
    return teacher, source, mapping


@torch.no_grad()
def _precompute_topk(teacher: LoadedModel, ids: torch.Tensor, batch_size: int, k: int, progress: bool):
    values, index = [], []
    for start in tqdm(range(0, ids.shape[0], batch_size), desc="teacher top-K", disable=not progress, leave=False):
        logits = teacher.model(input_ids=ids[start : start + batch_size].to(teacher.device), use_cache=False).logits
        top = logits.float().topk(k, dim=-1)
        values.append(top.values)
        index.append(top.indices.to(torch.int32))
    return torch.cat(values), torch.cat(index)


def recover_kd(loaded: LoadedModel, settings: KdSettings | None = None, *, history: list[dict] | None = None,
               data_root: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Distil ``loaded`` (the pruned student) from its dense teacher in place; return the report.

    ``history``: the records of the steps this run already applied (for the layer map)."""
    settings = settings or KdSettings()
    windows = training_windows(loaded, settings, data_root)
    teacher, source, mapping = load_teacher(loaded, settings, history or [])
    T, k = settings.kd_temperature, settings.kd_topk
    use_hidden = settings.kd_hidden_weight > 0
    precomputed = k > 0 and not use_hidden
    cache = None
    if precomputed:
        cache = _precompute_topk(teacher, windows.ids, settings.batch_size, k, progress)
        del teacher
        gc.collect()
        teacher = None
    student_hooks = _LayerOutputs(loaded.adapter.decoder_layers(), list(range(loaded.adapter.num_layers()))) \
        if use_hidden else None
    teacher_hooks = _LayerOutputs(teacher.adapter.decoder_layers(), mapping) if use_hidden else None

    def loss_fn(model, batch, start):
        wants_ce = settings.kd_ce_weight > 0
        out = model(input_ids=batch, labels=batch if wants_ce else None, use_cache=False)
        if cache is not None:
            t_logits, t_index = (c[start : start + batch.shape[0]].to(batch.device) for c in cache)
        else:
            with torch.no_grad():
                t_logits = teacher.model(input_ids=batch, use_cache=False).logits
            t_index = None
            if k > 0:
                top = t_logits.float().topk(k, dim=-1)
                t_logits, t_index = top.values, top.indices
        parts: dict[str, float] = {}
        total = torch.zeros((), device=batch.device)
        if settings.kd_alpha > 0:
            kl = distill_kl(out.logits, t_logits, T, t_index)
            total = total + settings.kd_alpha * T * T * kl
            parts["kd"] = kl.item()
        if use_hidden:
            hidden = relative_hidden_error(student_hooks.take(), teacher_hooks.take())
            total = total + settings.kd_hidden_weight * hidden
            parts["hidden"] = hidden.item()
        if wants_ce:
            total = total + settings.kd_ce_weight * out.loss
            parts["ce"] = out.loss.item()
        return total, parts

    try:
        report = train(loaded, settings, windows.ids, loss_fn, params=settings.kd_params, progress=progress, desc="KD")
    finally:
        for hooks in (student_hooks, teacher_hooks):
            if hooks is not None:
                hooks.remove()
    del teacher
    gc.collect()
    return {"settings": asdict(settings), "calibration": windows.provenance, "objective": "kd",
            "teacher": {**source, "mode": f"top-{k} precomputed, freed before training" if precomputed
                        else "live, no-grad", "dtype": settings.teacher_dtype},
            "layer_map": mapping, "peak_rss_mb": peak_rss_mb(), **report}
