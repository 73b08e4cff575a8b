"""``python -m sandbox.salesforce <command>``; see :mod:`.cli`."""

from .cli import main

raise SystemExit(main())
