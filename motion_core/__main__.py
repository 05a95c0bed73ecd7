"""Command line: ``python -m motion_core <command>``.

* ``edit``: the pack's main job. With ``--comfyui DIR`` (or ``EYM_COMFYUI_DIR``) pointing at a
  ComfyUI install whose model folders hold the SD1.5 checkpoint, the openpose ControlNet and the
  OpenPose body model, it runs the shipped workflow headless on your videos. Without them it runs
  the self-check (the whole chain on built-in tiny models) and says so. Given real-edit options
  (``--comfyui``, ``--source``, ...) that cannot run, it lists what is missing and exits with 2.
* ``selfcheck``: the self-check only.
* ``bench``: per-phase speed, memory and TFLOP/s (see ``motion_core/apps/bench.py``).
* ``quality``: the method, its ablations and baselines scored against ground truth in the small world
  (see ``motion_core/apps/quality.py``).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m motion_core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")

    edit = sub.add_parser("edit", help="edit a video's motion (self-check when no SD1.5 weights are available)")
    from .apps.edit import add_edit_arguments

    add_edit_arguments(edit)

    check = sub.add_parser("selfcheck", help="run the whole chain on built-in tiny models")
    check.add_argument("--output", default="selfcheck_output", help="folder for the frames, video and report")
    check.add_argument("--frames", type=int, default=8, help="frames of the synthetic clip (2 to 64)")
    check.add_argument("--size", type=int, default=64, help="frame size in pixels (a multiple of 8, 32 to 512)")

    bench = sub.add_parser("bench", help="speed and memory benchmark")
    from .apps.bench import add_arguments as add_bench_arguments

    add_bench_arguments(bench)

    quality = sub.add_parser("quality", help="edit quality against ground truth in the small world (ablations, baselines)")
    from .apps.quality import add_arguments as add_quality_arguments

    add_quality_arguments(quality)

    args = parser.parse_args(argv)
    from .errors import InputError

    try:
        return _run(parser, args, argv)
    except InputError as exc:  # bad settings: the message, not a traceback
        print(f"python -m motion_core {args.command or 'edit'}: error: {exc}", file=sys.stderr)
        return 2


def _run(parser, args, argv) -> int:
    command = args.command or "edit"
    if command == "edit":
        if args.command is None:
            args = parser.parse_args(["edit"] + (argv or []))
        from .apps.edit import run_edit

        return run_edit(args)
    if command == "selfcheck":
        from .apps.selfcheck import run_selfcheck

        return 0 if run_selfcheck(args.output, frames=args.frames, size=args.size)["passed"] else 1
    if command == "quality":
        from .apps.quality import run as run_quality

        return run_quality(args)
    from .apps.bench import run as run_bench

    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
