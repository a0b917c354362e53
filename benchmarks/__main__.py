"""``python -m benchmarks``: run every benchmark; see ``benchmarks/runner.py`` and --help."""

from benchmarks.runner import main

raise SystemExit(main())
