"""pyproject.toml lists its packages by hand (``[tool.setuptools] packages``): every source folder with an
``__init__.py`` must be listed, else a wheel install lacks it while an editable install hides the gap."""

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    folders = {package: REPO / folder for package, folder in setuptools["package-dir"].items()}
    folders |= {"lerobot_defi": REPO / "lerobot_defi", "lerobot_policy_defi": REPO / "lerobot_policy_defi"}
    found = set()
    for package, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            found.add(".".join((package, *init.parent.relative_to(folder).parts)))
    assert {
        "lerobot_defi.pretrain.gfdm",
        "lerobot_defi.pretrain.gidm",
        "lerobot_defi.pretrain.shared",
    } <= found
    assert found - listed == set(), (
        f"package folders missing from pyproject's packages: {sorted(found - listed)}"
    )
    assert listed - found == set(), f"pyproject lists packages without a folder: {sorted(listed - found)}"
