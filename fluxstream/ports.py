"""Who listens on a TCP port: free-port checks before `fluxstream dev` starts, and readiness
checks that make sure the server answering is our own child, not whatever holds the port.

Linux: listening sockets from /proc/net/tcp{,6}, their owners from /proc/*/fd. Elsewhere the
owner is unknown and callers fall back to weaker checks.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

_LISTEN = "0A"


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on ``port`` (any address); None without /proc."""
    inodes: set[str] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == _LISTEN and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    return inodes if readable else None


def listening_pids(port: int) -> set[int] | None:
    """Processes holding a socket that listens on ``port``; None when this cannot be known here.

    Sockets of other users' processes are not visible: an empty set then means "someone".
    """
    inodes = _listening_inodes(port)
    if inodes is None:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    pids: set[int] = set()
    if not targets:
        return pids
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in os.scandir(proc / "fd"):
                if os.readlink(fd.path) in targets:
                    pids.add(int(proc.name))
                    break
        except OSError:  # gone, or not ours to read
            continue
    return pids


def describe_process(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        args = []
    args = [a for a in args if a]
    if args:  # the program's name, not its full path: 'python -m fluxstream.cli serve'
        args[0] = Path(args[0]).name
    cmdline = " ".join(" ".join(args).split())
    if len(cmdline) > 100:
        cmdline = cmdline[:97] + "..."
    return f"pid {pid} ({cmdline})" if cmdline else f"pid {pid}"


def holder(port: int) -> str:
    """'pid 123 (python -m fluxstream.cli serve)', or 'another process' when it cannot be told."""
    pids = listening_pids(port)
    if pids:
        return ", ".join(describe_process(pid) for pid in sorted(pids))
    return "another process"


def bind_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port`` now ("in use by pid ..."), or None.

    Binds with SO_REUSEADDR, as uvicorn and aiohttp do: a port in TIME_WAIT counts as free.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"in use by {holder(port)}"
            return f"cannot be bound ({exc.strerror})"
    return None


def listens(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds the listening socket on ``port`` (None: cannot tell here)."""
    pids = listening_pids(port)
    return None if pids is None else pid in pids
