"""Old spellings of renamed options, kept working for one release with a warning.

Options were renamed so that each name says whose it is (``--alpha-power`` was RIA's exponent,
next to SPP's ``--lbi-alpha`` and LoRA's ``--alpha``). A method option records its old name in
its field's metadata (``"was": "alpha_power"``); the CLI accepts the old flag and a recipe or an
API call the old key, each with one warning naming the new spelling, then behaves as if the new
one had been given.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from .errors import ArgumentError


def warn_renamed(old: str, new: str) -> None:
    print(f"prunekit: warning: {old} is renamed {new}; the old spelling goes in the next release", file=sys.stderr)


class RenamedFlag(argparse.Action):
    """An old flag: stores into the new flag's destination after a warning."""

    def __init__(self, option_strings, dest, new_flag: str, **kwargs):
        self.new_flag = new_flag
        if kwargs.get("nargs") == 0:
            kwargs.setdefault("const", True)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        warn_renamed(option_string, self.new_flag)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_renamed_flag(group, old_flag: str, new_flag: str, dest: str, *, flag_is_switch: bool = False, **kwargs) -> None:
    """Accept ``old_flag`` (unlisted in help) as ``new_flag``, whose value lives in ``dest``."""
    kwargs = {"nargs": 0} if flag_is_switch else dict(kwargs)
    kwargs["default"] = argparse.SUPPRESS  # the new flag's default stands unless the old flag is given
    group.add_argument(old_flag, dest=dest, action=RenamedFlag, new_flag=new_flag, help=argparse.SUPPRESS, **kwargs)


def renamed_fields(options_class) -> dict[str, str]:
    """``{old name: new name}`` of an options dataclass's renamed fields."""
    return {f.metadata["was"]: f.name for f in dataclasses.fields(options_class) if f.metadata.get("was")}


def upgrade_keys(values: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    """``values`` with old keys replaced by their new names (one warning each); both spellings of
    one option at once is an error, since which one was meant is unclear."""
    upgraded = dict(values)
    for old, new in renames.items():
        if old not in upgraded:
            continue
        if new in upgraded:
            raise ArgumentError(f"{old} and {new} are the same option (its new name is {new}): give it once")
        warn_renamed(old, new)
        upgraded[new] = upgraded.pop(old)
    return upgraded
