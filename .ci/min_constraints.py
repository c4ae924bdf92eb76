"""Print pip constraints that pin every dependency pyproject.toml declares to its declared floor.

`make test-min` installs with them and runs the fast tests, so the floors are tested, not
guessed. A floor of two parts (`datasets>=4.0`) pins that series (`datasets==4.0.*`, its newest
patch release); three parts pin the release itself. Every dependency must have a `>=` floor.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

EXTRAS = ("test", "ct2", "plot", "hf")  # what `make install` installs


def main() -> None:
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    for extra in EXTRAS:
        deps += project["optional-dependencies"][extra]
    for dep in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9]+(?:\.[0-9]+)*)\s*", dep)
        if m is None:
            sys.exit(f"min_constraints: {dep!r} in pyproject.toml has no plain '>=' floor")
        name, floor = m[1], m[2]
        print(f"{name}=={floor}.*" if floor.count(".") < 2 else f"{name}=={floor}")


if __name__ == "__main__":
    main()
