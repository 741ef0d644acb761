"""The running dev stack's URLs in ``<state_dir>/env``, so other commands find it.

`fluxstream dev` picks free ports on every start; it writes the URLs it uses to this file (mode
0600: URLs may hold credentials) and removes it when it stops. Every other command run with the
same state directory fills the variables that are not set from it. The file is ``KEY=VALUE``
lines, shell-quoted (``set -a; . .fluxstream/env`` works too), with the writer's pid in a
comment: a file left by a stack that was killed is recognised as stale and ignored.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fluxstream.core.settings import ENV_PREFIX, Settings

ENV_FILE = "env"
# What changes between dev stack starts, and what a client needs to reach the stack.
EXPORTED = ("kafka_url", "redis_url", "database_url", "http_port", "worker_web_port")
# With `dev --cdc`: what `fluxstream status` (its CDC line, the CDC topics' lag) needs to find the capture.
EXPORTED_CDC = ("cdc_source_url", "cdc_tables", "cdc_config", "cdc_topic_prefix", "cdc_slot", "cdc_web_port")
_PID_PREFIX = "# pid="


@dataclass(frozen=True)
class DevEnv:
    path: Path
    pid: int
    values: dict[str, str]

    @property
    def running(self) -> bool:
        """The stack that wrote the file is still there (same pid, still a fluxstream process)."""
        return process_is_fluxstream(self.pid)


def env_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / ENV_FILE


def write(state_dir: str | Path, settings: Settings, pid: int | None = None) -> Path:
    """Write the file (readable by the owner only) before anyone can read a partial one."""
    path = env_path(state_dir)
    own = os.getpid() if pid is None else pid
    lines = ["# written by `fluxstream dev`; removed when it stops. Commands run with this state directory",
             "# use these values for the variables that are not set.",
             f"{_PID_PREFIX}{own}"]
    exported = EXPORTED + (EXPORTED_CDC if settings.cdc_source_url else ())
    lines += [f"{ENV_PREFIX}{name.upper()}={shlex.quote(str(getattr(settings, name)))}" for name in exported]
    scratch = path.with_name(f".{ENV_FILE}.{own}")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    os.replace(scratch, path)
    return path


def remove(state_dir: str | Path, pid: int | None = None) -> None:
    """Remove the file if this process (or ``pid``) wrote it: never another running stack's."""
    found = read(state_dir)
    if found is not None and found.pid == (os.getpid() if pid is None else pid):
        found.path.unlink(missing_ok=True)


def read(state_dir: str | Path) -> DevEnv | None:
    path = env_path(state_dir)
    try:
        text = path.read_text()
    except OSError:
        return None
    pid, values = 0, {}
    for line in text.splitlines():
        if line.startswith(_PID_PREFIX):
            pid = int(line[len(_PID_PREFIX):].strip() or 0)
        elif line.strip() and not line.startswith("#") and "=" in line:
            key, _, raw = line.partition("=")
            parts = shlex.split(raw)
            values[key.strip()] = parts[0] if parts else ""
    return DevEnv(path, pid, values)


def process_is_fluxstream(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    try:
        return b"fluxstream" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): alive is all we can tell


def environ_with_dev_stack(state_dir: str | Path, environ: Mapping[str, str] | None = None,
                           announce: bool = True) -> dict[str, str]:
    """``environ`` with the unset variables filled from a running dev stack's file (said on stderr)."""
    env = dict(os.environ if environ is None else environ)
    found = read(state_dir)
    if found is None:
        return env
    missing = {k: v for k, v in found.values.items() if not env.get(k)}
    if not missing:
        return env
    if not found.running:
        if announce:
            print(f"fluxstream: ignoring {found.path}: the dev stack that wrote it (pid {found.pid}) is not running",
                  file=sys.stderr)
        return env
    if announce:
        print(f"fluxstream: using the dev stack's URLs from {found.path}", file=sys.stderr)
    return {**env, **missing}
