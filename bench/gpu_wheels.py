"""The wheels a GPU machine lacks (``bench/gpu_wheels.txt``): which files in a folder are the listed
ones, and the folder made ready to carry. Standard library only (it runs before anything is installed).

    python3 bench/gpu_wheels.py DIR --has NAME==VERSION   # exit 0 when DIR holds that wheel
    python3 bench/gpu_wheels.py DIR --tidy                # one version each, large wheels recompressed, sizes

``bash bench/gpu_wheels.sh`` downloads the list and then runs ``--tidy``. Recompressing rewrites
a wheel's zip members with LZMA instead of deflate: the same files byte for byte (its RECORD
hashes still hold), which pip installs as before (Python's zipfile reads LZMA members), at about
half the size for SimpleITK's 270 MB library (53 MB -> 29 MB).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIST = REPO / "bench" / "gpu_wheels.txt"
CARRY_LIMIT = 64 * 2**20  # the device tool's limit on the working tree that travels, carried paths included
REPACK_ABOVE = 8 * 2**20  # wheels larger than this (bytes) are recompressed with LZMA


def normalise(name: str) -> str:
    """PEP 503 form of a distribution name (``SimpleITK`` -> ``simpleitk``, ``surface_distance`` -> ``surface-distance``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_list(path: Path = LIST) -> list[tuple[str, str]]:
    """``(name, version)`` of every ``NAME==VERSION`` line (comments and blank lines skipped);
    ``ValueError`` for any other line or a package listed twice."""
    wanted: list[tuple[str, str]] = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        if not match:
            raise ValueError(f"{path}:{number}: expected NAME==VERSION, got {raw!r}")
        if normalise(match[1]) in {normalise(n) for n, _ in wanted}:
            raise ValueError(f"{path}:{number}: {match[1]} is listed twice")
        wanted.append((match[1], match[2]))
    return wanted


def wheel_name_version(path: Path) -> tuple[str, str]:
    """``(normalised name, version)`` from a wheel's file name ``NAME-VERSION[-BUILD]-PY-ABI-PLATFORM.whl``."""
    parts = path.name[: -len(".whl")].split("-")
    if len(parts) not in (5, 6):
        raise ValueError(f"{path.name}: not a wheel file name")
    return normalise(parts[0]), parts[1]


def select(folder: Path, wanted: list[tuple[str, str]]) -> tuple[list[Path], list[str], list[Path]]:
    """The wheels of ``folder`` that are listed (one per entry), the entries missing from it, and
    the other wheels there (other versions or packages: not installed)."""
    found: dict[tuple[str, str], Path] = {}
    others = []
    keys = {(normalise(n), v) for n, v in wanted}
    for path in sorted(folder.glob("*.whl")):
        try:
            key = wheel_name_version(path)
        except ValueError:
            others.append(path)
            continue
        if key in keys and key not in found:
            found[key] = path
        else:
            others.append(path)
    missing = [f"{n}=={v}" for n, v in wanted if (normalise(n), v) not in found]
    return [found[k] for k in sorted(found)], missing, others


def is_lzma(path: Path) -> bool:
    with zipfile.ZipFile(path) as zf:
        largest = max(zf.infolist(), key=lambda i: i.file_size)
        return largest.compress_type == zipfile.ZIP_LZMA


def repack(path: Path) -> int:
    """Rewrite the wheel ``path`` with every member LZMA-compressed (names, order, dates and bytes
    unchanged; each member read back and compared before the original is replaced); returns the new size."""
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_LZMA) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info), compress_type=zipfile.ZIP_LZMA)
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp) as dst:
        if [i.filename for i in src.infolist()] != [i.filename for i in dst.infolist()] or any(
            src.read(i) != dst.read(i.filename) for i in src.infolist()
        ):
            tmp.unlink()
            raise RuntimeError(f"{path}: the recompressed copy differs; original kept")
    os.replace(tmp, path)
    return path.stat().st_size


def tree_bytes(repo: Path = REPO) -> int | None:
    """Bytes of the files git tracks in ``repo`` (what travels besides the wheels), or ``None`` without git."""
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum((repo / n).stat().st_size for n in names.decode().split("\0") if n and (repo / n).is_file())


def tidy(folder: Path, wanted: list[tuple[str, str]]) -> int:
    """Remove other versions of the listed packages, recompress listed wheels above
    :data:`REPACK_ABOVE`, print what will travel; exit code 1 if a listed wheel is missing."""
    chosen, missing, others = select(folder, wanted)
    names = {normalise(n) for n, _ in wanted}
    for path in others:
        if path.name.endswith(".whl") and wheel_name_version(path)[0] in names:
            print(f"removing {path.name} (another version of a listed package)")
            path.unlink()
        else:
            print(f"note: {path.name} is not listed in {LIST.name}; gpu_check.sh will not install it")
    for path in chosen:
        if path.stat().st_size > REPACK_ABOVE and not is_lzma(path):
            before = path.stat().st_size
            print(f"recompressing {path.name} ({before / 1e6:.1f} MB) ...", flush=True)
            print(f"  -> {repack(path) / 1e6:.1f} MB")
    total = sum(p.stat().st_size for p in chosen)
    for path in chosen:
        print(f"{path.stat().st_size / 1e6:8.2f} MB  {path.name}")
    print(f"{total / 1e6:8.2f} MB  {len(chosen)} wheels in {folder}")
    tree = tree_bytes()
    if tree is not None:
        print(f"{tree / 1e6:8.2f} MB  tracked files; together {(tree + total) / 2**20:.1f} MiB of the device tool's 64 MiB")
        if tree + total > CARRY_LIMIT:
            print("warning: the wheels and the working tree exceed 64 MiB together", file=sys.stderr)
    for spec in missing:
        print(f"error: {spec} is missing from {folder}", file=sys.stderr)
    return 1 if missing else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="wheel folder (e.g. .whl)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--has", metavar="NAME==VERSION", help="exit 0 if the folder holds this wheel")
    group.add_argument("--tidy", action="store_true", help="one version each, recompress large wheels, print sizes")
    args = parser.parse_args(argv)
    if args.has:
        name, _, version = args.has.partition("==")
        return 0 if args.folder.is_dir() and not select(args.folder, [(name, version)])[1] else 1
    return tidy(args.folder, read_list())


if __name__ == "__main__":
    sys.exit(main())
