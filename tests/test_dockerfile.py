"""The container runs as a non-root user: the Dockerfile says so statically, and scripts/docker_smoke.sh checks it
on the built image and on the running server (docker is too slow for CI here; see the README's Docker section)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_image_ends_as_a_non_root_user_and_the_smoke_test_checks_it():
    dockerfile = (REPO / "Dockerfile").read_text()
    user = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)[-1]
    assert user not in ("root", "0"), user
    uid = re.search(rf"useradd --uid (\d+)\b[^\n]*\b{re.escape(user)}\b", dockerfile)
    assert uid and int(uid.group(1)) != 0, "the USER must be created with a non-zero uid"
    smoke = (REPO / "scripts" / "docker_smoke.sh").read_text()
    assert "the image runs as root" in smoke and "/proc/1/status" in smoke  # image user and server process
