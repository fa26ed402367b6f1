"""``prunekit export``: a checkpoint out to a serving format (GGUF for llama.cpp). Kept apart from
:mod:`prunekit.cli` because it is its own room: llama.cpp's converter and quantizer, not pruning."""

from __future__ import annotations

import argparse

from .export.llamacpp import OUTTYPES


def add_export_parser(sub) -> None:
    export = sub.add_parser("export", help="write a (pruned) checkpoint as GGUF with llama.cpp's converter/quantizer",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    export.add_argument("--model", required=True, metavar="DIR", help="Hugging Face checkpoint (e.g. a `prunekit prune` output)")
    export.add_argument("--format", default="gguf", choices=("gguf",), help="output format")
    export.add_argument("--outtype", default="f16", metavar="TYPE",
                        help=f"f32/f16/bf16 from the converter, or a llama.cpp quantization type ({', '.join(OUTTYPES[3:])})")
    export.add_argument("--imatrix", metavar="FILE.npz|calibration", help="importance matrix for the quantizer: a .npz "
                        "(per GGUF tensor name, the mean squared input of each column), or 'calibration' to compute "
                        "it from prunekit's calibration windows")
    export.add_argument("--calib", default="c4", metavar="CORPUS", help="corpus for --imatrix calibration")
    export.add_argument("--nsamples", type=int, default=64, help="windows for --imatrix calibration")
    export.add_argument("--seqlen", type=int, default=512, help="window length for --imatrix calibration")
    export.add_argument("--calib-seed", type=int, default=0, help="window seed for --imatrix calibration")
    export.add_argument("--data-root", metavar="DIR", help="folder of the named corpora")
    export.add_argument("--threads", type=int, help="quantizer threads (default: all cores)")
    export.add_argument("--out", required=True, metavar="FILE.gguf", help="output file (written under a temporary name, "
                        "renamed at the end)")
    export.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    export.add_argument("--no-progress", action="store_true", help="hide progress bars")


def cmd_export(args) -> int:
    from .export import export_gguf
    from .recipe import CalibrationSettings

    calibration = CalibrationSettings(args.calib, args.nsamples, args.seqlen, args.calib_seed)
    record = export_gguf(args.model, args.out, args.outtype, overwrite=args.overwrite, imatrix=args.imatrix,
                         calibration=calibration, data_root=args.data_root, threads=args.threads,
                         progress=not args.no_progress)
    arch = f" as llama.cpp '{record['gguf_architecture']}'" if record["gguf_architecture"] else ""
    print(f"wrote {record['file']} ({record['outtype']}, {record['size_mb']:.1f} MB{arch}, {record['seconds']:.0f} s)")
    for note in record["notes"]:
        print(f"note: {note}")
    return 0


def add_round_trip_args(group) -> None:
    """``prune --export-gguf [--outtype T]``: the pruned model also written as GGUF inside --out."""
    group.add_argument("--export-gguf", nargs="?", const="auto", metavar="TYPE",
                       help="also write OUT/OUT.TYPE.gguf (TYPE: a GGUF input's own, else f16)")
    group.add_argument("--outtype", help=argparse.SUPPRESS)  # the type spelled as `export` spells it


def plan_round_trip(args) -> dict | None:
    from .errors import ArgumentError
    from .export.gguf_export import input_gguf, plan_round_trip as plan

    if not args.export_gguf:
        if args.outtype:
            raise ArgumentError("--outtype applies with --export-gguf")
        return None
    if args.outtype and args.export_gguf != "auto":
        raise ArgumentError("give the GGUF type once: --export-gguf TYPE or --outtype TYPE")
    outtype = args.outtype or args.export_gguf
    if outtype == "auto":
        outtype = "same" if input_gguf(args.model, args.gguf_file) else "f16"
    return plan(args.model, outtype, args.gguf_file)


def finish_round_trip(args, plan: dict | None, out_dir) -> None:
    if plan is None:
        return
    from pathlib import Path

    from .export import export_gguf

    out_dir = Path(out_dir)
    record = export_gguf(out_dir, out_dir / f"{out_dir.name}.{plan['outtype']}.gguf", plan["outtype"])
    print(f"wrote {record['file']} ({record['outtype']}, {record['size_mb']:.1f} MB"
          + (", the input's type" if plan["source_gguf"] and (args.outtype or args.export_gguf) in ("auto", "same") else "")
          + ")")
    for note in record["notes"]:
        print(f"note: {note}")
