"""``python -m pipeline container``: a run becomes the submission image of an organiser's contract.

    python -m pipeline container --run RUN --contract lumir|lumir25|remind2reg|l2r|oncoreg \\
        --out IMAGE.tar.gz [--sequence ceT1|T2] [--data TASK] [--tag NAME] [predict's overrides]

``--run``: a trained or imported run folder (``--checkpoint``, default best); ``--config``
instead: a network-free configuration (``predict.network`` "none" or ``predict.affine_only``), or for ``oncoreg`` the training
configuration the image trains with (``./train.sh``). In order, before the first write:

1. the resolved configuration (the run's ``config.json`` with ``--affine``, ``--instance-opt-steps``,
   ``--input-scale``, ``--target-spacing``), the checkpoint, the contract, the engine (``docker
   info``, ``docker compose version``) and the outputs (refused when they exist, unless ``--overwrite``);
2. a build context staged in a temporary folder: the files the Dockerfile copies (code, configs,
   published weights, requirements), the torch wheel when one is given, and ``submission/``: the
   contract record, the run's ``config.json`` (resolved), ``checkpoints/best.pt``, ``imported.json``,
   a trained run's network spacing (``dataset.json`` with only ``network_spacing_mm``); never data,
   the run's case lists, caches, logs or other checkpoints;
3. the Dockerfile's ``submission`` target built through ``docker compose build`` (BuildKit), with the
   base image of ``--base-image`` / ``BASE_IMAGE`` (the Dockerfile's CUDA PyTorch image by default;
   the CPU base of README "Containers" where nothing can be pulled) and ``--torch-wheel`` /
   ``TORCH_WHEEL`` or ``--torch-index`` / ``TORCH_INDEX`` (from the environment, else the
   repository's ``.env``, as the no-registry recipe writes them);
4. with ``--data TASK``: the image run on that task folder with the organiser's command line
   (``pipeline.container.handin``), measuring start-up, time per pair and peak memory; its fields
   are kept in ``STEM.check/`` (on LUMIR's validation folder: the ``validation_predictions.zip``
   content); an image that fails it is not exported (no file, no fields);
5. ``docker save IMAGE | gzip -c > OUT`` (atomically: a failed or interrupted export leaves no
   file), as the organisers' export scripts do;
6. beside ``OUT``: ``STEM.submission.json`` (contract, image, sizes, sha256, run, measurements, the
   organiser's command lines) and, for ``lumir``, the ``README.txt`` LUMIR's hand-in zip needs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learn2reg.cli import add_overwrite_argument, package_version, refuse_existing
from learn2reg.io import DataError, atomic_path, write_json
from pipeline.container import contracts, handin
from pipeline.container.contracts import PAIRS_ONCOREG, Contract

log = logging.getLogger(__name__)

PROJECT = Path(__file__).resolve().parents[2]
#: What the Dockerfile copies from its context (tests/pipeline/container/test_build.py checks it against the COPY lines).
PROJECT_FILES = ("Dockerfile", "pyproject.toml", "requirements.txt", "requirements-docker.txt", "requirements-lock.txt")
PROJECT_DIRS = ("docker", "configs", "learn2reg", "evaluation", "pipeline", "weights")
WHEELS = ".docker-wheels"
BUILD_ARGS = ("BASE_IMAGE", "TORCH_WHEEL", "TORCH_INDEX")
RUN_FILES = ("imported.json",)  # besides config.json and the checkpoint: provenance and licence of imported weights


@dataclass(frozen=True)
class Source:
    """What goes into the image: the resolved configuration and the checkpoint (``None``: network-free,
    or OncoReg's training configuration), where they came from."""

    config: dict[str, Any]
    config_hash: str
    checkpoint: Path | None
    run_dir: Path | None
    description: str
    #: a trained run's network spacing (its ``dataset.json``'s ``network_spacing_mm``), baked in as
    #: ``run/dataset.json`` with that key alone: prediction runs the network at it (``pipeline.prediction.scale``)
    network_spacing_mm: list[float] | None = None


def resolve_source(run_dir: Path | None, config_file: Path | None, checkpoint: str, contract: Contract,
                   overrides: Mapping[str, Any]) -> Source:
    """The run's resolved configuration and checkpoint (``predict``'s rules); ``DataError`` when the
    contract cannot use them (a configuration with a network but no weights, outside OncoReg)."""
    from pipeline.prediction.predictor import run_config  # torch: only once the arguments are known
    from pipeline.prediction.scale import GridPolicy, explicit_scale, trained_spacing

    cfg = run_config(run_dir, {**overrides, "config_file": config_file})
    ckpt = None
    if cfg.predict.uses_network:
        if checkpoint not in ("best", "last"):
            ckpt = Path(checkpoint)
        elif run_dir is not None:
            ckpt = run_dir / "checkpoints" / f"{checkpoint}.pt"
        elif contract.pairs != PAIRS_ONCOREG:
            raise DataError(f"{config_file}: not a network-free configuration (predict.network \"none\" or predict.affine_only): the network's weights "
                            f"need --run (only oncoreg trains inside the image)")
        if ckpt is not None and not ckpt.is_file():
            raise DataError(f"{ckpt}: checkpoint not found")
    spacing = trained_spacing(run_dir) if ckpt is not None else None
    stamp = hashlib.sha256(ckpt.read_bytes()).hexdigest() + GridPolicy(spacing, explicit_scale(dict(overrides), cfg)).stamp() if ckpt else ""
    digest = hashlib.sha256((cfg.digest() + stamp).encode()).hexdigest()[:16]
    kind = "imported" if run_dir is not None and (run_dir / "imported.json").is_file() else "trained" if ckpt else \
        "network-free" if not cfg.predict.uses_network else "training configuration"
    where = run_dir or config_file
    return Source(cfg.to_dict(), digest, ckpt, run_dir, f"{kind} ({where}{', ' + ckpt.name if ckpt else ''})",
                  list(spacing.spacing) if spacing is not None and spacing.source == "dataset.json" else None)


def build_settings(given: Mapping[str, str | None], environ: Mapping[str, str] = os.environ,
                   project: Path = PROJECT) -> tuple[dict[str, str], Path | None]:
    """The build arguments: given on the command line, else in the environment, else in the
    project's ``.env`` (the README's no-registry recipe); returns them (empty ones left out) and
    the torch wheel file (relative paths from ``.env``/the environment are the project's)."""
    dotenv = {}
    if (project / ".env").is_file():
        for line in (project / ".env").read_text().splitlines():
            key, sep, text = line.partition("=")
            if sep and key.strip() in BUILD_ARGS:
                dotenv[key.strip()] = text.strip().strip("'\"")
    args: dict[str, str] = {}
    wheel, wheel_base = None, Path.cwd()
    for key in BUILD_ARGS:
        value: str | None = given.get(key)
        if not value:
            value = environ.get(key) or dotenv.get(key)
            wheel_base = project if key == "TORCH_WHEEL" else wheel_base
        if value:
            args[key] = value
            log.info("%s=%s", key, value)
    if args.get("TORCH_WHEEL"):
        wheel = Path(args["TORCH_WHEEL"]) if Path(args["TORCH_WHEEL"]).is_absolute() else wheel_base / args["TORCH_WHEEL"]
        if not wheel.is_file():
            raise DataError(f"{wheel}: torch wheel not found (TORCH_WHEEL; docker/torch-wheel.sh makes one)")
        args["TORCH_WHEEL"] = f"{WHEELS}/{wheel.name}"
    return args, wheel


def stage_context(dest: Path, contract: Contract, source: Source, record: dict[str, Any], wheel: Path | None) -> Path:
    """The build context in ``dest``: the project files, the wheel, and ``submission/``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*.swp")
    if not (PROJECT / "Dockerfile").is_file():
        raise DataError(f"{PROJECT}: no Dockerfile: `container` builds from the project's source checkout")
    for name in PROJECT_FILES:
        shutil.copy2(PROJECT / name, dest / name)
    for name in PROJECT_DIRS:
        shutil.copytree(PROJECT / name, dest / name, ignore=ignore)
    (dest / WHEELS).mkdir()
    if (PROJECT / WHEELS / ".gitignore").is_file():  # as in a clone: the install layer's cache key is the folder's content
        shutil.copy2(PROJECT / WHEELS / ".gitignore", dest / WHEELS / ".gitignore")
    if wheel is not None:
        _link_or_copy(wheel, dest / WHEELS / wheel.name)
    sub = dest / "submission"
    (sub / "run" / "checkpoints").mkdir(parents=True)
    (sub / "bin").mkdir()
    write_json(sub / "contract.json", record)
    write_json(sub / "run" / "config.json", source.config)
    if source.checkpoint is not None:
        shutil.copyfile(source.checkpoint, sub / "run" / "checkpoints" / "best.pt")
    for name in RUN_FILES:
        if source.run_dir is not None and (source.run_dir / name).is_file():
            shutil.copyfile(source.run_dir / name, sub / "run" / name)
    if source.network_spacing_mm is not None:  # the spacing alone: not the run's pairs, cases or data folder
        write_json(sub / "run" / "dataset.json", {"network_spacing_mm": source.network_spacing_mm})
    scripts = PROJECT / "docker" / "submission" / contract.name
    for script in sorted(scripts.glob("*.sh")) if scripts.is_dir() else []:
        shutil.copyfile(script, sub / "bin" / script.name)
        (sub / "bin" / script.name).chmod(0o755)
    for path in sub.rglob("*"):
        if path.is_file() and path.parent.name != "bin":
            path.chmod(0o644)
    return dest


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def compose_file(context: Path, tag: str, contract: Contract, args: Mapping[str, str]) -> Path:
    """A compose file (JSON is YAML) that builds the ``submission`` target of ``context`` as ``tag``."""
    build_args = {**args, "SUBMISSION_WORKDIR": contract.workdir, "CONTRACT": contract.name}
    spec = {"services": {"submission": {"image": tag, "build": {
        "context": ".", "target": "submission", "network": "host", "args": build_args}}}}  # fmt: skip
    path = context / "compose.json"
    write_json(path, spec)
    return path


def docker(*args: str, check: bool = True, timeout: float | None = None, **kwargs: Any) -> subprocess.CompletedProcess:
    """``docker ARGS`` with text output captured; ``DataError`` with the output's tail on failure."""
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise DataError(f"docker {' '.join(args[:2])} failed (exit {proc.returncode}):\n{tail}")
    return proc


def check_engine() -> None:
    """``DataError`` unless a Docker engine answers and compose v2 is there (the build uses it)."""
    if shutil.which("docker") is None:
        raise DataError("no docker command: `container` builds with Docker (BuildKit, compose v2; README, \"Containers\")")
    info = docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=60)
    if info.returncode != 0:
        raise DataError(f"no Docker engine answers (docker info: {info.stderr.strip()[-300:]}); start one or set DOCKER_HOST")
    if docker("compose", "version", check=False, timeout=60).returncode != 0:
        raise DataError("docker compose (v2) is missing: the build runs through it (README, \"Containers\")")


