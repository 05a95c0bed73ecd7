"""Command-line jobs: edit (headless ComfyUI), selfcheck, bench, quality."""
