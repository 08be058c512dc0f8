"""The organisers' submission-container contracts, as data (no torch, no Docker calls).

Each current Learn2Reg task has its own contract for the image a participant hands in: where
the organiser mounts the data, which pairs the image must register, which files it must write,
and the exact ``docker run`` command line the organiser's test script uses. Sources (read in the
organisers' repositories; see also ``../shared/docs/learn2reg-current.md`` and
``tests/fixtures/organisers/SPEC.md`` section 5):

=============  ================================================================================
``lumir``      JHU-MedImage-Reg/LUMIR_L2R@9b88e63 ``Test_phase_submission/DockerImage_Template/``
               (Dockerfile, test.sh, export.sh, infer_script.py) and README.md (hand-in zip)
``lumir25``    JHU-MedImage-Reg/LUMIR25_L2R25@62d3ae4 ``LUMIR25_Docker_Example/`` (Dockerfile,
               test.sh, export.sh, infer_VFA.py)
``remind2reg`` ReubenDo/ReMIND2Reg@f1974de ``docker/`` (README.md, Dockerfile_t1/_t2,
               src/run_inference_t1.py/_t2.py)
``l2r``        MDL-UzL/L2R@8847509 ``examples/submission_example/`` (README.md, zerofield/Dockerfile,
               test.sh, zerofield.py)
``oncoreg``    MDL-UzL/OncoReg@fb49e32 ``examples/`` (readme.md, VoxelMorph++/readme.md, Dockerfile,
               train.sh, test.sh, inference_vxmpp.py, utils/data_utils.py)
=============  ================================================================================

Field files: the name is the one the contract's evaluator accepts (:func:`learn2reg.rules.disp_name`
of :attr:`Contract.rules`), float32 voxel displacements on the fixed grid (pull), in the layout and
with the header the organiser's template writes (:attr:`Contract.channel_first`, :attr:`Contract.affine`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from learn2reg.io import DataError

PAIRS_JSON = "json"  # the pairs of a dataset json (a key of it), image paths relative to the input folder
PAIRS_FLAT = "flat"  # every {prefix}_{case}_{mod}.nii.gz of a flat input folder with its {prefix}_{case}_0000
PAIRS_ONCOREG = "oncoreg"  # {task}_dataset.json in the data folder, registration_val (Val) / registration_test (Ts)


@dataclass(frozen=True)
class Contract:
    """One organiser's container contract. Paths are inside the container; ``command`` is the
    organiser's ``docker run`` argument list with placeholders (:func:`organiser_command`)."""

    name: str  # the --contract value
    title: str
    source: str  # repo@commit:folder of the template and test script
    rules: str  # the rule set of the task's evaluator (learn2reg.rules): the field file names
    workdir: str  # the template's WORKDIR (relative paths and --entrypoint ./x.sh resolve there)
    pairs: str  # PAIRS_JSON | PAIRS_FLAT | PAIRS_ONCOREG
    json_path: str | None  # a fixed dataset json (None: an argument, or per task)
    json_keys: tuple[str, ...]  # the json's pair lists, first non-empty one used
    input_dir: str  # image paths are relative to it (flat: the images themselves)
    output_dir: str  # the fields go here
    channel_first: bool  # 3 x X x Y x Z (LUMIR's templates) instead of X x Y x Z x 3
    affine: str  # NIfTI header of a field: "identity" (np.eye(4), pixdim 1) or "moving" (the moving image's)
    command: tuple[str, ...]  # the organiser's docker run arguments (placeholders {image}, {input}, ...)
    train_command: tuple[str, ...] = ()  # OncoReg: ./train.sh
    model_dir: str | None = None  # OncoReg: where train.sh leaves the model test.sh reads
    default_tag: str = "l2r-submission"  # image name when --tag is not given (the template's, where it has one)
    sequences: Mapping[str, str] = field(default_factory=dict)  # ReMIND2Reg: moving MR sequence -> modality id
    modalities: Mapping[str, str] = field(default_factory=dict)  # a flat input's modality table (no json to hold one)
    handin: str = ""  # what to upload
    facts: tuple[tuple[str, str], ...] = ()  # (fact, file it is read in, under ``source``)


