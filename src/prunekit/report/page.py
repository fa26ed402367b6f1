"""One page per pruned model, from its ``prunekit.json``: what was done, on what data, what it cost.

The page is a list of sections of blocks (text, bullet list, table, figure). The same sections are
rendered twice: ``report.md`` (figures as PNG files beside it) and ``report.html``, which embeds
the figures as data URIs so the single file can be mailed or attached to a ticket. Optional
inputs add quality and cost: the pruned model's ``prunekit eval --json`` output, the dense
model's, and ``prunekit bench --json``.
"""

from __future__ import annotations

import base64
import html
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..data.tasks import read_json_file
from ..errors import DataError
from ..io import RECORD_NAME, atomic_directory
from .plots import allocation_plot, bar_plot, heat_map, line_plot, recovery_loss_plot


@dataclass
class Section:
    title: str
    blocks: list[tuple] = field(default_factory=list)  # ("text", s) ("list", items) ("table", header, rows) ("figure", file, caption)

    def text(self, value: str) -> "Section":
        self.blocks.append(("text", value))
        return self

    def items(self, values: list[str]) -> "Section":
        self.blocks.append(("list", values))
        return self

    def table(self, header: list[str], rows: list[list]) -> "Section":
        self.blocks.append(("table", header, [[_cell(v) for v in row] for row in rows]))
        return self

    def figure(self, file: str, caption: str) -> "Section":
        self.blocks.append(("figure", file, caption))
        return self


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def read_record(run_dir: Path) -> dict:
    return read_json_file(Path(run_dir) / RECORD_NAME, f"run record ({RECORD_NAME})")


_LAYER = re.compile(r"\.(\d+)\.")


def _layer_of(module: str) -> int | None:
    match = _LAYER.search(module)
    return int(match.group(1)) if match else None


def _per_layer_sparsity(record: dict) -> dict[int, float]:
    """Zero fraction per decoder layer, weighted by each matrix's size where the shapes are known."""
    sizes = {name: m["shape"][0] * m["shape"][1] for step in record.get("steps", []) for layer in step.get("layers", [])
             for name, m in layer.get("modules", {}).items() if "shape" in m}
    zeros, total = defaultdict(float), defaultdict(float)
    for name, fraction in record.get("sparsity", {}).get("layers", {}).items():
        index = _layer_of(name)
        if index is not None:
            weight = sizes.get(name, 1)
            zeros[index] += fraction * weight
            total[index] += weight
    return {i: zeros[i] / total[i] for i in sorted(total)}


def _recon_errors(step: dict) -> dict[str, dict[int, float]]:
    """Relative reconstruction error per matrix role (the module name's last part) per layer."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for layer in step.get("layers", []):
        for name, module in layer.get("modules", {}).items():
            if module.get("recon_error") is not None:
                series[name.rsplit(".", 1)[-1]][layer.get("index", _layer_of(name))] = module["recon_error"]
    return series


def build_sections(record: dict, run_dir: Path, figures: Path, *, evaluation: dict | None = None,
                   baseline: dict | None = None, cost: dict | None = None,
                   analyses: list[Path] = ()) -> list[Section]:
    """The page's sections; figures are written into ``figures``."""
    model = record.get("model", {})
    versions = record.get("prunekit", {})
    overview = Section("Run").items([
        f"model: `{model.get('model')}` ({model.get('family')}, {model.get('num_layers')} layers, {model.get('dtype')})",
        f"output: `{run_dir}`",
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "platform"),
        f"peak RSS of the run: {_cell(record.get('peak_rss_mb'))} MB",
    ])
    sections = [overview, _recipe(record), _provenance(record)]
    sections += _sparsity_and_errors(record, figures)
    # a step's own files (SPP's path.json) sit beside the page: in the run directory, or in the
    # directory being saved when the page is rendered during `save`
    sections += _method_specific(record, figures, [figures.parent, run_dir])
    sections += _analyses(list(analyses), figures)
    sections += _quality(record, evaluation, baseline)
    if cost:
        sections.append(_llamacpp(cost) if cost.get("engine") == "llama.cpp" else _cost(cost))
    sections.append(_timings(record))
    return sections


