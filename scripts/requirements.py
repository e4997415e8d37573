"""Print the pinned requirements from pyproject.toml (plus optional groups named on the command line).

skiff runs from its source tree and is not installed as a package; this keeps pyproject.toml the one place
where versions are pinned.
"""

import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
lines = list(project["dependencies"])
for group in sys.argv[1:]:
    lines += project["optional-dependencies"][group]
print("\n".join(lines))