def build_image(context: Path, tag: str, contract: Contract, args: Mapping[str, str]) -> str:
    """Build the ``submission`` target as ``tag``; returns the build's output (its log)."""
    path = compose_file(context, tag, contract, args)
    project = f"l2r-container-{os.getpid()}"
    started = time.perf_counter()
    proc = docker("compose", "-f", str(path), "-p", project, "build", "submission", cwd=context)
    log.info("built %s in %.0f s", tag, time.perf_counter() - started)
    return proc.stdout + proc.stderr


def export_image(tag: str, out: Path, level: int = 6) -> None:
    """``docker save TAG | gzip -c > OUT`` (``level``: gzip's, 6 its default), written atomically."""
    started = time.perf_counter()
    with atomic_path(out) as tmp, tmp.open("wb") as sink:
        save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        gzip = subprocess.Popen(["gzip", "-c", f"-{level}"], stdin=save.stdout, stdout=sink)
        assert save.stdout is not None
        save.stdout.close()  # gzip alone reads it: docker save gets SIGPIPE if gzip dies
        gzip_code, save_err = gzip.wait(), save.stderr.read().decode(errors="replace") if save.stderr else ""
        if save.wait() != 0 or gzip_code != 0:
            raise DataError(f"docker save {tag} | gzip failed (docker save exit {save.returncode}, gzip exit {gzip_code}): {save_err[-1000:]}")
    log.info("exported %s to %s (%.0f MB) in %.0f s", tag, out, out.stat().st_size / 1e6, time.perf_counter() - started)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def container(contract_name: str, out: Path, run_dir: Path | None = None, config_file: Path | None = None, *,
              sequence: str | None = None, tag: str | None = None, data: Path | None = None, checkpoint: str = "best",
              build_args: Mapping[str, str | None] | None = None, compress_level: int = 6, overwrite: bool = False,
              **overrides: Any) -> dict[str, Any]:
    """Build, export and describe the submission image (module docstring); returns the manifest."""
    contract = contracts.get(contract_name)
    modality = contracts.moving_modality(contract, sequence)
    source = resolve_source(run_dir, config_file, checkpoint, contract, overrides)
    if not out.name.endswith(".tar.gz"):
        raise DataError(f"{out}: the image file is a gzipped docker save (.tar.gz), as the organisers' export scripts write it")
    stem = out.name.removesuffix(".tar.gz")
    tag = tag or contract.default_tag + (f"-{sequence.lower()}" if sequence else "")
    tag = tag if ":" in tag.rsplit("/", 1)[-1] else f"{tag}:latest"
    written = [out, out.with_name(f"{stem}.submission.json"), *([out.with_name("README.txt")] if contract.name == "lumir" else [])]
    fields = out.with_name(f"{stem}.check")  # the check run's fields
    refuse_existing(written + ([fields] if data is not None else []), overwrite)
    if data is not None and not data.is_dir():
        raise DataError(f"{data}: task folder not found (--data)")
    if not 1 <= compress_level <= 9:
        raise DataError(f"--compress-level {compress_level}: gzip's levels are 1 (fastest) to 9 (smallest)")
    if not out.parent.is_dir():
        raise DataError(f"{out.parent}: folder not found (--out)")
    args, wheel = build_settings(build_args or {})
    check_engine()
    record = {"contract": contract.name, "moving_modality": modality, "sequence": sequence, "config_hash": source.config_hash,
              "source": source.description, "built_by": f"l2r-lapirn {package_version()}"}
    log.info("contract %s (%s); %s, config %s", contract.name, contract.title, source.description, source.config_hash)
    with tempfile.TemporaryDirectory(prefix="l2r-container-") as tmp:
        build_log = build_image(stage_context(Path(tmp), contract, source, record, wheel), tag, contract, args)
        check = None
        if data is not None:  # before the export: an image that fails its check leaves no file to hand in
            shutil.rmtree(fields, ignore_errors=True)  # --overwrite: the fields of an earlier check
            try:
                check = handin.check_run(contract, tag, data, modality, Path(tmp) / "check", fields)
            except BaseException:
                shutil.rmtree(fields, ignore_errors=True)
                raise
        export_image(tag, out, compress_level)
    inspect = read_json_text(docker("image", "inspect", tag, "--format", "{{json .}}").stdout)
    manifest = handin.manifest(contract, record, tag, out, inspect, sha256_file(out), args, check, build_log)
    write_json(written[1], manifest)
    if contract.name == "lumir":
        handin.write_lumir_readme(written[2], manifest)
    return manifest


