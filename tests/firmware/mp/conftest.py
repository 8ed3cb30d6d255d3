# Make `csfw` and `mptest` importable when pytest runs these files on CPython.
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIRMWARE = HERE.parents[2] / "firmware"
for extra in (HERE, FIRMWARE):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))
