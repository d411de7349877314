"""The package as pip installs it: every subpackage listed, so a wheel holds all of sdlab."""
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_in_the_wheel():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "sdlab").rglob("__init__.py")
             if "__pycache__" not in init.parts}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"


def test_the_wheel_holds_the_model_and_the_course_images_where_notebooks_find_them(tmp_path):
    """What Colab's `pip install` gets: no checkout, only the package."""
    import subprocess
    import sys
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "wheel"), str(ROOT)], check=True, capture_output=True)
    [wheel] = (tmp_path / "wheel").glob("sdlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"sdlab/images/02_reference.png", "sdlab/models/sdlab-tiny/model_index.json",
            "sdlab/data/clip_tokenizer/vocab.json"} <= names
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True)
    (tmp_path / "elsewhere").mkdir()
    code = ("from sdlab.checks import course_file; from sdlab.presets import tiny_model_dir; "
            "print(course_file('images/02_reference.png')); print(tiny_model_dir())")
    found = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "elsewhere",
                           env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, check=True).stdout.split()
    site = (tmp_path / "site" / "sdlab").resolve()
    assert found == [str(site / "images" / "02_reference.png"), str(site / "models" / "sdlab-tiny")]  # the preset too
