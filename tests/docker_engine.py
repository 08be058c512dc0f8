"""A throw-away Docker engine for the container tests, and the locally built base image.

The CI machines (Debian bookworm, root, no registry, no NVIDIA runtime) have a ``docker`` client
but no engine. This module makes ``make test`` self-sufficient there, following
``../shared/docs/docker-on-these-machines.md`` (beside the repository):

1. ``dockerd`` from Debian's ``docker.io`` (installed with apt-get when missing), started by hand
   with its own data root, exec root and socket under a temporary folder, without touching the
   host network (``--bridge=none --iptables=false --ip-forward=false``); stopped by its pid and
   the temporary folder removed afterwards.
2. The compose v2 CLI plugin, taken from Debian trixie's ``docker-compose`` package with a private
   apt state (the host's apt configuration is left alone) and cached in ``~/.docker/cli-plugins``.
3. The local Debian base image with Python, standing in for the official PyTorch image that cannot
   be pulled here: made by ``docker/local-base.sh``, the script the README's no-registry recipe runs,
   with its root filesystem tarball cached under ``CACHE_DIR`` so that later runs skip debootstrap.

Everything is a subprocess call; failures raise ``EngineError`` with the command and its output.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_DIR = Path(os.environ.get("L2R_DOCKER_CACHE", "/var/tmp/l2r-docker"))
PLUGIN_DIR = Path.home() / ".docker" / "cli-plugins"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
REPO = Path(__file__).resolve().parents[1]
LOCAL_BASE_SCRIPT = REPO / "docker" / "local-base.sh"
LOCAL_BASE_TAG = "l2r-base:bookworm"  # the script's default, which the README uses
# The engine's data root (~2 GB, ~45k files after the image build) goes on a tmpfs when memory
# allows: removing it from the CI disk (ext4 with online discard) takes minutes, unmounting is instant.
TMPFS_SIZE_GIB = 6
TMPFS_MIN_AVAILABLE_GIB = 10


class EngineError(RuntimeError):
    """A step of setting up the engine, the plugin or the base image failed."""


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """Hold an exclusive lock on ``CACHE_DIR`` (concurrent test workers install/build one at a time)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Engine:
    """A Docker engine the tests talk to.

    ``env`` is the environment for every ``docker`` call (``DOCKER_HOST`` points at the engine).
    ``process`` and ``root`` are set only when this module started the engine: ``stop_engine``
    then stops that process and removes ``root`` (data root, exec root, socket, log).
    """

    env: Mapping[str, str]
    process: subprocess.Popen | None = None
    root: Path | None = None