LUMIR = Contract(
    name="lumir",
    title="LUMIR 2024 test phase (CPU, json + input + output mounted)",
    source="JHU-MedImage-Reg/LUMIR_L2R@9b88e63:Test_phase_submission/DockerImage_Template",
    rules="lumir24",
    workdir="/",
    pairs=PAIRS_JSON,
    json_path="/LUMIR_dataset.json",
    json_keys=("validation",),
    input_dir="/input",
    output_dir="/output",
    channel_first=True,
    affine="identity",
    command=(
        "docker", "run", "--rm", "--ipc=host", "--memory", "16g",
        "--mount", "type=bind,source={json},target=/LUMIR_dataset.json",
        "--mount", "type=bind,source={input},target=/input",
        "--mount", "type=bind,source={output},target=/output",
        "{image}",
    ),
    default_tag="reg_model",
    handin="LUMIR_<user>_TestPhase.zip holding the image (<name>.tar.gz), README.txt (CPUs, RAM, time per subject) "
           "and validation_predictions.zip (the validation fields)",
    facts=(
        ("FROM python:3.8-slim, CPU torch 2.0.1; WORKDIR / (the base's); ENTRYPOINT python3 -u ./infer_script.py", "Dockerfile"),
        ("run: --ipc=host --memory 16g, no GPU flag; binds /LUMIR_dataset.json, /input, /output", "test.sh"),
        ("pairs: d['validation']; image = './input/' + pair path; intensities / 255", "infer_script.py"),
        ("output: ./output/disp_{fx}_{mv}.nii.gz, ids = path.split('_')[-2]; 3 x X x Y x Z; np.eye(4), pixdim 1", "infer_script.py"),
        ("hand-in: docker save reg_model | gzip -c > reg_model.tar.gz", "export.sh"),
        ("zip: LUMIR_<user>_TestPhase.zip = <image>.tar.gz + README.txt (CPUs, RAM, time per subject) + validation_predictions.zip",
         "README.md (repository root)"),
    ),
)  # fmt: skip

LUMIR25 = Contract(
    name="lumir25",
    title="LUMIR 2025 test phase (one GPU, no network, the host user)",
    source="JHU-MedImage-Reg/LUMIR25_L2R25@62d3ae4:LUMIR25_Docker_Example",
    rules="lumir25",
    workdir="/app",
    pairs=PAIRS_JSON,
    json_path="/app/LUMIR25_dataset.json",
    json_keys=("validation",),
    input_dir="/app/input",
    output_dir="/app/output",
    channel_first=True,
    affine="identity",
    command=(
        "docker", "run", "--rm", "--ipc=host", "--memory", "256g", "--gpus", "device=0",
        "--user", "{uid}:{gid}", "--network=none",
        "--mount", "type=bind,source={json},target=/app/LUMIR25_dataset.json",
        "--mount", "type=bind,source={input},target=/app/input",
        "--mount", "type=bind,source={output},target=/app/output",
        "{image}",
    ),
    default_tag="reg_model",
    handin="the image as <name>.tar.gz (docker save | gzip)",
    facts=(
        ("FROM anibali/pytorch:2.0.1-cuda11.8-ubuntu22.04; WORKDIR /app; CMD python3 -u ./infer_VFA.py", "Dockerfile"),
        ('run: --ipc=host --memory 256g --gpus "device=0" --user $(id -u):$(id -g) --network=none; '
         "binds /app/LUMIR25_dataset.json, /app/input, /app/output", "test.sh"),
        ("pairs: d['validation']; image = '/app/input/' + pair path; intensities / 255", "infer_VFA.py"),
        ("output: /app/output/disp_{fx}_{mv}.nii.gz (short ids, also for 0000 <- 0001); 3 x X x Y x Z; np.eye(4), pixdim 1",
         "infer_VFA.py"),
        ("hand-in: docker save vfa_lumir25 | gzip -c > vfa_lumir25.tar.gz", "export.sh"),
    ),
)  # fmt: skip

REMIND2REG = Contract(
    name="remind2reg",
    title="ReMIND2Reg 2024/2025 (flat read-only /input, one image per moving MR sequence)",
    source="ReubenDo/ReMIND2Reg@f1974de:docker",
    rules="remind2reg",
    workdir="/app",
    pairs=PAIRS_FLAT,
    json_path=None,
    json_keys=(),
    input_dir="/input",
    output_dir="/output",
    channel_first=False,
    affine="moving",
    command=("docker", "run", "--rm", "-v", "{input}:/input/:ro", "-v", "{output}:/output", "-it", "{image}"),
    default_tag="lapirn-remind2reg",
    sequences={"ceT1": "0001", "T2": "0002"},
    modalities={"0": "3D iUS", "1": "ceT1", "2": "T2"},  # the codes of ReMIND2Reg's README (its dataset json's table)
    handin="two images, one per moving MR sequence (ceT1: --sequence ceT1, T2: --sequence T2), each as <name>.tar.gz",
    facts=(
        ("run: docker run --rm -v [in]:/input/:ro -v [out]:/output -it [image]; no GPU flag", "README.md"),
        ("one container per MR sequence: Dockerfile_t1 (moving _0001, ceT1), Dockerfile_t2 (moving _0002, T2)", "README.md"),
        ("cases: sorted name.split('_')[1] of the /input files containing '{mod}.nii.gz'; fixed ReMIND2Reg_{case}_0000",
         "src/run_inference_t1.py"),
        ("output: /output/disp_{case}_0000_{case}_{mod}.nii.gz, X x Y x Z x 3 float32, the moving image's affine",
         "src/run_inference_t1.py"),
    ),
)  # fmt: skip