def _recipe(record: dict) -> Section:
    rows = []
    for number, step in enumerate(record.get("recipe", {}).get("steps", []), 1):
        target = step.get("pattern") or step.get("sparsity")
        options = ", ".join(f"{k}={v}" for k, v in (step.get("options") or {}).items())
        layers = step.get("layers")
        layers = f"{len(layers)} layers" if isinstance(layers, list) and len(layers) > 6 else layers
        rows.append([number, step.get("method"), target, layers, options])
    return Section("Recipe").table(["step", "method", "target", "layers", "options"], rows)


def _provenance(record: dict) -> Section:
    section = Section("Data provenance")
    rows = []
    for number, calib in enumerate(record.get("calibration", []), 1):
        if not calib:
            rows.append([number, "none", "–", "–", "–", "–"])
            continue
        files = ", ".join(Path(f).name for f in calib.get("files", []))
        rows.append([number, calib.get("corpus"), files, calib.get("nsamples"), calib.get("seqlen"),
                     (calib.get("sha256") or "")[:12]])
    return section.table(["step", "calibration corpus", "files", "windows", "tokens each", "sha256"], rows)


def _sparsity_and_errors(record: dict, figures: Path) -> list[Section]:
    sections = []
    per_layer = _per_layer_sparsity(record)
    if per_layer:
        overall = record.get("sparsity", {}).get("overall")
        bar_plot(list(per_layer.values()), figures / "sparsity.png", title="Zero fraction per decoder layer",
                 xlabel="layer", ylabel="sparsity")
        sections.append(Section("Sparsity").text(f"Overall sparsity of the decoder linears: {_cell(overall)}.")
                        .figure("sparsity.png", "zero fraction of each layer's linears (size-weighted)"))
    for number, step in enumerate(record.get("steps", []), 1):
        errors = _recon_errors(step)
        if not errors:
            continue
        file = f"recon_error_step{number}.png"
        layers = sorted({i for s in errors.values() for i in s})
        line_plot({role: [s.get(i, float("nan")) for i in layers] for role, s in errors.items()}, figures / file,
                  title=f"Relative reconstruction error, step {number} ({step['step'].get('method')})",
                  xlabel="layer", ylabel="||WX - ŴX||² / ||WX||²", x=layers, logy=True)
        mean = sum(v for s in errors.values() for v in s.values()) / sum(len(s) for s in errors.values())
        sections.append(Section(f"Reconstruction error (step {number})")
                        .text(f"Mean over matrices: {mean:.4g}, on the calibration inputs.")
                        .figure(file, "per matrix role, per layer"))
    return sections


def _method_specific(record: dict, figures: Path, homes: list[Path]) -> list[Section]:
    sections = []
    for number, step in enumerate(record.get("steps", []), 1):
        if "depth" in step:
            depth = step["depth"]
            section = Section(f"Depth (step {number})").items([
                f"metric: {depth.get('metric')}", f"removed layers: {depth.get('remove')}",
                f"layers: {depth.get('layers_before')} → {depth.get('layers_after')}"])
            if depth.get("bi"):
                file = f"bi_step{number}.png"
                bar_plot(depth["bi"], figures / file, title="Block Influence per layer (removed in red)",
                         xlabel="layer", ylabel="BI", highlight=depth.get("remove") or [])
                section.figure(file, "Block Influence, 1 − cos(input, output) of each layer")
            sections.append(section)
        if "width" in step:
            width = step["width"]
            sections.append(Section(f"Width (step {number})").table(["quantity", "value"], [
                ["importance", width.get("importance")], ["ratio", width.get("ratio")],
                ["parameters before", width.get("params_before")], ["parameters after", width.get("params_after")],
                ["removed fraction", width.get("params_removed_fraction")]]))
            path_file = next((home / width["path_file"] for home in homes if width.get("path_file")
                              and (home / width["path_file"]).is_file()), None)
            if path_file is not None:
                from ..methods.solution_path import plot_path, read_path

                file = f"path_step{number}.png"
                plot_path(read_path(path_file), figures / file)
                sections[-1].text(f"Solution path saved as `{width['path_file']}`: `prunekit materialize --path RUN_DIR "
                                  "--sparsity S --out OUT` cuts any other level without a new search.")
                sections[-1].figure(file, "SPP path: units entered vs iteration, and per layer")
        if "allocation" in step:
            sections.append(_allocation(step, number, figures))
        if "lowrank" in step:
            lowrank = step["lowrank"]
            sections.append(Section(f"Low rank (step {number})").items([
                f"matrices clipped: {len(lowrank.get('modules', []))}",
                f"parameters in the selected matrices: {_cell(lowrank.get('params_selected'))}"]))
        if "recovery" in step and step["recovery"].get("losses"):
            recovery = step["recovery"]
            file = f"recovery_loss_step{number}.png"
            recovery_loss_plot(recovery, figures / file)
            section = Section(f"Recovery (step {number})")
            if recovery.get("heldout_loss_before") is not None:
                section.items([f"objective on {recovery['heldout_windows']} held-out windows: "
                               f"{recovery['heldout_loss_before']:.4f} before, {recovery['heldout_loss_after']:.4f} after"])
            if recovery.get("objective") == "kd":
                section.items([f"teacher: {recovery['teacher'].get('model')} ({recovery['teacher'].get('mode')})",
                               f"trained: {recovery.get('params')}, {recovery.get('tokens')} tokens",
                               f"pruned entries moved before the re-mask: {recovery.get('pruned_entries_moved_before_remask')}",
                               f"peak RSS: {recovery.get('peak_rss_mb')} MB"])
            sections.append(section.figure(file, "training loss" + (" and its parts" if recovery.get("objective") == "kd" else "")))
    return sections


