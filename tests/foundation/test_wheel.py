"""The wheel carries everything the installed package needs (schemas, protos, the CLI).

Built from a copy of the sources, installed into a fresh virtualenv outside the repository
with nothing of the checkout on its path; its ``sfprov --help`` runs and it decodes an
outcome the repository's code encoded. The dependencies come from the project's
virtualenv (added to the fresh one's path), so the test needs no network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

from common.avro import AvroSerde

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "connectors", "streams", "sinks", "sandbox", "ops", "schemas")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(src)], check=True, timeout=300,
                   env=clean_env(), cwd=base)
    wheel = next(dist.glob("sfprov-*.whl"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=300,
                   env=clean_env())
    # dependencies from our virtualenv: a plain path entry (its .pth files, among them the
    # editable install of this checkout, are not processed from there)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig;"
                                "print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return wheel, venv, base


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "SFPROV_STATE_DIR", "SFPROV_ENV_FILE")}


def test_the_wheel_carries_schemas_and_protos(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for schema in (ROOT / "schemas").rglob("*.avsc"):  # schemas/history/ too
        assert schema.relative_to(ROOT).as_posix() in names
    assert "connectors/pubsub/proto/pubsub_api.proto" in names
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names)


def test_installed_cli_runs_outside_the_repository(installed):
    _, venv, base = installed
    result = subprocess.run([str(venv / "bin" / "sfprov"), "--help"], cwd=base,
                            env=clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("topics", "tail", "lag", "trace", "reconcile", "dlq", "acls"):
        assert command in result.stdout


def test_installed_package_decodes_an_outcome(installed):
    _, venv, base = installed
    completed = int(time.time() * 1000)
    value = AvroSerde("provisioning_outcome").encode({
        "order_id": "801000000000001AAA", "status": "Provisioned", "whmcs_order_id": 42,
        "completed_at": completed})
    code = ("import sys, common.avro as a\n"
            "o = a.AvroSerde('provisioning_outcome').decode(bytes.fromhex(sys.argv[1]))\n"
            "print(a.__file__, o['order_id'], o['status'], o['whmcs_order_id'])")
    result = subprocess.run([str(venv / "bin" / "python"), "-c", code, value.hex()], cwd=base,
                            env=clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    module, order_id, status, whmcs_order_id = result.stdout.split()
    assert Path(module).is_relative_to(venv), module  # the installed copy, not the checkout
    assert (order_id, status, whmcs_order_id) == ("801000000000001AAA", "Provisioned", "42")


def test_the_image_installs_wheels_only():
    """Docker cannot run here: the Dockerfile's structure says the runtime stage gets the
    wheels of a build stage, and neither the source tree nor build-only packages."""
    text = (ROOT / "Dockerfile").read_text()
    _, build, runtime = re.split(r"^FROM ", text, flags=re.M)
    assert build.startswith("python:3.11-slim AS build")
    assert "COPY --from=build /wheels /wheels" in runtime
    assert "pip install --no-index --find-links /wheels sfprov" in runtime
    assert "COPY common" not in runtime and "pip wheel" not in runtime
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith(("grpcio-tools", "setuptools", "wheel"))
                   for dep in project["dependencies"])
