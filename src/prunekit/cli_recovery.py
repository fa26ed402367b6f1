"""The recovery flags of the command line: LoRA's and distillation's, on ``recover`` and, with
the ``heal-`` prefix, on ``prune --heal lora|kd``. Kept apart from :mod:`prunekit.cli` because
the same flag set is built twice and turned into settings in one place."""

from __future__ import annotations

import argparse

from .errors import ArgumentError
from .renamed import add_renamed_flag
from .recovery import KdSettings, LoraSettings
from .recovery.distill import PARAMS, TEACHER_DTYPES

OBJECTIVES = ("lm", "kd")
_KD_FLAGS = ("kd_alpha", "kd_temperature", "kd_hidden_weight", "kd_ce_weight", "kd_params", "kd_topk", "teacher",
             "teacher_dtype")


def _hidden(add_argument):
    """``add_argument`` with the help suppressed: the flag works but is not listed."""
    def add(*names, **kwargs):
        return add_argument(*names, **{**kwargs, "help": argparse.SUPPRESS})
    return add


def add_recovery_args(parser: argparse.ArgumentParser, prefix: str = "", shown: bool = True) -> None:
    """LoRA and distillation flags; ``prefix`` is ``heal-`` on ``prune`` (``--heal-steps``) and
    empty on ``recover``; ``shown=False`` accepts them without listing them in help."""
    defaults = KdSettings()
    flag = lambda name: f"--{prefix}{name}"  # noqa: E731
    dest = prefix.replace("-", "_")
    group = parser.add_argument_group("recovery training" + (" (with --heal lora|kd)" if prefix else ""))
    kd = parser.add_argument_group("distillation" + (" (with --heal kd)" if prefix else " (with --objective kd)"),
                                   "loss = α·T²·KL(teacher‖student) + β·mean relative hidden-state error + γ·CE"
                                   if shown else None)  # a hidden group prints nothing, not even its description
    if not shown:
        group.add_argument = _hidden(group.add_argument)  # type: ignore[method-assign]
        kd.add_argument = _hidden(kd.add_argument)  # type: ignore[method-assign]
    group.add_argument(flag("data"), default=defaults.data, help="training text: c4 (train sample), a name:split, "
                       "or a .txt/.jsonl path (default c4; wikitext2 here has no train split)")
    group.add_argument(flag("steps"), type=int, default=defaults.steps, help=f"optimizer steps (default {defaults.steps})")
    group.add_argument(flag("lr"), type=float, default=defaults.lr, help=f"learning rate (default {defaults.lr}; "
                       "for --kd-params full use less, e.g. 2e-5)")
    group.add_argument(flag("batch-size"), type=int, default=defaults.batch_size, help=f"windows per step (default {defaults.batch_size})")
    group.add_argument(flag("seqlen"), type=int, default=defaults.seqlen, help=f"tokens per window (default {defaults.seqlen})")
    group.add_argument(flag("lora-rank"), dest=f"{dest}rank", type=int, default=defaults.rank, metavar="N",
                       help=f"LoRA rank r (default {defaults.rank})")
    group.add_argument(flag("lora-alpha"), dest=f"{dest}alpha", type=float, default=defaults.alpha, metavar="X",
                       help=f"LoRA alpha (default {defaults.alpha})")
    group.add_argument(flag("lora-dropout"), dest=f"{dest}dropout", type=float, default=defaults.dropout, metavar="X",
                       help=f"LoRA dropout (default {defaults.dropout})")
    for old, kind in (("rank", int), ("alpha", float), ("dropout", float)):
        add_renamed_flag(group, flag(old), flag(f"lora-{old}"), dest=f"{dest}{old}", type=kind)
    group.add_argument(flag("seed"), type=int, default=defaults.seed, help="seed of the windows and the LoRA init")
    group.add_argument(flag("checkpointing"), action="store_true", help="gradient checkpointing (less memory, slower)")
    group.add_argument(flag("heldout"), type=int, default=defaults.heldout, metavar="N",
                       help="windows after the training ones on which the objective is measured before and after "
                            f"(default {defaults.heldout}; 0: none)")
    kd.add_argument(flag("kd-alpha"), type=float, metavar="X", help=f"α, weight of the logit KL (default {defaults.kd_alpha})")
    kd.add_argument(flag("kd-temperature"), type=float, metavar="X", help=f"T (default {defaults.kd_temperature})")
    kd.add_argument(flag("kd-hidden-weight"), type=float, metavar="X", help="β, weight of the hidden-state term, layers mapped "
                    f"through the pruning record (default {defaults.kd_hidden_weight})")
    kd.add_argument(flag("kd-ce-weight"), type=float, metavar="X", help=f"γ, weight of the next-token loss (default {defaults.kd_ce_weight})")
    kd.add_argument(flag("kd-params"), choices=PARAMS, help="train LoRA adapters (merged) or all weights; pruned "
                    "zeros stay zero either way (default lora)")
    kd.add_argument(flag("kd-topk"), type=int, metavar="K", help="keep the teacher's top-K logits per token "
                    "(renormalised); without the hidden term they are computed up front and the teacher is freed "
                    "(default 0: the whole vocabulary)")
    kd.add_argument(flag("teacher"), metavar="DIR", help="the dense teacher (default: the model the pruned run "
                    "started from, read from prunekit.json)")
    kd.add_argument(flag("teacher-dtype"), choices=TEACHER_DTYPES, help="the teacher's dtype (default auto)")


def recovery_settings(args, prefix: str = "", objective: str = "lm") -> LoraSettings:
    """The settings the flags describe: :class:`LoraSettings`, or :class:`KdSettings` for ``kd``;
    a distillation flag with the next-token objective is an error, not a silent no-op."""
    get = lambda name: getattr(args, prefix + name)  # noqa: E731
    common = dict(data=get("data"), steps=get("steps"), lr=get("lr"), batch_size=get("batch_size"), seqlen=get("seqlen"),
                  rank=get("rank"), alpha=get("alpha"), dropout=get("dropout"), seed=get("seed"),
                  checkpointing=get("checkpointing"), heldout=get("heldout"))
    given = {name: get(name) for name in _KD_FLAGS if get(name) is not None}
    if objective == "kd":
        settings: LoraSettings = KdSettings(**common, **given)
    else:
        if given:
            flags = ", ".join(f"--{prefix.replace('_', '-')}{n.replace('_', '-')}" for n in given)
            hint = "--heal kd" if prefix else "--objective kd"
            raise ArgumentError(f"{flags} apply to distillation: add {hint}")
        settings = LoraSettings(**common)
    settings.validate()
    return settings