def _allocation(step: dict, number: int, figures: Path) -> Section:
    """A non-uniform allocation: each layer's sparsity (and outlier ratio) beside its error."""
    allocation = step["allocation"]
    layers = sorted(int(k) for k in allocation["sparsity"])
    sparsity = [allocation["sparsity"][str(i)] for i in layers]
    ratios = allocation.get("outlier_ratio")
    errors = _recon_errors(step)
    mean_error = None
    if errors:
        per_layer = defaultdict(list)
        for series in errors.values():
            for index, value in series.items():
                per_layer[index].append(value)
        mean_error = [sum(per_layer[i]) / len(per_layer[i]) if per_layer[i] else float("nan") for i in layers]
    file = f"allocation_step{number}.png"
    target = step["step"].get("sparsity")
    allocation_plot(layers, sparsity, figures / file, target=target if target is not None else sum(sparsity) / len(sparsity),
                    outlier_ratio=[ratios[str(i)] for i in layers] if ratios else None, recon_error=mean_error,
                    title=f"Sparsity allocation ({allocation['mode']}), step {number}")
    settings = ", ".join(f"{k} {v}" for k, v in allocation.get("settings", {}).items())
    section = Section(f"Sparsity allocation (step {number})").items([
        f"mode: {allocation['mode']}" + (f" ({settings})" if settings else ""),
        f"layer sparsity: {min(sparsity):.4f} – {max(sparsity):.4f} around the target {_cell(target)}"])
    caption = "allocated sparsity per layer" + (" with the outlier ratio" if ratios else "")
    if mean_error is None:
        section.text("Add `--report-error` to see each layer's reconstruction error beside its allocation.")
    else:
        caption += ", and the layer's mean reconstruction error"
    return section.figure(file, caption)


def _analyses(folders: list[Path], figures: Path) -> list[Section]:
    """Folders written by ``prunekit analyze --out``: their BI profile and spectra."""
    sections = []
    for number, folder in enumerate(folders, 1):
        if (folder / "bi.json").is_file():
            bi = read_json_file(folder / "bi.json", "Block Influence")
            file = f"analysis{number}_bi.png"
            bar_plot(bi["bi"], figures / file, title="Block Influence per layer (dense model)", xlabel="layer",
                     ylabel="BI")
            sections.append(Section(f"Block Influence ({folder.name})")
                            .text(f"Ascending BI (removal order): {' '.join(map(str, bi.get('order', [])))}.")
                            .figure(file, "1 − mean cos(input, output) of each decoder layer"))
        if (folder / "spectrum.json").is_file():
            spectrum = read_json_file(folder / "spectrum.json", "spectrum")
            table, modules = spectrum["condition_number"], spectrum["modules"]
            file = f"analysis{number}_spectrum.png"
            heat_map([[row.get(m, float("nan")) for m in modules] for row in table.values()], figures / file,
                     title="Condition number σmax/σmin", colorbar="σmax/σmin",
                     row_labels=[f"layer {i}" for i in table], col_labels=modules)
            sections.append(Section(f"Spectra ({folder.name})").figure(file, "condition number per layer and matrix"))
    return sections


