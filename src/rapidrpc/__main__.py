"""``python -m rapidrpc`` is the ``rapidrpc`` command."""

from .cli import main

raise SystemExit(main())
