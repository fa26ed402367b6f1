"""Running a recipe: steps in order on one model, each step's record kept, resumable.

After every completed step the model and the records so far are committed to a work folder
beside the output (``.OUT.recipe-work``): both are written into a temporary folder which one
rename turns into ``step-NNNN``, so a commit either happened whole or not at all, and an
interruption at any moment (mid-step, mid-save, between the two writes) resumes from the last
whole commit, never running a step twice. A failed or interrupted run leaves no output folder,
only that work folder; ``--resume`` reloads the newest commit and continues with the next step if
the recipe text and the model's *content* (every file of its directory) are the ones it was
started with. A finished run writes the output atomically (model + ``prunekit.json`` with every
step) and removes the work folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Callable

from . import api
from .errors import ArgumentError, PrunekitError
from .io import check_output_path, write_json
from .io.digest import directory_digest
from .models.loading import LoadedModel
from .recipe import Recipe, RecipeStep, check_recipe_targets, parse_recipe

STATE_NAME = "state.json"
COMMIT_PREFIX = "step-"


def load_recipe_file(path: str | Path) -> Recipe:
    from .data.corpora import open_text
    from .errors import DataError

    file = Path(path)
    if not file.is_file():
        raise DataError(f"recipe not found: {file}")
    with open_text(file) as handle:
        return parse_recipe(handle.read(), source=file.name)


def work_dir_for(out: Path) -> Path:
    return out.with_name(f".{out.name}.recipe-work")


def _fingerprint(recipe: Recipe, model: str) -> str:
    """The recipe text and what the model *is*: a local directory's (or file's) content digest, so
    a model replaced in place under the same path is not resumed; a hub id by its name."""
    path = Path(str(model)).expanduser()
    identity = directory_digest(path) if path.exists() else str(model)
    return hashlib.sha256((recipe.text + "\0" + identity).encode()).hexdigest()


def run_step(lm: LoadedModel, item: RecipeStep, *, data_root, progress: bool, history: list[dict] | None = None) -> dict:
    """Execute one recipe step on ``lm`` in place; return its record for ``prunekit.json``.
    ``history``: the records of the steps before it (a distillation step maps layers with them)."""
    if item.step is not None:
        return api.prune(lm, item.step, calibration=item.calibration, data_root=data_root, progress=progress)
    if item.lora is not None:
        return api.recover(lm, item.lora, data_root=data_root, progress=progress, history=history)
    started = time.perf_counter()
    settings = item.evaluation
    evaluation: dict = {}
    if settings.get("ppl"):
        evaluation.update(api.evaluate_perplexity(lm, settings["ppl"], seqlen=settings.get("eval_seqlen"),
                                                  max_windows=settings.get("max_windows"), data_root=data_root,
                                                  progress=progress))
    if settings.get("tasks"):
        evaluation.update(api.evaluate_zero_shot(lm, settings["tasks"], limit=settings.get("limit"), data_root=data_root,
                                                 progress=progress))
    if settings.get("icl"):
        evaluation.update(api.evaluate_icl(lm, settings["icl"], shots=settings.get("shots"),
                                           limit=settings.get("icl_limit"), data_root=data_root, progress=progress))
    return {"step": {"method": "eval", "options": settings}, "calibration": None, "evaluation": evaluation,
            "sparsity": {}, "layers": [], "timings": {"eval": round(time.perf_counter() - started, 3)},
            "peak_rss_mb": None}


def run_recipe(recipe: Recipe, model: str, out: str | Path, *, resume: bool = False, overwrite: bool = False,
               data_root=None, progress: bool = True, load: Callable[[str], LoadedModel] = api.load,
               on_step: Callable[[int, RecipeStep, dict], None] | None = None) -> tuple[Path, dict]:
    """Run every step of ``recipe`` on ``model`` and save the result to ``out``; ``(path, record)``."""
    out = check_output_path(out, overwrite)
    work = work_dir_for(out)
    fingerprint = _fingerprint(recipe, model)
    records: list[dict] = []
    if resume:
        commit = _last_commit(work)
        if commit is None:
            raise ArgumentError(f"nothing to resume: no work folder {work} (run without --resume)")
        state = json.loads((commit / STATE_NAME).read_text())
        if state["fingerprint"] != fingerprint:
            raise ArgumentError(f"{work} was started with another recipe or model; run without --resume to start over")
        records = state["records"]
        checkpoint = commit / "checkpoint"
        lm = load(str(checkpoint))
        lm.source.update(state["source"])
        _reattach_artifacts(lm, checkpoint)
    else:
        shutil.rmtree(work, ignore_errors=True)
        lm = load(model)
    check_recipe_targets(_remaining(recipe, len(records)), lm.adapter)  # before any work
    for number, item in enumerate(recipe.steps[len(records):], len(records) + 1):
        try:
            record = run_step(lm, item, data_root=data_root, progress=progress, history=records)
        except PrunekitError as exc:
            kept = f"steps 1-{number - 1} are checkpointed: --resume continues from step {number}" if number > 1 else ""
            raise type(exc)(f"{item.where(recipe.source, number)}: {exc}" + (f" ({kept})" if kept else "")) from exc
        record["recipe_line"] = item.line
        records.append(record)
        if on_step is not None:
            on_step(number, item, record)
        if number < len(recipe.steps):
            _checkpoint(lm, work, fingerprint, records)
    evaluation = next((r["evaluation"] for r in reversed(records) if "ppl" in r.get("evaluation", {})), None)
    record = api.build_record(lm, records, evaluation)
    record["recipe"]["file"] = recipe.source
    record["recipe"]["text"] = recipe.text
    path = api.save(lm, out, record=record, overwrite=overwrite)
    shutil.rmtree(work, ignore_errors=True)
    return path, record


def _reattach_artifacts(lm: LoadedModel, checkpoint: Path) -> None:
    """Files an earlier step saved beside the model (SPP's path.json) travel on to the final output."""
    from .methods.solution_path import FILE, PathArtifact, read_path

    if (checkpoint / FILE).is_file():
        lm.artifacts["spp_path"] = PathArtifact(read_path(checkpoint))


def _remaining(recipe: Recipe, done: int) -> Recipe:
    return Recipe(recipe.steps[done:], recipe.source, recipe.model, recipe.text)


def _commits(work: Path) -> list[Path]:
    """The whole commits in ``work``, oldest first (a half-written one is still a hidden temp folder)."""
    if not work.is_dir():
        return []
    return sorted(p for p in work.iterdir() if p.is_dir() and p.name.startswith(COMMIT_PREFIX)
                  and (p / STATE_NAME).is_file() and (p / "checkpoint").is_dir())


def _last_commit(work: Path) -> Path | None:
    """The newest whole commit (its ``state.json`` and ``checkpoint/``), or None."""
    commits = _commits(work)
    return commits[-1] if commits else None


def _checkpoint(lm: LoadedModel, work: Path, fingerprint: str, records: list[dict]) -> None:
    """Commit the model after the last completed step and the records so far, in one rename."""
    work.mkdir(parents=True, exist_ok=True)
    name = f"{COMMIT_PREFIX}{len(records):04d}"
    tmp = work / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    api.save(lm, tmp / "checkpoint", record=api.build_record(lm, records), overwrite=True, report=False)
    write_json(tmp / STATE_NAME, {"fingerprint": fingerprint, "completed": len(records), "records": records,
                                  "source": lm.source})
    shutil.rmtree(work / name, ignore_errors=True)  # a stale commit of this number from an abandoned run
    tmp.rename(work / name)  # the commit point
    for older in _commits(work)[:-1]:
        shutil.rmtree(older, ignore_errors=True)