L2R = Contract(
    name="l2r",
    title="Learn2Reg (MDL-UzL/L2R submission example: data and output mounted, the dataset json as argument)",
    source="MDL-UzL/L2R@8847509:examples/submission_example",
    rules="l2r",
    workdir="/l2r",
    pairs=PAIRS_JSON,
    json_path=None,
    json_keys=("registration_test", "registration_val"),
    input_dir="/l2r/data",
    output_dir="/l2r/output",
    channel_first=False,
    affine="identity",
    command=(
        "docker", "run", "--rm",
        "--mount", "src={data},target=/l2r/data,type=bind",
        "--mount", "src={output},target=/l2r/output,type=bind",
        "{image}", "-c", "/l2r/data/{json_name}",
    ),
    default_tag="lapirn-l2r",
    handin="the image as <name>.tar.gz (docker save | gzip), as the task's page asks",
    facts=(
        ("WORKDIR /l2r; ENTRYPOINT ./test.sh $1 -x", "zerofield/Dockerfile"),
        ("run: docker run --rm --mount src=DATA,target=/l2r/data,type=bind --mount src=OUT,target=/l2r/output,type=bind "
         "IMAGE -c /l2r/data/NLST_dataset.json", "README.md"),
        ("pairs: dataset['registration_test'] (numRegistration_test); image = os.path.join('data', pair path)", "zerofield/zerofield.py"),
        ("output: output/disp_{fix}_{mov}.nii.gz, X x Y x Z x 3 (tensorImageShape), np.eye(4)", "zerofield/zerofield.py"),
    ),
)  # fmt: skip

ONCOREG = Contract(
    name="oncoreg",
    title="OncoReg (type 3: training and inference inside the image, ./train.sh and ./test.sh)",
    source="MDL-UzL/OncoReg@fb49e32:examples",
    rules="l2r",
    workdir="/oncoreg",
    pairs=PAIRS_ONCOREG,
    json_path=None,
    json_keys=("registration_val", "registration_test"),
    input_dir="/oncoreg/data",
    output_dir="/oncoreg/results",
    channel_first=False,
    affine="moving",
    command=(
        "docker", "run", "--gpus", "all", "--entrypoint", "./test.sh",
        "-v", "{data}:/oncoreg/data", "-v", "{model}:/oncoreg/model/", "-v", "{results}:/oncoreg/results/",
        "{image}", "{task}", "{mode}",
    ),
    train_command=(
        "docker", "run", "--gpus", "all", "--entrypoint", "./train.sh",
        "-v", "{data}:/oncoreg/data", "-v", "{model}:/oncoreg/model/",
        "{image}", "{task}",
    ),
    model_dir="/oncoreg/model",
    default_tag="lapirn-oncoreg",
    handin="the image (training and inference) as the organisers' submission page asks",
    facts=(
        ("WORKDIR /oncoreg; train.sh and test.sh in it (chmod +x)", "VoxelMorph++/Dockerfile"),
        ("run: --gpus all --entrypoint ./train.sh -v DATA:/oncoreg/data -v ./model/:/oncoreg/model/ IMAGE ThoraxCBCT; "
         "--entrypoint ./test.sh ... -v ./results/:/oncoreg/results/ IMAGE ThoraxCBCT Val", "VoxelMorph++/readme.md"),
        ("json: data/{task}_dataset.json; Tr: training_paired_images, Val: registration_val (imagesTr), "
         "Ts: registration_test (imagesTs)", "VoxelMorph++/utils/data_utils.py"),
        ("output: results/disp_{fixed id}_{fixed mod}_{fixed id}_0000.nii.gz, X x Y x Z x 3, the moving image's affine; "
         "logging to results/debug.log (train: model/debug.log)", "VoxelMorph++/inference_vxmpp.py"),
        ("data as the revised ThoraxCBCT (256, 192, 192); NVIDIA RTX 4000 SFF Ada, 20 GB", "readme.md"),
    ),
)  # fmt: skip

