"""Every measured number the README states has a source in ``benchmarks/results/``.

A decimal number in the README's prose and tables (code blocks and inline code — flags, constants,
commands — aside) must appear in a results file as written, or be a value of a results JSON
rounded to the README's decimals. A figure typed by hand, or left behind when a benchmark was
re-run with different results, fails here, naming the line it sits on.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DECIMAL = re.compile(r"(?<![\w.])(\d+\.\d+)(?![\w.])")
JSON_NUMBER = re.compile(r"-?\d+\.\d+(?:[eE]-?\d+)?")


def _results() -> tuple[str, set[float]]:
    texts, values = [], set()
    for path in sorted((REPO / "benchmarks" / "results").rglob("*")):
        if path.is_file() and path.suffix in (".md", ".json"):
            text = path.read_text()
            texts.append(text)
            if path.suffix == ".json":
                values.update(float(m) for m in JSON_NUMBER.findall(text))
    return "\n".join(texts), values


def unsourced_numbers(readme: str, results_text: str, values: set[float]) -> list[str]:
    prose = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", readme, flags=re.S))
    missing = []
    for line in prose.splitlines():
        for number in DECIMAL.findall(line):
            if number in results_text:
                continue
            decimals = len(number.split(".")[1])
            if not any(abs(round(v, decimals) - float(number)) < 1e-9 for v in values):
                missing.append(f"{number} in: {line.strip()[:160]}")
    return missing


def test_every_readme_number_comes_from_a_results_file():
    results_text, values = _results()
    missing = unsourced_numbers((REPO / "README.md").read_text(), results_text, values)
    assert not missing, "README numbers with no source in benchmarks/results/:\n" + "\n".join(missing)


def test_a_hand_typed_number_is_caught():
    assert unsourced_numbers("| wanda | 12345.678 |", "| wanda | 46.04 |", {46.0412}) == [
        "12345.678 in: | wanda | 12345.678 |"]
    assert unsourced_numbers("WikiText-2 46.04, `--owl-lambda 0.08`", "", {46.0412}) == []