def read_json_text(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise DataError(f"docker image inspect: unexpected output {text[:200]!r}")
    return value


def build_parser(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, default=None, help="run folder (trained, or import-weights'): its config.json and checkpoint")
    source.add_argument("--config", type=Path, default=None,
                        help="a network-free configuration (predict.network \"none\" or predict.affine_only); for oncoreg also a training configuration")
    parser.add_argument("--contract", required=True, choices=tuple(contracts.CONTRACTS), help="whose container contract (README, \"Hand in a submission\")")
    parser.add_argument("--sequence", default=None, help="remind2reg: the moving MR sequence of this image, ceT1 or T2 (one image each)")
    parser.add_argument("--out", type=Path, required=True, help="the image file to hand in, NAME.tar.gz (docker save | gzip)")
    parser.add_argument("--tag", default=None, help="image name (default: the template's where its scripts name one, reg_model for LUMIR; else lapirn-CONTRACT[-SEQUENCE])")
    parser.add_argument("--data", type=Path, default=None,
                        help="a task folder of the contract's layout: run the image on it with the organiser's command line and measure")
    parser.add_argument("--compress-level", type=int, default=6, metavar="N",
                        help="gzip level of the image file, 1 (fastest) to 9 (smallest); 6 is `gzip -c`'s, as the organisers' export scripts")
    parser.add_argument("--checkpoint", default="best", help="best | last | PATH (baked in as best.pt)")
    parser.add_argument("--affine", choices=("none", "rigid", "affine"), default=None, help="override predict.affine")
    parser.add_argument("--instance-opt-steps", type=int, default=None, help="override predict.instance_opt_steps")
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--input-scale", type=float, default=None, metavar="S", help="override predict.input_scale")
    scale.add_argument("--target-spacing", type=float, default=None, metavar="MM", help="override predict.target_spacing")
    parser.add_argument("--base-image", default=None, help="BASE_IMAGE (default: $BASE_IMAGE, .env, else the Dockerfile's CUDA PyTorch image)")
    parser.add_argument("--torch-wheel", default=None, help="TORCH_WHEEL: a torch wheel file (default: $TORCH_WHEEL, .env)")
    parser.add_argument("--torch-index", default=None, help="TORCH_INDEX: a wheel index for the pinned torch (default: $TORCH_INDEX, .env)")
    add_overwrite_argument(parser, "the image file and the hand-in files beside it")


def run(args: argparse.Namespace) -> int:
    manifest = container(
        args.contract, args.out, args.run, args.config, sequence=args.sequence, tag=args.tag, data=args.data,
        checkpoint=args.checkpoint, compress_level=args.compress_level, overwrite=args.overwrite,
        build_args={"BASE_IMAGE": args.base_image, "TORCH_WHEEL": args.torch_wheel, "TORCH_INDEX": args.torch_index},
        affine=args.affine, instance_opt_steps=args.instance_opt_steps, input_scale=args.input_scale, target_spacing=args.target_spacing,
    )  # fmt: skip
    print("\n".join(handin.next_steps(manifest)))
    return 0
