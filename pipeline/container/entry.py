"""The entry point of a submission image: ``python -m pipeline.container.entry [ARGS]``.

The image (the Dockerfile's ``submission`` target, made by ``python -m pipeline container``) holds
one run (``$L2R_SUBMISSION/run``: the resolved ``config.json``, ``checkpoints/best.pt`` unless the
run is network-free, ``imported.json`` for imported weights) and ``contract.json`` naming the
organiser's contract (``pipeline.container.contracts``). Started as the organiser's command line
starts it, it

1. runs as a non-root user: started as root (no ``--user``), it becomes the owner of the folder it
   writes (or the image's user, ``L2R_APP_UID``, when that folder belongs to root and that user may
   write it; only when nobody but root may write there does it stay root, and says so);
2. reads exactly the inputs the contract mounts, checks all of them before loading the model, and
   exits 1 with one message listing every missing input;
3. registers every pair (the prediction path of ``predict``: ``register_images``), on CUDA when
   the container has a GPU, else on the CPU, and writes each field under the name the task's
   evaluator accepts, in the template's layout and header;
4. logs plain progress lines to stdout (one per pair with its time), and a last ``summary`` line
   with a JSON object: pairs, seconds per pair, start-up seconds, peak memory, CPUs, device.

Arguments per contract: ``l2r``: ``[-c] DATASET_JSON [-t]`` (the json's ``registration_test``
pairs, else its ``registration_val``; ``-t``: test pairs only; no json: the only
``*_dataset.json`` of ``/l2r/data``). ``oncoreg``: ``train TASK`` (``./train.sh``) and ``test
TASK Val|Ts`` (``./test.sh``). The others take none (extra arguments are logged and ignored, as
the templates ignore them). Exit codes: 0 every pair written, 1 a problem with the inputs or a
pair (message on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from learn2reg.io import DataError, read_json
from pipeline.container import contracts
from pipeline.container.contracts import PAIRS_ONCOREG, Contract
from pipeline.container.jobs import Mounts, writable

log = logging.getLogger("l2r-submission")

SUBMISSION = Path(os.environ.get("L2R_SUBMISSION", "/app/submission"))
CONTRACT_FILE = "contract.json"
RUN_DIR = "run"


def load_contract(root: Path = SUBMISSION) -> tuple[Contract, dict[str, Any]]:
    """The contract baked into the image and its record (``contract.json``)."""
    record = read_json(root / CONTRACT_FILE)
    if not isinstance(record, dict) or "contract" not in record:
        raise DataError(f"{root / CONTRACT_FILE}: not a submission record (no 'contract')")
    return contracts.get(record["contract"]), record


def become_user(folder: Path, fallback_uid: int) -> str:
    """Started as root: switch to the owner of ``folder`` (the folder this run writes) when it is
    not root, else to ``fallback_uid`` (the image's user) when that one may write there; stay root
    only when nobody else may. Returns the line that says who runs. Not root: nothing changes."""
    if os.geteuid() != 0:
        return f"running as uid {os.getuid()}, gid {os.getgid()}"
    st = folder.stat() if folder.is_dir() else None
    if st is not None and st.st_uid != 0:
        uid, gid, why = st.st_uid, st.st_gid, f"the owner of {folder}"
    elif st is None or writable(folder, fallback_uid, fallback_uid):
        uid, gid, why = fallback_uid, fallback_uid, "the image's user"  # a missing folder is reported by the checks
    else:
        return f"running as root: {folder} belongs to root and only root may write it (run with --user UID:GID, or give the folder to a user)"
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    return f"running as uid {uid}, gid {gid} ({why})"


def parse_args(contract: Contract, argv: list[str]) -> argparse.Namespace:
    """The contract's arguments (module docstring); unknown extras are kept to be logged."""
    parser = argparse.ArgumentParser(prog=f"submission image ({contract.name})", add_help=True)
    if contract.name == "l2r":
        parser.add_argument("json", nargs="?", type=Path, default=None, help="the dataset json (also as -c)")
        parser.add_argument("-c", dest="json_c", type=Path, default=None, help="the dataset json")
        parser.add_argument("-t", "--test_data", dest="test", action="store_true", help="registration_test pairs only")
        parser.add_argument("-x", dest="ignored_x", action="store_true", help=argparse.SUPPRESS)  # the template's test.sh passes it
    elif contract.pairs == PAIRS_ONCOREG:
        parser.add_argument("verb", choices=("train", "test"), help="train (./train.sh) or test (./test.sh)")
        parser.add_argument("task", help="the task: its {task}_dataset.json in /oncoreg/data (ThoraxCBCT, OncoReg)")
        parser.add_argument("mode", nargs="?", default=None, help="test: Val or Ts")
    args, extra = parser.parse_known_args(argv)
    args.extra = extra
    return args


def main(argv: list[str] | None = None, root: Path = SUBMISSION, mounts: Mounts | None = None, switch_user: bool = True) -> int:
    """Run the image's contract; ``root`` and ``mounts`` are the image's own unless a test gives
    others (and ``switch_user=False``: the test process keeps its user)."""
    started = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout, force=True)
    try:
        contract, record = load_contract(root)
        argv = list(sys.argv[1:] if argv is None else argv)
        if contract.pairs == PAIRS_ONCOREG and argv and argv[0] not in ("train", "test", "-h", "--help"):
            argv = ["test", *argv]  # the image's default entry point with `TASK MODE`: test.sh's job
        args = parse_args(contract, argv)
        mounts = mounts or Mounts.of(contract)
        training = getattr(args, "verb", None) == "train"
        writes = mounts.model if training and mounts.model else mounts.output
        who = become_user(writes, int(os.environ.get("L2R_APP_UID", "10001"))) if switch_user else f"running as uid {os.getuid()}"
        if contract.pairs == PAIRS_ONCOREG:
            _log_to_file(writes / "debug.log")  # the template logs into the folder it writes
        log.info("contract %s: %s; %s", contract.name, contract.title, who)
        if args.extra:
            log.info("ignoring arguments %s (the %s contract takes none of them)", " ".join(args.extra), contract.name)
        if training:
            from pipeline.container.run import train_in_image

            return train_in_image(root / RUN_DIR, mounts, args.task)
        from pipeline.container.run import register_all

        return register_all(contract, record, root / RUN_DIR, mounts, args, started)
    except (DataError, OSError) as exc:  # OSError: a file that vanished or cannot be read mid-way
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2


def _stop(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _log_to_file(path: Path) -> None:
    if path.parent.is_dir() and os.access(path.parent, os.W_OK):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
        logging.getLogger().addHandler(handler)


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see pipeline/cli.py)
    for sig in (signal.SIGTERM, signal.SIGINT):  # as PID 1 (no --init) an unhandled SIGTERM would be ignored
        signal.signal(sig, _stop)
    sys.exit(main())
