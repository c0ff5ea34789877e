"""Allows `python -m wmpd`."""

from wmpd.cli import main

raise SystemExit(main())
