"""``python -m s2c STAGE ARGS...``: the same as the ``s2c`` console command."""

from .stages import main

raise SystemExit(main())
