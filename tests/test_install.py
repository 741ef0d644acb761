"""The installed distribution is one top-level package, `fluxstream`, so it can sit next to an
application with its own `schemas`, `query`, `streams` and `indexer` modules (the usual FastAPI layout).

The repository's root indexer/, query/, streams/, schemas/ are symlinks into fluxstream/; a wheel that
shipped them as top-level packages would shadow (or be shadowed by) such an application's modules.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP_MODULES = ("schemas", "query", "streams", "indexer")
PROBE = """
import json, sys
import schemas, query, streams, indexer
import fluxstream.client, fluxstream.search_client
sdk_pulled_in = sorted({m.split(".")[0] for m in sys.modules} & {"faust", "fastapi", "redis", "psycopg", "openai"})
import fluxstream, fluxstream.query.http.app, fluxstream.streams.app
print(json.dumps({"fluxstream": fluxstream.__file__, "service": fluxstream.query.http.app.__file__,
                  "app": {name: [sys.modules[name].__file__, sys.modules[name].WHOSE] for name in sys.argv[1:]},
                  "sdk_pulled_in": sdk_pulled_in}))
"""


def build_wheel(tmp: Path) -> Path:
    """A wheel built from a copy of the sources (no build/ or egg-info left in the repository)."""
    src = tmp / "src"
    shutil.copytree(ROOT / "fluxstream", src / "fluxstream", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                    "-w", str(tmp / "dist")], check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp / "dist").glob("fluxstream-*.whl")
    return wheel


def test_installed_next_to_an_app_with_its_own_schemas_query_streams(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"fluxstream", wheel.name.split("-py")[0] + ".dist-info"}
    schemas = {f"fluxstream/schemas/json/{p.name}" for p in (ROOT / "fluxstream/schemas/json").glob("*.json")}
    assert schemas and schemas <= set(names)
    assert {"fluxstream/py.typed", "fluxstream/sample/corpus.ndjson"} <= set(names)
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "fluxstream").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert sorted(sources - set(names)) == []  # every file of the package ships (data files need package-data)

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=120)
    app = tmp_path / "app"
    app.mkdir()
    for name in APP_MODULES:
        (app / f"{name}.py").write_text(f"WHOSE = 'app'  # the application's own {name} module\n")
    env = {**os.environ, "PYTHONPATH": f"{app}{os.pathsep}{site}"}
    result = subprocess.run([sys.executable, "-c", PROBE, *APP_MODULES], cwd=app, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(found["fluxstream"]).is_relative_to(site)
    assert Path(found["service"]).is_relative_to(site)
    for name in APP_MODULES:
        assert found["app"][name] == [str(app / f"{name}.py"), "app"]
    assert found["sdk_pulled_in"] == []  # the SDK needs only schemas and the floor (pyproject's layers)
