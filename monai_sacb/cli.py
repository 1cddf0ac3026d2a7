# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""
``monai-sacb``: the command line for people outside MONAI (also ``python -m monai_sacb``).

Subcommands: ``register`` (one pair, through ``bundle/configs/inference.json``), ``apply`` (a written ITK
displacement field applied to an image, with ITK), ``evaluate`` (``evaluate.json``) and ``train``
(``train.json`` with the data override file the data format needs). The bundle-backed subcommands run the bundle's
own configs with ``monai.bundle.ConfigWorkflow`` and overrides, so that the command line and
``python -m monai.bundle run`` give the same results.

Built on :py:mod:`argparse` rather than ``fire``: ``--help`` of every subcommand can explain units and conventions,
options are typed and checked before anything heavy is imported, and a bad option exits with code 2 and a usage
line, the same code as every other user error here (missing or unreadable files, data the bundle refuses).
Exit codes: 0 done, 2 user error (one line on stderr, no traceback unless ``--debug``), 1 internal error,
130 interrupted.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import logging
import os
import re
import sys
import textwrap
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["EXIT_USER_ERROR", "UserError", "build_parser", "find_bundle", "main", "train_configs"]

EXIT_USER_ERROR = 2
PACKAGE_DIR = Path(__file__).resolve().parent
PROG = "monai-sacb"

# ------------------------------------------------------------------------------------------- help texts

CONVENTIONS = """\
conventions:
  All outputs of `register` lie on the fixed image's grid (its shape and affine) and are named
  <moving>_to_<fixed>_<kind>.nii.gz:
    _warped.nii.gz            the moving image registered onto the fixed image (intensities as the network saw
                              them, scaled by --intensity; `monai-sacb apply` gives the original intensities)
    _warped_label.nii.gz      the moving label map warped by nearest neighbour (with --moving-label)
    _ddf.nii.gz               MONAI dense displacement field (DDF): shape (X, Y, Z, 3), in voxels of the fixed
                              image's grid, component i along array axis i, backward warping
                              warped(p) = moving(p + ddf(p)) with `moving` resampled onto the fixed grid
                              (monai.networks.blocks.Warp, voxel centres, align_corners=True)
    _itk_displacement.nii.gz  the same field for ITK tools: vectors in LPS millimetres on the fixed grid, a
                              vector NIfTI (X, Y, Z, 1, 3); the fixed point x (LPS mm) maps to x + u(x) in the
                              moving image, the form antsApplyTransforms (-t), 3D Slicer and
                              itk.DisplacementFieldTransform read (and `monai-sacb apply`)
  Images are read with their affine (NIfTI, NRRD, MHA, ...): the moving and fixed images may have different
  grids, orientations and voxel sizes; the moving image is resampled onto the fixed grid first. The network works
  in RAS orientation at the fixed image's voxel size (--spacing MM to resample both to MM millimetres first)."""

EXIT_CODES = """\
exit codes: 0 done, 2 user error (bad option, missing or unreadable file, data the bundle refuses: one line on
  stderr, --debug for the traceback), 1 internal error, 130 interrupted."""

# ------------------------------------------------------------------------------------------- errors


class UserError(Exception):
    """A problem with what the user gave (an option, a file): reported in one line, exit code 2."""