def sh(
    cmd: Sequence[str | os.PathLike],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
    check: bool = True,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess:
    """Run ``cmd`` capturing text output; raise ``EngineError`` (with the output's tail) on failure."""
    args = [str(c) for c in cmd]
    log.info("$ %s", " ".join(args))
    try:
        proc = subprocess.run(
            args, env=dict(env) if env is not None else None, cwd=cwd, timeout=timeout,
            input=stdin, capture_output=True, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"{' '.join(args)}: {exc}") from exc
    result = subprocess.CompletedProcess(
        args, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    )
    if check and result.returncode != 0:
        tail = (result.stdout + result.stderr)[-4000:]
        raise EngineError(f"{' '.join(args)} exited {result.returncode}:\n{tail}")
    return result


def engine_answers(env: Mapping[str, str]) -> bool:
    """True when ``docker info`` reaches an engine within a few seconds."""
    if shutil.which("docker") is None:
        return False
    try:
        return sh(["docker", "info", "--format", "{{.ServerVersion}}"], env=env, timeout=20, check=False).returncode == 0
    except EngineError:
        return False


def apt_install(packages: Sequence[str]) -> None:
    """``apt-get update`` then ``apt-get install -y`` (root only), non-interactively."""
    if os.geteuid() != 0:
        raise EngineError(f"installing {', '.join(packages)} needs root (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh(["apt-get", "update", "-q"], env=env, timeout=600)
    sh(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], env=env, timeout=900)


def ensure_host_tools() -> None:
    """Install ``docker.io`` (dockerd) and ``debootstrap`` with apt-get where missing."""
    wanted = {"dockerd": "docker.io", "debootstrap": "debootstrap"}
    missing = [pkg for tool, pkg in wanted.items() if shutil.which(tool) is None]
    if missing:
        apt_install(missing)


def memory_available_gib() -> float:
    """``MemAvailable`` from /proc/meminfo in GiB (0 if unreadable)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def start_engine(timeout_s: float = 90, tmpfs: bool | None = None) -> Engine:
    """Start a private ``dockerd`` (root) under a new temporary folder; wait until it answers.

    ``tmpfs``: put the data root on a tmpfs of TMPFS_SIZE_GIB (default: when at least
    TMPFS_MIN_AVAILABLE_GIB of memory is available).
    """
    root = Path(tempfile.mkdtemp(prefix="l2r-dockerd-", dir="/tmp"))
    (root / "data").mkdir()
    if tmpfs if tmpfs is not None else memory_available_gib() >= TMPFS_MIN_AVAILABLE_GIB:
        sh(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE_GIB}g,mode=0711", "l2r-dockerd", root / "data"])
    sock = root / "docker.sock"
    cmd = [
        "dockerd", "--iptables=false", "--ip-forward=false", "--bridge=none",
        "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
        "--pidfile", str(root / "dockerd.pid"), "--host", f"unix://{sock}",
    ]
    log_file = (root / "dockerd.log").open("wb")
    # The daemon's temporary files (docker save and docker load stage a whole image there, ~2 GB for ours)
    # go to the disk beside the data root, not onto its tmpfs (DOCKER_TMPDIR, dockerd's documented variable).
    (root / "tmp").mkdir()
    env = {**os.environ, "DOCKER_TMPDIR": str(root / "tmp")}
    process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    log_file.close()
    engine = Engine(env={**os.environ, "DOCKER_HOST": f"unix://{sock}"}, process=process, root=root)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if sock.exists() and engine_answers(engine.env):
            return engine
        time.sleep(0.5)
    tail = (root / "dockerd.log").read_text(errors="replace")[-3000:]
    stop_engine(engine)
    raise EngineError(f"dockerd did not answer within {timeout_s:.0f} s:\n{tail}")


def _unmount_below(root: Path) -> None:
    """Unmount anything still mounted below ``root`` (deepest first) so it can be removed."""
    with contextlib.suppress(OSError):
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        prefix = str(root) + "/"
        for target in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
            sh(["umount", "-l", target], check=False, timeout=30)


def stop_engine(engine: Engine) -> None:
    """Stop the engine by its pid (only one this module started) and remove its temporary root."""
    if engine.process is not None and engine.process.poll() is None:
        log.info("stopping dockerd (pid %d)", engine.process.pid)
        engine.process.send_signal(signal.SIGTERM)
        try:
            engine.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            engine.process.kill()
            engine.process.wait(timeout=30)
    if engine.root is not None:
        log.info("removing %s", engine.root)
        _unmount_below(engine.root)
        shutil.rmtree(engine.root, ignore_errors=True)
        if engine.root.exists():
            log.warning("could not remove %s completely", engine.root)


def ensure_engine() -> Engine:
    """An engine that answers: the configured one if it does, else a private one started here."""
    env = dict(os.environ)
    if engine_answers(env):
        return Engine(env=env)
    ensure_host_tools()
    return start_engine()


def compose_works(env: Mapping[str, str]) -> bool:
    """True when ``docker compose version`` runs (the v2 CLI plugin is found)."""
    return sh(["docker", "compose", "version"], env=env, check=False, timeout=30).returncode == 0


def ensure_compose_plugin(env: Mapping[str, str]) -> None:
    """Install the compose v2 CLI plugin from Debian trixie into ``PLUGIN_DIR`` if compose is missing."""
    if compose_works(env):
        return
    with cache_lock():
        if not compose_works(env):
            _install_compose_plugin(env)


def _install_compose_plugin(env: Mapping[str, str]) -> None:
    """Download Debian trixie's docker-compose package with a private apt state; copy out the plugin."""
    state = CACHE_DIR / "apt-trixie"
    for sub in ("lists/partial", "cache/archives/partial", "sources.list.d", "deb"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "sources.list").write_text(f"deb {DEBIAN_MIRROR} trixie main\n")
    apt = [
        "apt-get", "-q", "-o", f"Dir::Etc::SourceList={state / 'sources.list'}",
        "-o", f"Dir::Etc::SourceParts={state / 'sources.list.d'}", "-o", f"Dir::State::Lists={state / 'lists'}",
        "-o", f"Dir::Cache={state / 'cache'}",
    ]
    sh([*apt, "update"], timeout=600)
    debs = state / "deb"
    for old in debs.glob("*.deb"):
        old.unlink()
    sh([*apt, "download", "docker-compose"], cwd=debs, timeout=600)
    deb = next(debs.glob("docker-compose_*.deb"), None)
    if deb is None:
        raise EngineError(f"apt-get download docker-compose left no .deb in {debs}")
    with tempfile.TemporaryDirectory(prefix="l2r-compose-") as tmp:
        sh(["dpkg", "-x", deb, tmp])
        plugin = Path(tmp) / "usr/libexec/docker/cli-plugins/docker-compose"
        if not plugin.is_file():
            raise EngineError(f"{deb} holds no usr/libexec/docker/cli-plugins/docker-compose")
        PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
        partial = PLUGIN_DIR / ".docker-compose.partial"
        shutil.copyfile(plugin, partial)
        partial.chmod(0o755)
        partial.replace(PLUGIN_DIR / "docker-compose")
    if not compose_works(env):
        raise EngineError(f"docker compose still does not run after installing {PLUGIN_DIR / 'docker-compose'}")


def ensure_base_image(engine: Engine, tag: str = LOCAL_BASE_TAG) -> str:
    """The local base image ``tag`` in ``engine``: ``docker/local-base.sh TAG`` (kept if it exists;
    its root filesystem tarball cached in ``CACHE_DIR``, locked by the script)."""
    if shutil.which("debootstrap") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        apt_install(["debootstrap"])
    sh(["sh", LOCAL_BASE_SCRIPT, tag], env={**engine.env, "L2R_DOCKER_CACHE": str(CACHE_DIR)}, timeout=1200)
    return tag
