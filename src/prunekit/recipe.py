"""Recipes: an ordered list of steps, each a registered method with its target and options.

The CLI's ``prunekit prune`` flags build a one-step recipe; the Python API takes the same
:class:`Step`. Every step is validated (method, options, target, selection) before any work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ArgumentError
from .methods import get_method
from .sparsity import SparsityTarget, parse_pattern


@dataclass
class CalibrationSettings:
    """Where calibration windows come from (the spec's defaults: 128 C4 windows, seed 0)."""

    corpus: str | None = None  # None: the method's default (C4; PG19 for depth methods)
    nsamples: int | None = None  # None: the method's default (128; LLM-Pruner 10)
    seqlen: int | None = None  # None: the method's default, else the model's context capped at 4096
    seed: int = 0
    batch_size: int | None = None  # None: 4096 tokens per layer forward (attention scores grow with seqlen²)

    def batch_for(self, seqlen: int) -> int:
        return self.batch_size or max(1, 4096 // seqlen)

    def validate(self) -> None:
        if self.nsamples is not None and self.nsamples < 1:
            raise ArgumentError(f"--nsamples must be at least 1 (got {self.nsamples})")
        if self.seqlen is not None and self.seqlen < 2:
            raise ArgumentError(f"--seqlen must be at least 2 (got {self.seqlen})")
        if self.batch_size is not None and self.batch_size < 1:
            raise ArgumentError(f"--calib-batch-size must be at least 1 (got {self.batch_size})")


@dataclass
class Step:
    """One pruning step: ``method`` at ``sparsity`` or ``pattern`` on the selected roles/layers."""

    method: str
    sparsity: float | None = None
    pattern: str | None = None
    roles: str | list[str] | None = None
    layers: str | list[int] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def validated(self):
        """``(method class, parsed options, target)``; raises before any work on bad input."""
        method_cls = get_method(self.method)
        options = method_cls.parse_options(dict(self.options))
        if method_cls.kind == "depth":
            if self.sparsity is not None or self.pattern is not None:
                raise ArgumentError(f"{self.method} removes whole layers: use --remove-layers, --remove-fraction "
                                    "or --layers, not --sparsity/--pattern")
            if self.roles is not None:
                raise ArgumentError(f"{self.method} removes whole layers; --roles does not apply")
            return method_cls, options, None
        if method_cls.kind == "width":
            for flag, value in (("--sparsity", self.sparsity), ("--pattern", self.pattern), ("--roles", self.roles)):
                if value is not None:
                    raise ArgumentError(f"{self.method} removes whole heads and channels: {flag} does not apply "
                                        "(use --ratio or --param-ratio, --units and --layers or --layer-range)")
            if self.layers is not None and "layer_range" in self.options:
                raise ArgumentError(f"{self.method}: --layers and --layer-range both choose the layers to prune; "
                                    "give one")
            return method_cls, options, None
        if method_cls.kind == "experts":
            for flag, value in (("--sparsity", self.sparsity), ("--pattern", self.pattern), ("--roles", self.roles),
                                ("--layers", self.layers)):
                if value is not None:
                    raise ArgumentError(f"{self.method} removes whole experts, the same number in every MoE layer: "
                                        f"{flag} does not apply (use --remove-fraction and --criterion)")
            return method_cls, options, None
        if method_cls.kind == "lowrank":
            for flag, value in (("--sparsity", self.sparsity), ("--pattern", self.pattern), ("--roles", self.roles)):
                if value is not None:
                    raise ArgumentError(f"{self.method} replaces matrices by low-rank products: {flag} does not apply "
                                        "(use --rate, --modules and --layers)")
            return method_cls, options, None
        target = SparsityTarget.parse(self.sparsity, self.pattern)
        return method_cls, options, target

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value not in (None, {}, [])}

    @classmethod
    def from_dict(cls, data: dict) -> "Step":
        known = {"method", "sparsity", "pattern", "roles", "layers", "options"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ArgumentError(f"step has unknown keys {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        if "method" not in data:
            raise ArgumentError("step has no 'method'")
        return cls(**data)


# ---------------------------------------------------------------------------------------------
# Recipe files: an ordered list of steps in YAML, validated before any work.

PSEUDO_METHODS = ("lora", "kd", "eval")
TARGET_KEYS = ("sparsity", "pattern", "roles", "layers")
EVAL_KEYS = {"ppl": list, "max_windows": int, "eval_seqlen": int, "tasks": list, "limit": int, "icl": list,
             "shots": int, "icl_limit": int}
TOP_LEVEL_KEYS = ("model", "calibration", "steps")


@dataclass
class RecipeStep:
    """One line of a recipe file: a pruning :class:`Step`, a LoRA recovery, or an evaluation."""

    line: int  # 1-based line of the step in its file (for messages)
    method: str
    step: Step | None = None
    calibration: CalibrationSettings | None = None
    lora: Any = None  # LoraSettings, or KdSettings for a distillation step
    evaluation: dict[str, Any] | None = None

    def where(self, source: str, number: int) -> str:
        return f"{source} line {self.line} (step {number}: {self.method})"


@dataclass
class Recipe:
    steps: list[RecipeStep]
    source: str = "recipe"
    model: str | None = None
    text: str = ""


def _step_lines(text: str, source: str) -> list[int]:
    """The 1-based line of every item under ``steps:`` (YAML node marks), for error messages."""
    import yaml

    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ArgumentError(f"{source}: not valid YAML ({exc})".replace("\n", " ")) from exc
    if root is None or not isinstance(root, yaml.MappingNode):
        raise ArgumentError(f"{source}: a recipe is a mapping with a 'steps' list")
    for key, value in root.value:
        if key.value == "steps" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    raise ArgumentError(f"{source}: the recipe has no 'steps' list")


def _calibration(values: Any, where: str, defaults: CalibrationSettings | None = None) -> CalibrationSettings:
    if values is None:
        return defaults or CalibrationSettings()
    if not isinstance(values, dict):
        raise ArgumentError(f"{where}: 'calibration' must be a mapping")
    known = {f for f in CalibrationSettings.__dataclass_fields__}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ArgumentError(f"{where}: unknown calibration keys {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    merged = CalibrationSettings(**{**asdict(defaults or CalibrationSettings()), **values})
    merged.validate()
    return merged


def parse_recipe(text: str, source: str = "recipe") -> Recipe:
    """Parse and statically validate a recipe: every method, option, target and the order of steps.

    Each error names the file and the line of the step that is wrong. Checks that need the model
    (layer indices after earlier depth steps, roles the family has) are in :func:`check_recipe_targets`.
    """
    import yaml

    lines = _step_lines(text, source)
    data = yaml.safe_load(text)
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ArgumentError(f"{source}: unknown top-level keys {', '.join(unknown)} (known: {', '.join(TOP_LEVEL_KEYS)})")
    if not data["steps"]:
        raise ArgumentError(f"{source}: the recipe has no steps")
    defaults = _calibration(data.get("calibration"), f"{source} (calibration)")
    steps: list[RecipeStep] = []
    for number, (line, raw) in enumerate(zip(lines, data["steps"]), 1):
        where = f"{source} line {line} (step {number})"
        if not isinstance(raw, dict) or "method" not in raw:
            raise ArgumentError(f"{where}: a step is a mapping with a 'method'")
        values = dict(raw)
        method = str(values.pop("method"))
        where = f"{source} line {line} (step {number}: {method})"
        try:
            steps.append(_parse_step(line, method, values, defaults, where))
        except ArgumentError as exc:
            message = str(exc)
            raise ArgumentError(message if message.startswith(source) else f"{where}: {message}") from exc
    recipe = Recipe(steps, source, data.get("model"), text)
    _check_order(recipe)
    _round_widths_for_later_patterns(recipe)
    return recipe


def _parse_step(line: int, method: str, values: dict, defaults: CalibrationSettings, where: str) -> RecipeStep:
    if method in ("lora", "kd"):
        from .recovery import KdSettings, LoraSettings

        kind = LoraSettings if method == "lora" else KdSettings
        known = set(kind.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            what = "LoRA" if method == "lora" else "KD"
            raise ArgumentError(f"unknown {what} keys {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        settings = kind(**values)
        settings.validate()
        return RecipeStep(line, method, lora=settings)
    if method == "eval":
        unknown = sorted(set(values) - set(EVAL_KEYS))
        if unknown:
            raise ArgumentError(f"unknown eval keys {', '.join(unknown)} (known: {', '.join(EVAL_KEYS)})")
        for key, value in values.items():
            if EVAL_KEYS[key] is list and isinstance(value, str):
                values[key] = [v.strip() for v in value.split(",") if v.strip()]
            elif not isinstance(values[key], EVAL_KEYS[key]) or (EVAL_KEYS[key] is int and value < 1):
                raise ArgumentError(f"'{key}' must be {'a list' if EVAL_KEYS[key] is list else 'a positive integer'}")
        if not any(values.get(k) for k in ("ppl", "tasks", "icl")):
            raise ArgumentError("an eval step needs ppl, tasks and/or icl")
        if values.get("tasks"):
            from .eval.zero_shot import require_known_tasks

            require_known_tasks(values["tasks"])
        for name in values.get("icl", []):
            from .data.tasks import require_known_task

            require_known_task(name)
        return RecipeStep(line, method, evaluation=values)
    calibration = _calibration(values.pop("calibration", None), where, defaults)
    target = {k: values.pop(k) for k in TARGET_KEYS if k in values}
    step = Step(method, options=values, **target)
    step.validated()
    return RecipeStep(line, method, step=step, calibration=calibration)


def _check_order(recipe: Recipe) -> None:
    """Orders that cannot work: weights stored as low-rank factors cannot be masked or shrunk later."""
    factored_at = None
    for number, item in enumerate(recipe.steps, 1):
        if item.step is None:
            continue
        method_cls, options, _ = item.step.validated()
        if factored_at is not None and method_cls.kind in ("mask", "width", "lowrank"):
            raise ArgumentError(f"{item.where(recipe.source, number)}: impossible order — step {factored_at[0]} "
                                f"(line {factored_at[1]}) stores matrices as low-rank factors, which a later "
                                f"{method_cls.kind} step cannot change; put this step before it or drop --factored")
        if method_cls.kind == "lowrank" and getattr(options, "factored", False):
            factored_at = (number, item.line)


def _round_widths_for_later_patterns(recipe: Recipe) -> None:
    """A width step followed by an N:M step must leave widths M divides: where the recipe does not
    say ``round_to`` itself, it becomes the least common multiple of the later steps' M."""
    import math

    for number, item in enumerate(recipe.steps):
        if item.step is None or "round_to" in item.step.options:
            continue
        method_cls = item.step.validated()[0]
        if method_cls.kind != "width":
            continue
        later = [parse_pattern(s.step.pattern)[1] for s in recipe.steps[number + 1:] if s.step is not None and s.step.pattern]
        if later:
            item.step.options["round_to"] = math.lcm(*later)
            item.step.validated()


def check_recipe_targets(recipe: Recipe, adapter) -> None:
    """With the model's adapter, before any work: every layer selection is in range for the depth
    the model will have when the step runs (earlier depth steps remove layers), and every role
    exists in this family."""
    from .methods.selection import parse_layers, parse_roles

    depth = adapter.num_layers()
    for number, item in enumerate(recipe.steps, 1):
        if item.step is None:
            continue
        try:
            method_cls, options, _ = item.step.validated()
            if item.step.layers is not None:
                layers = parse_layers(item.step.layers, depth)
                if not layers:
                    raise ArgumentError(f"layers '{item.step.layers}' select nothing")
            if item.step.roles is not None:
                parse_roles(item.step.roles, adapter)
            if method_cls.kind == "depth" and getattr(options, "granularity", "layer") == "layer":
                explicit = parse_layers(item.step.layers, depth) if item.step.layers is not None else None
                depth -= method_cls(None, options, explicit_layers=explicit).count(depth)
        except ArgumentError as exc:
            raise ArgumentError(f"{item.where(recipe.source, number)}: {exc} (the model has {depth} layers "
                                "at this step)") from exc
