"""``python -m chairside.pager --policy ...`` (same flags as ``chairside pager``)."""

from .service import main

raise SystemExit(main())
