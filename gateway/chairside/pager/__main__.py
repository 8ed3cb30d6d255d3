"""``python -m chairside.pager --policy ...`` (same flags as ``chairside pager``)."""

from .command import main

raise SystemExit(main())
