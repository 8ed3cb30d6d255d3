"""tools/setup.sh runs under ``sh``; pyproject.toml declares its licence the current way."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.licenses import canonicalize_license_expression

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "tools" / "setup.sh"


def test_setup_sh_reruns_itself_with_bash_under_sh(tmp_path: Path) -> None:
    """``sh tools/setup.sh`` (dash on Debian: no ``pipefail``, no arrays) must
    hand over to bash before the first bash-only line.  The script's own
    prelude, up to and including ``set -euo pipefail``, is run under ``sh``
    with a probe after it (running the whole script here would install things)."""
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no sh")
    text = SETUP.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert SETUP.stat().st_mode & 0o111, "tools/setup.sh must be executable"
    marker = "set -euo pipefail\n"
    assert marker in text
    probe = tmp_path / "setup-prelude.sh"
    probe.write_text(text[: text.index(marker) + len(marker)] + 'echo "bash=${BASH_VERSION:-none}"\n')
    result = subprocess.run([sh, str(probe)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("bash=") and "bash=none" not in result.stdout, result.stdout


def test_pyproject_license_is_an_spdx_expression() -> None:
    """``license = {text = ...}`` is deprecated by setuptools (a warning on
    every install) in favour of a PEP 639 SPDX expression string."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    license_ = project["project"]["license"]
    assert isinstance(license_, str), "license must be an SPDX expression string, not a table"
    assert canonicalize_license_expression(license_) == license_
    assert not any(c.startswith("License ::") for c in project["project"].get("classifiers", []))
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    assert "setuptools>=77" in requires, "PEP 639 license strings need setuptools 77 or later"
