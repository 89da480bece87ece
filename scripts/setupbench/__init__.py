"""What it costs to reach a first answer, before any model speaks: install, start, conversion.

    first_command  README's first command on a fresh copy: wall time, longest silence
    startup        `localrun --help`, `list` and `--version` wall time
    convert        conversion, quantization and import against llama.cpp's tools

Run one as `python scripts/setupbench/NAME.py`; it puts scripts/ on sys.path for the packages the
scripts share (benchlib, testmodels, hubs). Answering speed is scripts/bench's.
"""