_USER_ERROR_TYPES = (OSError, ValueError, RuntimeError)  # FileNotFoundError, PermissionError, ... are OSErrors


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and its causes, outermost first (MONAI wraps transform and config errors in RuntimeErrors)."""
    found: list[BaseException] = []
    while error is not None and all(error is not e for e in found):
        found.append(error)
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return found


def _raised_here(error: BaseException) -> bool:
    """Whether ``error`` was raised by this package's own code (a deliberate check, not a library failure)."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return False
    try:
        return Path(frames[-1].filename).resolve().is_relative_to(PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def user_error(error: BaseException) -> BaseException | None:
    """
    The exception along ``error``'s chain that explains a user error: a :py:class:`UserError`, or a
    ``FileNotFoundError`` / ``ValueError`` / ``RuntimeError`` raised by this package's checks (``LoadPaird``,
    ``CheckInputsd``, the datalists, the checkpoint loader), whose messages name the key, the file and the fix.
    The innermost such exception is the most specific. None when the error is not one of those (a bug).
    """
    for candidate in reversed(_chain(error)):
        if isinstance(candidate, UserError):
            return candidate
        if isinstance(candidate, _USER_ERROR_TYPES) and _raised_here(candidate):
            return candidate
    return None


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


# ------------------------------------------------------------------------------------------- option types


def _non_negative_ints(text: str) -> int | list[int]:
    """``--io-steps``: ``N`` (every level) or ``a,b,c`` (one per level), each >= 0."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or a,b,c (non-negative integers), got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"steps must be >= 0, got {text!r}")
    return values[0] if len(values) == 1 else values


def _spacing(text: str) -> float | list[float]:
    """``--spacing``: ``MM`` (isotropic) or ``x,y,z`` millimetres, each > 0."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MM or x,y,z (millimetres), got {text!r}") from None
    if len(values) not in (1, 3) or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected one or three positive sizes in mm, got {text!r}")
    return values[0] if len(values) == 1 else values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _device(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got {text!r}")
    return text


def _override(text: str) -> tuple[str, Any]:
    """``--set KEY=VALUE``: a bundle override; VALUE as a Python literal (numbers, lists, True/None), else text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return key.strip(), parsed


# ------------------------------------------------------------------------------------------- the bundle


def find_bundle(bundle_dir: str | os.PathLike | None = None) -> Path:
    """
    The bundle folder (``configs/``, ``models/``): ``bundle_dir`` when given, else the ``bundle`` folder of the
    repository this package was installed from in editable mode (``Path(monai_sacb.__file__).parents[1]``).

    Raises:
        UserError: no ``configs/`` there (a non-editable install does not carry the bundle).
    """
    if bundle_dir:
        root = Path(os.path.expanduser(os.fspath(bundle_dir))).absolute()
        if not (root / "configs").is_dir():
            raise UserError(f"--bundle-dir {root}: no configs/ folder there; give the bundle folder (with configs/).")
        return root
    root = PACKAGE_DIR.parent / "bundle"
    if not (root / "configs").is_dir():
        raise UserError(
            f"the bundle folder was not found next to the installed package ({root}); pass --bundle-dir "
            "/path/to/monai-sacb/bundle, or install the repository in editable mode (pip install -e .)."
        )
    return root


def _config(bundle: Path, name: str, what: str) -> Path:
    path = bundle / "configs" / name
    if not path.is_file():
        raise UserError(f"{path} not found: this bundle has no {what}; update the repository or pass --bundle-dir.")
    return path


def _output_folder(option: str, path: str | os.PathLike) -> str:
    """The absolute path of an output folder option, refused in the CLI's own spelling if it cannot be written."""
    from monai_sacb.utils import check_output_dirs

    full = str(Path(os.path.expanduser(os.fspath(path))).absolute())
    try:
        check_output_dirs(output_dir=full)
    except ValueError as error:
        message = str(error).replace("--output_dir", option, 1)
    else:
        return full
    raise UserError(message)  # outside the handler: the CLI reports the innermost error of a chain


def _input_file(label: str, path: str | os.PathLike) -> str:
    """``path`` absolute, or a UserError naming the option and the file when it is not a readable file."""
    full = Path(os.path.expanduser(os.fspath(path))).absolute()
    if not full.exists():
        raise UserError(f"{label}: file not found: {full}")
    if not full.is_file():
        raise UserError(f"{label}: not a file: {full}")
    if not os.access(full, os.R_OK):
        raise UserError(f"{label}: file not readable: {full}")
    return str(full)


def _check_device(device: str | None) -> None:
    if device is None or device == "cpu":
        return
    import torch

    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: no such CUDA device here ({torch.cuda.device_count()} visible).")
    elif device == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError("--device mps: MPS is not available here.")


def _check_override_ids(config_files: Sequence[Path], overrides: dict) -> None:
    """A UserError naming the setting when an override is not a setting of the configs (e.g. a typo in --set)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    # a nested id may add an argument to a component (network_def#kmeans_iters): its parent must exist
    unknown = [key for key in overrides if (key.rpartition("#")[0] or key) not in parser]
    if unknown:
        names = ", ".join(f.name for f in config_files)
        raise UserError(f"{names} has no setting {', '.join(map(repr, unknown))}; check the option or --set key.")


class _NoTracebacks(logging.Filter):
    """Drops log records that carry a traceback (StatsHandler's "Exception: ..."): the CLI reports the error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.exc_info


@contextlib.contextmanager
def _bundle_logging(verbose: bool, debug: bool) -> Iterator[Callable[[], None]]:
    """
    Quiet (not ``verbose``): every log record is dropped while the workflow runs, the CLI's own lines are all the
    output. Verbose: the bundle's logs, without tracebacks unless ``debug``; call the yielded function once the
    workflow has set up its logging, to filter its handlers.
    """
    handlers: list[logging.Handler] = []
    no_tracebacks = _NoTracebacks()

    def filter_handlers() -> None:
        if debug:
            return
        loggers = [logging.getLogger()] + [
            logger for logger in logging.root.manager.loggerDict.values() if isinstance(logger, logging.Logger)
        ]
        for handler in {h for logger in loggers for h in logger.handlers} - set(handlers):
            handler.addFilter(no_tracebacks)
            handlers.append(handler)

    previous = logging.root.manager.disable
    if not verbose:
        logging.disable(logging.CRITICAL)
    try:
        yield filter_handlers
    finally:
        logging.disable(previous)
        for handler in handlers:
            handler.removeFilter(no_tracebacks)


def run_workflow(
    bundle: Path,
    config_files: Sequence[Path],
    overrides: dict,
    workflow_type: str | None,
    logs: bool = False,
    show_warnings: bool = False,
    debug: bool = False,
    engine_id: str | None = None,
    attach: Callable[[Any], None] | None = None,
) -> Any:
    """
    Run a bundle workflow in this process: ``ConfigWorkflow(config_files, **overrides)``, initialise, ``attach``
    (called with the engine ``engine_id`` before it runs, e.g. to add a progress handler), run, finalise.
    ``logs`` uses the bundle's logging config (engine logs on stdout), otherwise the CLI's own lines are all the
    output; warnings are shown with ``show_warnings``, tracebacks logged only with ``debug``.
    """
    from monai.bundle import ConfigWorkflow

    _check_override_ids(config_files, overrides)
    meta = bundle / "configs" / "metadata.json"
    logging_conf = bundle / "configs" / "logging.conf"
    with warnings.catch_warnings(), _bundle_logging(logs, debug) as filter_handlers:
        if not show_warnings:
            warnings.simplefilter("ignore")
        workflow = ConfigWorkflow(
            config_file=[str(f) for f in config_files],
            meta_file=str(meta) if meta.is_file() else None,
            logging_file=str(logging_conf) if logs and logging_conf.is_file() else False,
            workflow_type=workflow_type,
            **overrides,
        )
        workflow.initialize()
        try:
            if attach is not None and engine_id is not None and engine_id in workflow.parser:
                attach(workflow.parser.get_parsed_content(engine_id))
            filter_handlers()
            workflow.run()
        finally:
            workflow.finalize()
    return workflow


def _snapshot(folder: Path) -> dict[Path, int]:
    if not folder.is_dir():
        return {}
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _written(folder: Path, before: dict[Path, int]) -> list[Path]:
    """Files in ``folder`` created or modified since ``before`` (a :py:func:`_snapshot`)."""
    return sorted(p for p, mtime in _snapshot(folder).items() if before.get(p) != mtime)


_KINDS = (
    ("_itk_displacement", "ITK displacement field (LPS mm, fixed grid)"),
    ("_warped_label", "warped moving label (nearest neighbour)"),
    ("_warped", "warped moving image"),
    ("_ddf_world", "displacement field (RAS mm, fixed grid)"),
    ("_ddf", "MONAI ddf (voxels of the fixed grid)"),
)


def _describe_output(path: Path) -> str:
    stem = path.name.split(".")[0]
    for suffix, text in _KINDS:
        if stem.endswith(suffix):
            return text
    return ""


def _progress(total_hint: int | None = None, stream: Any = None) -> Callable[[Any], None]:
    """``attach(engine)``: one line per pair on stderr (pair number, names, seconds)."""

    def attach(engine: Any) -> None:
        from ignite.engine import Events

        out = stream or sys.stderr
        started = {}

        @engine.on(Events.ITERATION_STARTED)
        def _start(engine: Any) -> None:
            started["t"] = time.perf_counter()

        @engine.on(Events.ITERATION_COMPLETED)
        def _done(engine: Any) -> None:
            total = total_hint or engine.state.epoch_length or "?"
            seconds = time.perf_counter() - started.get("t", time.perf_counter())
            names = _pair_names(engine.state.batch)
            print(f"[{engine.state.iteration}/{total}] {names}registered in {seconds:.1f} s", file=out, flush=True)

    return attach


def _pair_names(batch: Any) -> str:
    """``"<moving> -> <fixed>: "`` from a (decollated) batch's metadata, "" when it cannot be read."""
    try:
        item = batch[0] if isinstance(batch, (list, tuple)) else batch
        names = []
        for key in ("moving_image", "fixed_image"):
            name = item[key].meta["filename_or_obj"]
            name = name[0] if isinstance(name, (list, tuple)) else name
            names.append(Path(str(name)).name)
        return f"{names[0]} -> {names[1]}: "
    except Exception:
        return ""


def _common_overrides(args: argparse.Namespace, bundle: Path) -> dict:
    overrides: dict[str, Any] = {"bundle_root": str(bundle)}
    if getattr(args, "device", None):
        _check_device(args.device)
        overrides["device"] = f"$torch.device('{args.device}')"
    return overrides


def _model_path(args: argparse.Namespace, bundle: Path) -> str:
    if args.model:
        return _input_file("--model", args.model)
    shipped = bundle / "models" / "model.pt"
    if not shipped.is_file():
        raise UserError(f"the shipped model {shipped} is missing; pass --model /path/to/model.pt.")
    return str(shipped)


def _fine_voxel_hint(fixed: str) -> str | None:
    """
    A note when FIXED (NIfTI) has voxels much finer than the 2 mm the shipped weights were trained at, where
    ``--spacing 2`` registers faster and no worse; None when it has not, or when its header cannot be read here.
    """
    try:
        import nibabel as nib

        zooms = [float(z) for z in nib.load(fixed).header.get_zooms()[:3]]
    except Exception:  # not NIfTI, or unreadable: the workflow reports real problems itself
        return None
    if len(zooms) < 3 or min(zooms) >= 1.5:
        return None
    voxels = "x".join(f"{z:g}" for z in zooms)
    return (
        f"note: FIXED has {voxels} mm voxels and the shipped weights were trained at 2 mm; --spacing 2 registers "
        "such a pair 2-3x faster and as well (Colin27 onto the 1 mm MNI152: 12 s against 32 s, Dice of deep grey "
        "structures 0.703 against 0.695). The outputs are on FIXED's grid either way."
    )


def _kind_order(path: Path) -> tuple[int, str]:
    order = ["warped moving image", "warped moving label", "MONAI ddf", "displacement field", "ITK"]
    kind = _describe_output(path)
    return next((i for i, k in enumerate(order) if kind.startswith(k)), len(order)), str(path)


def _print_files(title: str, files: Sequence[Path]) -> None:
    print(title)
    for path in sorted(files, key=_kind_order):
        kind = _describe_output(path)
        print(f"  {path}" + (f"  ({kind})" if kind else ""))


# ------------------------------------------------------------------------------------------- subcommands


NO_CROP_HELP = (
    "register the whole grid instead of the box of the images' foreground (voxels above each image's minimum); "
    "the shipped weights register better inside the box"
)


def cmd_register(args: argparse.Namespace) -> int:
    bundle = find_bundle(args.bundle_dir)
    config = _config(bundle, "inference.json", "inference workflow")
    moving = _input_file("MOVING", args.moving)
    fixed = _input_file("FIXED", args.fixed)
    overrides = _common_overrides(args, bundle)
    overrides.update(
        moving_image=moving,
        fixed_image=fixed,
        moving_label=_input_file("--moving-label", args.moving_label) if args.moving_label else "",
        ckpt_path=_model_path(args, bundle),
        output_dir=_output_folder("-o", args.output_dir),
        symmetric=not args.no_symmetric,
        crop_foreground=not args.no_crop,
    )
    if args.io_steps is not None:
        overrides["io_steps"] = args.io_steps
    if args.spacing is not None:
        overrides["spacing"] = args.spacing
    if args.intensity is not None:
        overrides["intensity"] = None if args.intensity == "none" else args.intensity
    if sys.stderr.isatty():
        overrides["io_progress"] = True  # a bar over the instance optimisation steps, on a terminal
    overrides.update(dict(args.set or ()))
    out = Path(overrides["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    before = _snapshot(out)
    print(f"registering {moving} (moving) to {fixed} (fixed) with {overrides['ckpt_path']}", file=sys.stderr)
    hint = _fine_voxel_hint(fixed) if args.spacing is None and not args.model else None
    if hint:
        print(textwrap.fill(hint, width=110, break_on_hyphens=False), file=sys.stderr)
    start = time.perf_counter()
    run_workflow(
        bundle, [config], overrides, "infer", args.verbose, args.verbose, args.debug, "evaluator", _progress(1)
    )
    files = _written(out, before)
    if not files:
        print(f"{PROG} register: internal error: the inference workflow wrote nothing in {out}", file=sys.stderr)
        return 1
    _print_files(f"done in {time.perf_counter() - start:.1f} s; {len(files)} files written:", files)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    transform = _input_file("TRANSFORM", args.transform)
    image = _input_file("IMAGE", args.image)
    reference = _input_file("--reference", args.reference) if args.reference else None
    output = Path(os.path.expanduser(args.output)).absolute()
    if output.is_dir():
        raise UserError(f"-o {output} is a folder; give the output file name, e.g. {output / 'warped.nii.gz'}.")
    from monai_sacb.transforms.displacement import apply_itk_displacement

    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        apply_itk_displacement(image, transform, reference=reference, nearest=args.nearest, output_path=output)
    except (RuntimeError, ValueError, TypeError, KeyError) as error:
        if _raised_here(error) and not isinstance(error, (TypeError, KeyError)):
            raise UserError(f"{_one_line(str(error))} (TRANSFORM {transform}, IMAGE {image})") from error
        raise UserError(
            f"ITK could not apply {transform} to {image}: {type(error).__name__}: {_one_line(str(error))[:300]}. "
            "TRANSFORM must be a displacement field (vector image, e.g. the _itk_displacement.nii.gz of "
            "`monai-sacb register`) and IMAGE a single-channel image ITK reads."
        ) from error
    grid = "the grid of " + (reference or transform)
    mode = "nearest neighbour" if args.nearest else "linear"
    print(f"done in {time.perf_counter() - start:.1f} s ({mode}, on {grid}); 1 file written:")
    print(f"  {output}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    bundle = find_bundle(args.bundle_dir)
    config = _config(bundle, "evaluate.json", "evaluation workflow (configs/evaluate.json)")
    overrides = _common_overrides(args, bundle)
    if args.model:
        overrides["ckpt_path"] = _input_file("--model", args.model)
    for option, key in (("data_format", "data_format"), ("num_pairs", "num_pairs"), ("io_steps", "io_steps")):
        if getattr(args, option) is not None:
            overrides[key] = getattr(args, option)
    if args.dataset_dir:
        overrides["dataset_dir"] = str(Path(os.path.expanduser(args.dataset_dir)).absolute())
    if args.spacing is not None:
        overrides["spacing"] = args.spacing
    if args.no_symmetric:
        overrides["symmetric"] = False
    if args.no_crop:
        overrides["crop_foreground"] = False
    if args.intensity is not None:
        overrides["intensity"] = None if args.intensity == "none" else args.intensity
    if sys.stderr.isatty():
        overrides["io_progress"] = True
    if args.output_dir:
        overrides["output_dir"] = _output_folder("--output-dir", args.output_dir)
    overrides.update(dict(args.set or ()))
    out = Path(overrides["output_dir"]) if "output_dir" in overrides else None
    before = _snapshot(out) if out else {}
    start = time.perf_counter()
    workflow = run_workflow(
        bundle, [config], overrides, None, True, args.verbose, args.debug, "evaluator", _progress()
    )
    if out is None:
        out = Path(str(workflow.parser.get_parsed_content("output_dir"))).absolute()
    files = _written(out, before)
    _print_files(f"done in {time.perf_counter() - start:.1f} s; {len(files)} files written in {out}:", files)
    return 0


def train_configs(bundle: Path, data_format: str) -> list[Path]:
    """
    Config files of ``train`` for ``data_format``: ``train.json``, then ``data_default.json`` for ``"default"`` or
    ``data_files.json`` for the formats read from files (see ``monai_sacb.apps.DATA_PIPELINES``).
    """
    from monai_sacb.apps import DATA_PIPELINES, check_data_format

    try:
        fmt = check_data_format(data_format)
    except ValueError as error:
        raise UserError(_one_line(str(error)).replace("--data_format", "--data-format")) from None
    extra = {"default": "data_default.json", "files": "data_files.json"}.get(DATA_PIPELINES[fmt])
    files = [_config(bundle, "train.json", "training workflow")]
    if extra:
        files.append(_config(bundle, extra, f"training transforms for --data-format {fmt}"))
    return files


def cmd_train(args: argparse.Namespace) -> int:
    bundle = find_bundle(args.bundle_dir)
    data_format = args.data_format or "synth"
    configs = train_configs(bundle, data_format)
    overrides = _common_overrides(args, bundle)
    overrides["data_format"] = data_format.lower()
    if args.dataset_dir:
        overrides["dataset_dir"] = str(Path(os.path.expanduser(args.dataset_dir)).absolute())
    for option in ("max_epochs", "num_samples", "spacing"):
        if getattr(args, option) is not None:
            overrides[option] = getattr(args, option)
    for option in ("ckpt_dir", "output_dir"):
        if getattr(args, option):
            overrides[option] = _output_folder("--" + option.replace("_", "-"), getattr(args, option))
    if args.resume is not None:
        overrides["resume"] = args.resume
    if args.pretrained:
        overrides["pretrained_ckpt"] = _input_file("--pretrained", args.pretrained)
    overrides.update(dict(args.set or ()))
    print(f"training with {', '.join(str(c) for c in configs)}", file=sys.stderr)
    start = time.perf_counter()
    workflow = run_workflow(bundle, configs, overrides, "train", True, args.verbose, args.debug)
    ckpt_dir = Path(str(workflow.parser.get_parsed_content("ckpt_dir"))).absolute()
    files = sorted(ckpt_dir.glob("*.pt"))
    _print_files(f"done in {time.perf_counter() - start:.1f} s; checkpoints in {ckpt_dir}:", files)
    if (ckpt_dir / "model.pt").is_file():
        print(f"register with it: {PROG} register MOVING FIXED -o OUT_DIR --model {ckpt_dir / 'model.pt'}")
    return 0


# ------------------------------------------------------------------------------------------- the parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions wrapped, epilogs (the conventions, examples) kept as written; defaults are in each help."""


def _wrap(text: str) -> str:
    return textwrap.fill(text, 110)


def _add_common(parser: argparse.ArgumentParser, bundle: bool = True) -> None:
    group = parser.add_argument_group("general")
    if bundle:
        group.add_argument(
            "--bundle-dir",
            metavar="DIR",
            help="the bundle folder (configs/, models/); default: the repository's bundle/ (editable install)",
        )
        group.add_argument(
            "--set",
            metavar="KEY=VALUE",
            action="append",
            type=_override,
            help="any other bundle setting (repeatable), e.g. --set network_def#kmeans_iters=3; VALUE is read as a "
            "Python literal (numbers, lists, True, None), else as text",
        )
    group.add_argument(
        "--verbose",
        action="store_true",
        help="warnings, and for register the bundle's log lines (evaluate and train always show them)",
    )
    group.add_argument("--debug", action="store_true", help="full traceback on errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="SACB-Net deformable registration of 3D images (MONAI bundle) from the command line.",
        epilog=f"{PROG} SUBCOMMAND --help explains each one, with units and conventions.\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from monai_sacb import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)

    reg = sub.add_parser(
        "register",
        help="register a moving image to a fixed image; write the warped image, label and displacement fields",
        description=_wrap(
            "Register MOVING to FIXED with SACB-Net (bundle/configs/inference.json): the network run both "
        "ways and averaged (symmetric), then instance optimisation (a few Adam steps on the same loss, coarse to "
        "fine). Writes the outputs below into OUT_DIR and lists them."
        ),
        epilog=f"{CONVENTIONS}\n\nexample:\n  {PROG} register moving.nii.gz fixed.nii.gz -o out "
        f"--moving-label moving_seg.nii.gz\n  {PROG} apply out/moving_to_fixed_itk_displacement.nii.gz "
        f"moving.nii.gz -o moving_registered.nii.gz\n\n{EXIT_CODES}",
        formatter_class=_Formatter,
    )
    reg.add_argument("moving", metavar="MOVING", help="the image to deform (NIfTI, NRRD, MHA, ...; 3D, one channel)")
    reg.add_argument("fixed", metavar="FIXED", help="the target image; every output is on its grid")
    reg.add_argument("-o", "--output-dir", metavar="OUT_DIR", required=True, help="folder for the outputs (created)")
    reg.add_argument(
        "--moving-label",
        metavar="L",
        help="label map of MOVING (integers, on MOVING's grid), warped by nearest neighbour",
    )
    reg.add_argument("--model", metavar="PATH", help="weights (model.pt); default: the bundle's models/model.pt")
    reg.add_argument(
        "--io-steps",
        metavar="N|a,b,c",
        type=_non_negative_ints,
        help="instance optimisation: Adam steps at 1/4, 1/2 and full resolution (N: the same at each); 0: the "
        "network alone; default: the bundle's 0,50,10",
    )
    reg.add_argument(
        "--no-symmetric",
        action="store_true",
        help="one forward pass instead of both ways averaged (faster, less accurate)",
    )
    reg.add_argument("--no-crop", action="store_true", help=NO_CROP_HELP)
    reg.add_argument(
        "--spacing",
        metavar="MM",
        type=_spacing,
        help="resample both images to this voxel size in mm first (MM or x,y,z); default: the fixed image's voxels. "
        "The shipped weights expect about 2 mm",
    )
    reg.add_argument(
        "--intensity",
        choices=("percentile", "minmax", "zscore", "none"),
        help="intensity scaling of both images before the network; default: the bundle's percentile "
        "(0.5-99.5 %% -> 0-1)",
    )
    reg.add_argument("--device", metavar="D", type=_device, help="cpu, cuda, cuda:N; default: cuda:0 if available")
    _add_common(reg)
    reg.set_defaults(func=cmd_register)

    app = sub.add_parser(
        "apply",
        help="apply an ITK displacement field (e.g. from `register`) to an image, with ITK",
        description=_wrap(
            "Resample IMAGE with the displacement field TRANSFORM, with ITK (itk.DisplacementFieldTransform + "
        "itk.ResampleImageFilter; on the field's own grid itk.WarpImageFilter, the same voxels, faster to load), as "
        "`antsApplyTransforms -i IMAGE -r REF -t TRANSFORM -o OUT` does: the output at "
        "the point x (LPS mm) of the reference grid is IMAGE(x + u(x)). With the _itk_displacement.nii.gz of "
        "`register` and its moving image, this gives the moving image registered onto the fixed grid, in its own "
        "intensities."
        ),
        epilog="TRANSFORM: a displacement field stored as a vector image (LPS millimetres; NIfTI (X, Y, Z, 1, 3),\n"
        "  NRRD, MHA), such as `monai-sacb register` (_itk_displacement.nii.gz) or ANTs (Warp.nii.gz) writes.\n"
        "  The MONAI _ddf.nii.gz (voxels) is not an ITK field and is refused.\n"
        "Where x + u(x) falls outside IMAGE the output is 0.\n\n"
        f"example:\n  {PROG} apply out/mov_to_fix_itk_displacement.nii.gz mov_seg.nii.gz -o seg_on_fixed.nii.gz "
        f"--nearest\n\n{EXIT_CODES}",
        formatter_class=_Formatter,
    )
    app.add_argument("transform", metavar="TRANSFORM", help="the ITK displacement field file")
    app.add_argument("image", metavar="IMAGE", help="the image to warp (3D, one channel)")
    app.add_argument("-o", "--output", metavar="OUT", required=True, help="the output file (e.g. warped.nii.gz)")
    app.add_argument(
        "--nearest",
        action="store_true",
        help="nearest-neighbour interpolation, for label maps (keeps the pixel type and values); default: linear, "
        "float32 output",
    )
    app.add_argument(
        "--reference",
        metavar="REF",
        help="image whose grid the output takes; default: the field's grid (the fixed image for `register`'s fields)",
    )
    _add_common(app, bundle=False)
    app.set_defaults(func=cmd_apply)

    ev = sub.add_parser(
        "evaluate",
        help="register the pairs of a data set and report Dice, HD95, folding (bundle/configs/evaluate.json)",
        description=_wrap(
            "Run the bundle's evaluation workflow (configs/evaluate.json) on the test (else validation) "
        "pairs of a data set: per-pair and mean metrics of the warped labels and the displacement fields, written "
        "in OUTPUT_DIR."
        ),
        epilog="data formats: synth (default, nothing to download), default, folder, json, learn2reg, ixi, lpba40 "
        "(see bundle/docs/README.md, 'Data').\n\n"
        f"example:\n  {PROG} evaluate --data-format lpba40 --dataset-dir /data/LPBA40 --output-dir eval\n\n"
        f"{EXIT_CODES}",
        formatter_class=_Formatter,
    )
    ev.add_argument("--data-format", metavar="NAME", help="data format; default: the bundle's (synth)")
    ev.add_argument("--dataset-dir", metavar="DIR", help="data folder or JSON datalist (synth/default: cache folder)")
    ev.add_argument("--output-dir", metavar="DIR", help="where the report and files go; default: the bundle's")
    ev.add_argument("--model", metavar="PATH", help="network weights; default: the bundle's models/model.pt")
    ev.add_argument("--io-steps", metavar="N|a,b,c", type=_non_negative_ints, help="instance optimisation steps")
    ev.add_argument("--num-pairs", metavar="N", type=_positive_int, help="evaluate at most N pairs")
    ev.add_argument("--spacing", metavar="MM", type=_spacing, help="voxel size in mm to resample to")
    ev.add_argument("--no-symmetric", action="store_true", help="one forward pass instead of both ways averaged")
    ev.add_argument("--no-crop", action="store_true", help=NO_CROP_HELP)
    ev.add_argument(
        "--intensity",
        choices=("percentile", "minmax", "zscore", "none"),
        help="intensity scaling before the network; default: the bundle's percentile",
    )
    ev.add_argument("--device", metavar="D", type=_device, help="cpu, cuda, cuda:N; default: cuda:0 if available")
    _add_common(ev)
    ev.set_defaults(func=cmd_evaluate)

    tr = sub.add_parser(
        "train",
        help="train SACB-Net (bundle/configs/train.json)",
        description=_wrap(
            "Train with the bundle's train.json; for --data-format default the config list gets "
        "data_default.json, for data read from files (folder, json, learn2reg, ixi, lpba40) data_files.json. "
        "Checkpoints (model.pt: best validation Dice; checkpoint_epoch=N.pt: latest) go to CKPT_DIR; running the "
        "same command again resumes."
        ),
        epilog="data formats: synth (default: label-synthesised pairs, nothing to download), default, folder, json, "
        "learn2reg, ixi, lpba40 (see bundle/docs/README.md, 'Data').\n\n"
        f"example:\n  {PROG} train --data-format folder --dataset-dir /data/my_images --spacing 2 --ckpt-dir runs\n"
        f"fine-tune the shipped model on your data (a smaller learning rate, into a new folder):\n  {PROG} train "
        "--data-format folder --dataset-dir /data/my_images --spacing 2 --ckpt-dir runs_ft --pretrained "
        "bundle/models/model.pt --set learning_rate=5e-5\n\n"
        f"{EXIT_CODES}",
        formatter_class=_Formatter,
    )
    tr.add_argument("--data-format", metavar="NAME", help="data format; default: synth")
    tr.add_argument("--dataset-dir", metavar="DIR", help="data folder or JSON datalist (synth/default: cache folder)")
    tr.add_argument("--max-epochs", metavar="N", type=_positive_int, help="epochs; default: the bundle's (4)")
    tr.add_argument("--num-samples", metavar="N", type=_positive_int, help="iterations per epoch (synth, default data)")
    tr.add_argument("--ckpt-dir", metavar="DIR", help="checkpoint folder; default: the bundle's runs/")
    tr.add_argument("--spacing", metavar="MM", type=_spacing, help="voxel size in mm (generated data: of the data set)")
    tr.add_argument("--output-dir", metavar="DIR", help="TensorBoard logs; default: the bundle's eval/")
    resume = tr.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume", dest="resume", action="store_true", default=None, help="go on from the latest checkpoint (default)"
    )
    resume.add_argument("--no-resume", dest="resume", action="store_false", help="start from scratch")
    tr.add_argument(
        "--pretrained",
        metavar="PATH",
        help="start from these network weights (e.g. the bundle's models/model.pt, to fine-tune the shipped model "
        "on your data) when CKPT_DIR has no checkpoint to resume; default: random weights",
    )
    tr.add_argument("--device", metavar="D", type=_device, help="cpu, cuda, cuda:N; default: cuda:0 if available")
    _add_common(tr)
    tr.set_defaults(func=cmd_train)
    return parser


# ------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on a bad option, with the usage line
    prefix = f"{PROG} {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            traceback.print_exc()
        cause = user_error(error)
        if cause is not None:
            print(f"{prefix}: error: {_one_line(str(cause))}", file=sys.stderr)
            return EXIT_USER_ERROR
        hint = "" if args.debug else " (run again with --debug for the traceback)"
        print(f"{prefix}: internal error: {type(error).__name__}: {_one_line(str(error))}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