def _quality(record: dict, evaluation: dict | None, baseline: dict | None) -> list[Section]:
    sections = []
    ppl = dict(record.get("ppl") or {})
    ppl.update((evaluation or {}).get("ppl") or {})
    dense_ppl = (baseline or {}).get("ppl") or {}
    if ppl:
        rows = [[name, value, dense_ppl.get(name), (value / dense_ppl[name]) if dense_ppl.get(name) else None]
                for name, value in ppl.items()]
        sections.append(Section("Perplexity").table(["dataset", "pruned", "dense", "ratio"], rows))
    tasks = (evaluation or {}).get("tasks") or {}
    dense_tasks = (baseline or {}).get("tasks") or {}
    if tasks:
        rows = []
        for name, result in tasks.items():
            dense = dense_tasks.get(name, {})
            rows.append([name, result.get("examples"), result.get("acc"), dense.get("acc"), result.get("acc_norm"),
                         dense.get("acc_norm")])
        summary = evaluation.get("zero_shot", {})
        rows.append(["mean", None, summary.get("mean_acc"), (baseline or {}).get("zero_shot", {}).get("mean_acc"),
                     None, None])
        sections.append(Section("Zero-shot tasks (lm-evaluation-harness)").table(
            ["task", "examples", "acc", "dense acc", "acc_norm", "dense acc_norm"], rows))
    icl = (evaluation or {}).get("icl") or {}
    dense_icl = (baseline or {}).get("icl") or {}
    if icl:
        rows = [[name, r.get("shots"), r.get("examples"), r.get("accuracy"), dense_icl.get(name, {}).get("accuracy")]
                for name, r in icl.items()]
        sections.append(Section("Few-shot in-context learning").table(["task", "shots", "examples", "accuracy",
                                                                        "dense accuracy"], rows))
    if not sections:
        sections.append(Section("Quality").text("No evaluation in the record: prune with --eval, or pass "
                                                "`--eval FILE` from `prunekit eval --json`."))
    return sections


def _cost(cost: dict) -> Section:
    model, base, ratios = cost.get("model", {}), cost.get("baseline") or {}, cost.get("ratios", {})
    labels = {"params": "parameters", "params_nonzero": "non-zero parameters", "weights_mb": "weights as loaded MB",
              "disk_mb": "weights on disk MB",
              "peak_rss_load_mb": "peak RSS loading MB", "peak_rss_generate_mb": "peak RSS generating MB",
              "prefill_ms": "prefill ms", "decode_tok_s": "decode tokens/s"}
    rows = [[label, model.get(key), base.get(key), ratios.get(key)] for key, label in labels.items()]
    settings = cost.get("settings", {})
    section = Section("Cost").table(["quantity", "pruned", "dense", "ratio"], rows).text(
        f"{settings.get('batch')} prompts × {settings.get('prompt_len')} tokens, {settings.get('new_tokens')} decoded "
        f"tokens, median of {settings.get('repeats')} after a warm-up, on {model.get('device')}.")
    return section.items(cost["notes"]) if cost.get("notes") else section


def _llamacpp(bench: dict) -> Section:
    """The "llama.cpp" section, from ``prunekit bench --engine llama.cpp --json``."""
    speed, ratios = bench["speed"], bench.get("ratios", {})
    model, base = speed["model"], speed.get("baseline") or {}
    labels = {"file_mb": ("GGUF file MB", "file_mb"), "load_s": ("load s", None),
              "prompt_tok_s": ("prompt tokens/s", "prompt_speedup"), "gen_tok_s": ("generation tokens/s", "gen_speedup")}
    rows = [[label, model.get(key), base.get(key), ratios.get(ratio) if ratio else None]
            for key, (label, ratio) in labels.items()]
    for name, entry in bench.get("perplexity", {}).items():
        rows.append([f"{name} perplexity, llama.cpp ({entry['windows']} × {entry['seqlen']})",
                     entry.get("model_llamacpp"), entry.get("baseline_llamacpp"), None])
        if "model_prunekit" in entry or "baseline_prunekit" in entry:
            rows.append([f"{name} perplexity, prunekit on the HF checkpoint", entry.get("model_prunekit"),
                         entry.get("baseline_prunekit"), None])
    return Section("llama.cpp").table(["quantity", "pruned", "dense", "ratio"], rows).text(
        f"llama-cpp-python {bench.get('llama_cpp_python')}, {bench.get('threads')} threads; prompt "
        f"{model.get('prompt_len')} tokens, {model.get('new_tokens')} generated; medians of {model.get('repeats')} runs, "
        "pruned and dense timed in turns. Zeros of a masked model are stored and multiplied like any weight in GGUF.")