CONTRACTS: dict[str, Contract] = {c.name: c for c in (LUMIR, LUMIR25, REMIND2REG, L2R, ONCOREG)}


def get(name: str) -> Contract:
    """A contract by name; ``DataError`` naming the choices otherwise."""
    if name not in CONTRACTS:
        raise DataError(f"unknown contract {name!r} (choose from {', '.join(CONTRACTS)})")
    return CONTRACTS[name]


def moving_modality(contract: Contract, sequence: str | None) -> str | None:
    """ReMIND2Reg: the moving modality id of ``sequence`` (ceT1 -> 0001, T2 -> 0002; the ids are
    accepted too); ``DataError`` when the contract needs one and none or another is given. Other
    contracts: ``None`` (and a sequence is refused)."""
    if not contract.sequences:
        if sequence is not None:
            raise DataError(f"--sequence is for remind2reg only (one image per moving MR sequence), not {contract.name}")
        return None
    by_id = {mod: mod for mod in contract.sequences.values()}
    found = {**contract.sequences, **by_id}.get(sequence or "")
    if found is None:
        choices = ", ".join(f"{name} ({mod})" for name, mod in contract.sequences.items())
        given = "is required, one of" if sequence is None else f"{sequence}: not one of"
        raise DataError(f"{contract.name}: --sequence {given} {choices}: the organisers run one image per moving sequence")
    return found


# ---------------------------------------------------------------------------- command lines


def organiser_command(contract: Contract, values: Mapping[str, str], train: bool = False) -> list[str]:
    """The organiser's ``docker run`` argument list with its placeholders filled from ``values``
    (``image``, ``json``, ``input``, ``output``, ``data``, ``model``, ``results``, ``task``, ``mode``,
    ``json_name``, ``uid``, ``gid``); ``KeyError`` for a placeholder without a value."""
    template = contract.train_command if train else contract.command
    if train and not template:
        raise DataError(f"{contract.name}: the organisers do not train inside the image")
    return [arg.format_map(values) for arg in template]


@dataclass(frozen=True)
class Deltas:
    """What a check run changes in the organiser's command line, and why (each one is reported)."""

    drop_gpus: bool  # no NVIDIA container runtime here: --gpus would fail to start the container
    no_network: bool = True  # --network=none where the organiser does not say it: nothing is fetched at run time
    read_only_inputs: bool = True  # the inputs mounted read-only: nothing is written there
    remove: bool = True  # --rm where the organiser keeps the container


def checked_command(contract: Contract, argv: Sequence[str], deltas: Deltas) -> tuple[list[str], list[str]]:
    """``argv`` (an organiser command line) with ``deltas`` applied; returns it and one line per
    change made. Input mounts: the ``--mount`` and ``-v`` whose target is the input, json or
    data folder (never the output, model or results folder)."""
    inputs = {t.rstrip("/") for t in (contract.input_dir, contract.json_path or "") if t}
    out, notes, args = [], [], list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if deltas.drop_gpus and arg == "--gpus":
            notes.append(f"dropped --gpus {args[i + 1]} (no NVIDIA container runtime on this engine; the image falls back to the CPU)")
            i += 2
            continue
        if deltas.read_only_inputs and arg in ("--mount", "-v") and i + 1 < len(args):
            value = args[i + 1]
            if arg == "--mount" and _mount_target(value) in inputs and "readonly" not in value.split(","):
                args[i + 1] = value + ",readonly"
                notes.append(f"input mount read-only: {args[i + 1]}")
            elif arg == "-v" and value.split(":")[1].rstrip("/") in inputs and not value.endswith(":ro"):
                args[i + 1] = value + ":ro"
                notes.append(f"input volume read-only: {args[i + 1]}")
        out.append(args[i])
        i += 1
    at = out.index("run") + 1
    if deltas.no_network and not any(a.startswith("--network") for a in out):
        out[at:at] = ["--network=none"]
        notes.append("added --network=none (the image fetches nothing at run time)")
    if deltas.remove and "--rm" not in out:
        out[at:at] = ["--rm"]
        notes.append("added --rm")
    return out, notes


def _mount_target(spec: str) -> str:
    """The ``target=`` of a ``--mount`` specification (``dst=``/``destination=`` too)."""
    for part in spec.split(","):
        key, _, value = part.partition("=")
        if key in ("target", "dst", "destination"):
            return value.rstrip("/")
    return ""


def wants_tty(argv: Sequence[str]) -> bool:
    """Whether the command line asks for a terminal (``-it``, ``-t``, ``--tty``): such a command
    must run under a pseudo-terminal where there is none (``script``)."""
    return any(a in ("-it", "-ti", "-t", "--tty") for a in argv)