def _timings(record: dict) -> Section:
    timings = record.get("timings", {})
    rows = [["load", timings.get("load")]]
    for i, step in enumerate(timings.get("steps", []), 1):
        for k, v in step.items():  # a step's phases (statistics, solve, ...) are nested one level down
            rows += [[f"step {i} {k}: {phase}", seconds] for phase, seconds in v.items()] if isinstance(v, dict) \
                else [[f"step {i} {k}", v]]
    rows += [[k, v] for k, v in timings.items() if k not in ("load", "steps")]
    return Section("Timings (seconds)").table(["phase", "seconds"], rows)


def render_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            kind = block[0]
            if kind == "text":
                lines += [block[1], ""]
            elif kind == "list":
                lines += [f"- {item}" for item in block[1]] + [""]
            elif kind == "table":
                header, rows = block[1], block[2]
                lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
            elif kind == "figure":
                lines += [f"![{block[2]}]({block[1]})", ""]
    return "\n".join(lines)


_STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;
color:#1d1d1f}h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f5}img{max-width:100%}figcaption{color:#666;
font-size:.9em}code{background:#f3f3f5;padding:0 .2em}"""


def render_html(title: str, sections: list[Section], figures: Path) -> str:
    def inline(text: str) -> str:  # `code` spans, everything else escaped
        parts = html.escape(text).split("`")
        return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))

    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for section in sections:
        out.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            kind = block[0]
            if kind == "text":
                out.append(f"<p>{inline(block[1])}</p>")
            elif kind == "list":
                out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in block[1]) + "</ul>")
            elif kind == "table":
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
                body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block[2])
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif kind == "figure":
                data = base64.b64encode((figures / block[1]).read_bytes()).decode()
                out.append(f"<figure><img alt='{html.escape(block[2])}' src='data:image/png;base64,{data}'>"
                           f"<figcaption>{html.escape(block[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(run_dir: str | Path, out: str | Path | None = None, *, evaluation: str | Path | None = None,
                 baseline: str | Path | None = None, cost: str | Path | None = None,
                 analyses: list[str | Path] = (), overwrite: bool = False) -> Path:
    """Write ``report.html`` (self-contained), ``report.md`` and its PNGs to ``out`` (default
    ``RUN_DIR/report``, replaced), atomically. Every input file is read before anything is written."""
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    folders = [Path(a) for a in analyses]
    for folder in folders:
        if not any((folder / name).is_file() for name in ("bi.json", "spectrum.json")):
            raise DataError(f"{folder}: no bi.json or spectrum.json (folders written by `prunekit analyze --out`)")
    extra = {key: read_json_file(Path(path), what) if path else None
             for key, path, what in (("evaluation", evaluation, "evaluation JSON"),
                                     ("baseline", baseline, "baseline evaluation JSON"), ("cost", cost, "bench JSON"))}
    # the default place holds the page `prunekit prune` wrote: regenerating it replaces it
    with atomic_directory(out or run_dir / "report", overwrite or out is None) as tmp:
        render_report(record, tmp, run_dir, analyses=folders, **extra)
    return Path(out or run_dir / "report")


def render_report(record: dict, directory: Path, run_dir: Path, **inputs) -> None:
    """Write ``report.md``, ``report.html`` and the figures into the existing ``directory``.

    Without an explicit ``evaluation``, the last evaluation step of a recipe run is used.
    """
    if inputs.get("evaluation") is None:
        inputs["evaluation"] = next((s["evaluation"] for s in reversed(record.get("steps", [])) if "evaluation" in s),
                                    None)
    title = f"prunekit report: {Path(str(record.get('model', {}).get('model', run_dir))).name} → {Path(run_dir).name}"
    sections = build_sections(record, Path(run_dir), directory, **inputs)
    (directory / "report.md").write_text(render_markdown(title, sections))
    (directory / "report.html").write_text(render_html(title, sections, directory))
