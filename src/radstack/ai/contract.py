"""A model's input/output contract, and the checks that an ONNX graph or a MONAI bundle honours it.

Any team can bring its own model, so the registry believes nothing a model says about itself: an
ONNX file must pass ``onnx.checker`` and load in onnxruntime, and its graph's inputs and outputs
must be the ones its contract declares; a MONAI bundle's ``configs/metadata.json`` must describe
the network its weights belong to (checked by a forward pass where the network can be built).

The contract (JSON)::

    {
      "inputs":  [{"name": "image", "shape": [1, 1, 512, 512], "dtype": "float32"}],
      "outputs": [{"name": "heatmap", "shape": [1, 1, 128, 128], "dtype": "float32"},
                  {"name": "probability", "shape": ["batch"], "dtype": "float32"}],
      "preprocessing": {"window": "auto", "size": 512, "scale": [0, 1]}
    }

A dimension is a non-negative integer (fixed) or ``null``/a name (any size: a dynamic axis). A
declared fixed size fits a dynamic graph axis; a declared dynamic axis does not fit a graph that
fixes it. ``dtype`` is a NumPy name (``float32``, ``float16``, ``float64``, ``int64``, ``int32``,
``int16``, ``int8``, ``uint8``, ``uint16``, ``bool``). ``preprocessing`` is optional and free-form:
the spec the inference code applies before the graph (stored as the version's preprocessing artifact).

A MONAI bundle (the MONAI Bundle specification) is a directory or zip with
``configs/metadata.json``, whose ``network_data_format`` names each input and output with
``num_channels``, ``spatial_shape`` (integers, or expressions such as ``"16*n"``) and ``dtype``,
and weights in ``models/model.pt`` (a state dict), ``models/model.ts`` (TorchScript) or
``models/model.onnx``. Its contract is ``[batch, num_channels, *spatial_shape]`` per tensor.
Bundle configs are never evaluated as code: a ``network_def`` is built only when its ``_target_``
is a class in ``monai.networks.nets`` or ``torch.nn`` and its arguments are plain JSON values;
a state dict is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from radstack.errors import BadRequest, PayloadTooLarge

__all__ = [
    "DTYPES",
    "Bundle",
    "Contract",
    "ContractMismatch",
    "InvalidModel",
    "TensorSpec",
    "check_bundle",
    "check_onnx",
    "read_bundle",
]

DTYPES = frozenset(
    {"float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "uint16", "bool"}
)

#: onnxruntime's tensor element types by NumPy name.
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(bool)": "bool",
}

#: Largest bundle (uncompressed) and most files accepted: a zip bomb is refused before it is inflated.
BUNDLE_MAX_BYTES = 2 * 1024**3
BUNDLE_MAX_FILES = 1000
#: Where a bundle's weights may be, in the order they are checked.
BUNDLE_WEIGHTS = ("models/model.onnx", "models/model.ts", "models/model.pt")
METADATA = "configs/metadata.json"

Dim = int | str | None
#: A bundle's size expression ``16*n`` (or ``n*16``): any multiple of 16.
_MULTIPLE = re.compile(r"^\s*(?:(\d+)\s*\*\s*n|n\s*\*\s*(\d+))\s*$")


class InvalidModel(BadRequest):
    """The model file is not what it claims to be: corrupt, unloadable, or incomplete."""

    title = "Invalid model"
    http_status = 422


class ContractMismatch(InvalidModel):
    """The model's inputs or outputs are not the ones its contract declares."""

    title = "Contract does not match the model"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output: its name, shape (``None`` or a name for a dynamic axis) and dtype."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    def shape_text(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


@dataclass(frozen=True, slots=True)
class Contract:
    """What a model takes and gives, and the preprocessing spec applied before it."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocessing: dict[str, Any] | None = None
    #: How the registry checked it: ``onnxruntime``, ``forward pass`` or ``state dict`` (empty: not yet).
    verified_by: str = ""
    #: Anything else a MONAI bundle's metadata says about a tensor (value range, channel meaning).
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }
        if self.preprocessing is not None:
            document["preprocessing"] = self.preprocessing
        if self.verified_by:
            document["verified_by"] = self.verified_by
        if self.notes:
            document["notes"] = self.notes
        return document

    @classmethod
    def from_json(cls, document: Any, where: str = "contract") -> Contract:
        """The contract in a JSON document (see the module docstring).

        Raises
        ------
        BadRequest
            It is not such a document; the message names the bad field and what is accepted.
        """
        if isinstance(document, bytes | str):
            try:
                document = json.loads(document)
            except ValueError as exc:
                raise BadRequest(f"{where} is not JSON: {exc}") from None
        if not isinstance(document, Mapping):
            raise BadRequest(f"{where} must be a JSON object with 'inputs' and 'outputs'")
        unknown = set(document) - {"inputs", "outputs", "preprocessing", "verified_by", "notes"}
        if unknown:
            raise BadRequest(
                f"{where} has unknown fields {sorted(unknown)}; accepted: inputs, outputs, preprocessing"
            )
        inputs = _tensors(document.get("inputs"), f"{where}.inputs")
        outputs = _tensors(document.get("outputs"), f"{where}.outputs")
        preprocessing = document.get("preprocessing")
        if preprocessing is not None and not isinstance(preprocessing, dict):
            raise BadRequest(
                f"{where}.preprocessing must be a JSON object, not {type(preprocessing).__name__}"
            )
        notes = document.get("notes") or {}
        return cls(inputs, outputs, preprocessing, str(document.get("verified_by") or ""), dict(notes))


def _tensors(value: Any, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(value, list) or not value:
        raise BadRequest(f"{where} must be a non-empty list of {{name, shape, dtype}} objects")
    specs = []
    for index, item in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(item, Mapping):
            raise BadRequest(f"{at} must be an object with name, shape and dtype")
        name, shape, dtype = item.get("name"), item.get("shape"), item.get("dtype")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"{at}.name must be a non-empty string, not {name!r}")
        if not isinstance(shape, list):
            raise BadRequest(f"{at}.shape must be a list of sizes (integers, null or names), not {shape!r}")
        for dim in shape:
            if isinstance(dim, bool) or not (dim is None or isinstance(dim, str | int)):
                raise BadRequest(f"{at}.shape has {dim!r}; a size is an integer ≥ 0, null or a name")
            if isinstance(dim, int) and dim < 0:
                raise BadRequest(f"{at}.shape has {dim}; a size is an integer ≥ 0, null or a name")
        if dtype not in DTYPES:
            raise BadRequest(f"{at}.dtype is {dtype!r}; accepted: {', '.join(sorted(DTYPES))}")
        specs.append(TensorSpec(name, tuple(shape), str(dtype)))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise BadRequest(f"{where} names a tensor twice: {names}")
    return tuple(specs)


# ----------------------------------------------------------------------------- comparison
def _fixed(dim: Dim) -> bool:
    return isinstance(dim, int)


def _fits(want: Dim, have: Dim, *, lenient: bool) -> bool:
    """Whether a declared size fits the model's: a fixed size fits itself or a dynamic axis; a declared
    dynamic axis fits only a dynamic one, unless ``lenient`` (a bundle's metadata, which leaves the batch
    axis out and writes sizes as ``16*n``: any size, or a multiple of 16)."""
    if not _fixed(have):
        return True
    if _fixed(want):
        return want == have
    if not lenient:
        return False
    match = _MULTIPLE.match(str(want or ""))
    return match is None or int(have or 0) % int(match.group(1) or match.group(2)) == 0


def _mismatches(
    kind: str, declared: Sequence[TensorSpec], actual: Sequence[TensorSpec], source: str, *, by_position: bool
) -> list[str]:
    """What differs between the declared tensors and the model's (empty: they match)."""
    problems = []
    if by_position:
        if len(declared) != len(actual):
            problems.append(
                f"{len(declared)} {kind}s declared ({', '.join(t.name for t in declared)}) but {source} has "
                f"{len(actual)} ({', '.join(t.name for t in actual)})"
            )
            return problems
        pairs = list(zip(declared, actual, strict=True))
    else:
        by_name = {t.name: t for t in actual}
        pairs = []
        for spec in declared:
            found = by_name.get(spec.name)
            if found is None:
                problems.append(
                    f"{kind} {spec.name!r} is not in {source}, whose {kind}s are "
                    f"{', '.join(repr(t.name) for t in actual) or 'none'}"
                )
            else:
                pairs.append((spec, found))
        if kind == "input":
            extra = [t.name for t in actual if t.name not in {s.name for s in declared}]
            if extra:
                problems.append(f"{source} also takes input(s) {extra} that the contract does not declare")
    for spec, real in pairs:
        label = f"{kind} {spec.name!r}"
        if spec.dtype != real.dtype:
            problems.append(f"{label} is declared {spec.dtype} but {source} has {real.dtype}")
        if len(spec.shape) != len(real.shape):
            problems.append(
                f"{label} is declared with shape {spec.shape_text()} ({len(spec.shape)} dimensions) but "
                f"{source} has {real.shape_text()} ({len(real.shape)} dimensions)"
            )
            continue
        for axis, (want, have) in enumerate(zip(spec.shape, real.shape, strict=True)):
            if not _fits(want, have, lenient=by_position):
                problems.append(
                    f"{label} is declared with shape {spec.shape_text()} but {source} has "
                    f"{real.shape_text()} (dimension {axis}: {'any size' if not _fixed(want) else want} "
                    f"where it is {have})"
                )
                break
    return problems


def _reason(exc: BaseException) -> str:
    """A library's error message on one line, cut to a readable length."""
    text = " ".join(str(exc).split())
    return (text[:397] + "...") if len(text) > 400 else text or type(exc).__name__


def _raise_mismatch(problems: list[str], what: str) -> None:
    if problems:
        raise ContractMismatch(f"{what}: " + "; ".join(problems))


# ----------------------------------------------------------------------------- ONNX
def _onnx_io(data: bytes, label: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Check ``data`` is a valid ONNX model that onnxruntime loads; its graph's inputs and outputs.

    Raises
    ------
    InvalidModel
        ``data`` is empty, does not parse, has no graph, fails ``onnx.checker``, or onnxruntime
        cannot create a session for it.
    """
    import onnx
    import onnxruntime

    if not data:
        raise InvalidModel(f"{label} is empty")
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors
        raise InvalidModel(f"{label} is not an ONNX model: it cannot be parsed ({_reason(exc)})") from None
    if not model.graph.node and not model.graph.output:
        raise InvalidModel(f"{label} is not an ONNX model: it has no graph")
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise InvalidModel(f"{label} fails the ONNX checker: {_reason(exc)}") from None
    try:
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types from C++
        raise InvalidModel(f"onnxruntime cannot load {label}: {_reason(exc)}") from None

    def spec(arg: Any) -> TensorSpec:
        dtype = _ORT_TYPES.get(arg.type, arg.type)
        shape = tuple(d if isinstance(d, int) else (d or None) for d in (arg.shape or ()))
        return TensorSpec(arg.name, shape, dtype)

    return tuple(spec(a) for a in session.get_inputs()), tuple(spec(a) for a in session.get_outputs())


def check_onnx(
    data: bytes, contract: Contract | None, *, label: str = "model.onnx", by_position: bool = False
) -> Contract:
    """Validate an ONNX model and its contract; the contract, marked verified.

    Parameters
    ----------
    data
        The serialised ONNX model.
    contract
        What it is declared to take and give; None: the graph's own inputs and outputs.
    label
        What the messages call the file.
    by_position
        Match tensors by position rather than name (a bundle's metadata names them its own way).

    Raises
    ------
    InvalidModel
        It does not parse, fails ``onnx.checker``, or onnxruntime cannot create a session for it.
    ContractMismatch
        Its graph's inputs or outputs differ from the contract's (names, dtypes, shapes).
    """
    inputs, outputs = _onnx_io(data, label)
    if contract is None:
        return Contract(inputs, outputs, verified_by="onnxruntime")
    problems = _mismatches("input", contract.inputs, inputs, f"the graph of {label}", by_position=by_position)
    problems += _mismatches(
        "output", contract.outputs, outputs, f"the graph of {label}", by_position=by_position
    )
    _raise_mismatch(problems, f"the contract does not match {label}")
    return Contract(contract.inputs, contract.outputs, contract.preprocessing, "onnxruntime", contract.notes)


# ----------------------------------------------------------------------------- MONAI bundles
@dataclass(frozen=True, slots=True)
class Bundle:
    """A MONAI bundle's files by their path in the bundle (``configs/metadata.json``, ``models/model.pt``)."""

    files: dict[str, bytes]

    @property
    def metadata(self) -> dict[str, Any]:
        try:
            document = json.loads(self.files[METADATA])
        except ValueError as exc:
            raise InvalidModel(f"the bundle's {METADATA} is not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise InvalidModel(f"the bundle's {METADATA} must be a JSON object")
        return document

    def config(self, name: str) -> dict[str, Any] | None:
        raw = self.files.get(f"configs/{name}")
        if raw is None:
            return None
        try:
            document = json.loads(raw)
        except ValueError as exc:
            raise InvalidModel(f"the bundle's configs/{name} is not JSON: {exc}") from None
        return document if isinstance(document, dict) else None


def _bundle_path(name: str) -> str | None:
    """A member's path inside the bundle, or None for one to skip; refuses an unsafe path.

    Raises
    ------
    InvalidModel
        ``name`` is absolute or climbs out of the bundle (``..``).
    """
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise InvalidModel(f"the bundle holds a file outside itself: {name!r}")
    if any(part.startswith(".") or part == "__MACOSX" or part == "__pycache__" for part in path.parts):
        return None
    return path.as_posix()


def _strip_root(files: dict[str, bytes]) -> dict[str, bytes]:
    """Bundle files relative to the folder holding ``configs/metadata.json`` (a zip often has one
    top folder named after the bundle).

    Raises
    ------
    InvalidModel
        The files hold no ``configs/metadata.json``, or several under different folders.
    """
    if METADATA in files:
        return files
    roots = {name[: -len(METADATA)] for name in files if name.endswith("/" + METADATA)}
    if len(roots) != 1:
        found = "none" if not roots else f"{len(roots)} ({', '.join(sorted(roots))})"
        raise InvalidModel(
            f"a MONAI bundle needs one {METADATA}; this one has {found}. Expected a directory or zip with "
            f"{METADATA} and models/model.pt, model.ts or model.onnx"
        )
    (root,) = roots
    return {name[len(root) :]: data for name, data in files.items() if name.startswith(root)}


def read_bundle(source: bytes | Path) -> Bundle:
    """The files of a MONAI bundle: a directory, or a zip file's bytes.

    Raises
    ------
    InvalidModel
        Not a zip or directory, a path outside the bundle, no ``configs/metadata.json``.
    PayloadTooLarge
        Over 2 GiB uncompressed or 1000 files.
    """
    files: dict[str, bytes] = {}
    if isinstance(source, Path):
        if not source.is_dir():
            if not source.is_file():
                raise InvalidModel(f"bundle {str(source)!r} is neither a directory nor a zip file")
            source = source.read_bytes()
        else:
            total = 0
            for path in sorted(source.rglob("*")):
                if path.is_file():
                    name = _bundle_path(path.relative_to(source).as_posix())
                    if name is not None:
                        total += path.stat().st_size
                        _check_size(len(files) + 1, total)
                        files[name] = path.read_bytes()
            return Bundle(_strip_root(files))
    try:
        archive = zipfile.ZipFile(io.BytesIO(source))
    except zipfile.BadZipFile:
        raise InvalidModel("the bundle is not a zip file (nor a directory)") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        _check_size(len(members), sum(m.file_size for m in members))
        for member in members:
            name = _bundle_path(member.filename)
            if name is not None:
                try:
                    files[name] = archive.read(member)
                except (zipfile.BadZipFile, OSError, ValueError) as exc:
                    raise InvalidModel(f"the bundle's zip is damaged at {member.filename!r}: {exc}") from None
    return Bundle(_strip_root(files))


def _check_size(count: int, total: int) -> None:
    if count > BUNDLE_MAX_FILES:
        raise PayloadTooLarge(f"the bundle has over {BUNDLE_MAX_FILES} files")
    if total > BUNDLE_MAX_BYTES:
        raise PayloadTooLarge(f"the bundle is over {BUNDLE_MAX_BYTES // 1024**3} GiB uncompressed")


def _spatial(value: Any, where: str) -> tuple[Dim, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidModel(f"{where}.spatial_shape must be a list, not {value!r}")
    dims: list[Dim] = []
    for dim in value:
        if isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0:
            dims.append(dim)
        elif isinstance(dim, str) and dim.strip():
            dims.append(dim.strip())
        else:
            raise InvalidModel(
                f"{where}.spatial_shape has {dim!r}; expected integers or expressions like '16*n'"
            )
    return tuple(dims)


def _bundle_tensors(section: Any, where: str) -> tuple[tuple[TensorSpec, ...], dict[str, Any]]:
    if not isinstance(section, Mapping) or not section:
        raise InvalidModel(f"{where} must be a non-empty object of tensor name → description")
    specs, notes = [], {}
    for name, item in section.items():
        at = f"{where}.{name}"
        if not isinstance(item, Mapping):
            raise InvalidModel(f"{at} must be an object")
        channels = item.get("num_channels")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise InvalidModel(f"{at}.num_channels must be a positive integer, not {channels!r}")
        dtype = item.get("dtype", "float32")
        if dtype not in DTYPES:
            raise InvalidModel(f"{at}.dtype is {dtype!r}; accepted: {', '.join(sorted(DTYPES))}")
        specs.append(TensorSpec(str(name), (None, channels, *_spatial(item.get("spatial_shape"), at)), dtype))
        extra = {k: v for k, v in item.items() if k not in {"num_channels", "spatial_shape", "dtype"}}
        if extra:
            notes[str(name)] = extra
    return tuple(specs), notes


def bundle_contract(bundle: Bundle) -> Contract:
    """The contract ``configs/metadata.json``'s ``network_data_format`` declares.

    Raises
    ------
    InvalidModel
        The metadata has no usable ``network_data_format``.
    """
    fmt = bundle.metadata.get("network_data_format")
    if not isinstance(fmt, Mapping):
        raise InvalidModel(f"the bundle's {METADATA} has no network_data_format with inputs and outputs")
    inputs, input_notes = _bundle_tensors(fmt.get("inputs"), "network_data_format.inputs")
    outputs, output_notes = _bundle_tensors(fmt.get("outputs"), "network_data_format.outputs")
    notes = {**input_notes, **output_notes}
    return Contract(inputs, outputs, notes=notes)


def _probe_size(dim: Dim) -> int:
    """A concrete size for a forward pass: an integer as it is, ``16*n`` as 16·2, anything else 32."""
    if isinstance(dim, int):
        return dim
    match = _MULTIPLE.match(dim or "")
    return 2 * int(match.group(1) or match.group(2)) if match else 32


def _probe_shape(spec: TensorSpec) -> tuple[int, ...]:
    return tuple(1 if axis == 0 else _probe_size(dim) for axis, dim in enumerate(spec.shape))


def _forward_outputs(run: Any, contract: Contract, source: str) -> None:
    """Run ``run`` on zeros shaped as the contract's inputs; refuse outputs of another shape.

    Raises
    ------
    ContractMismatch
        The network cannot run on inputs of the declared shapes, or gives another number of outputs
        or outputs of other shapes or types than the contract declares.
    """
    import torch

    tensors = [torch.zeros(_probe_shape(spec), dtype=getattr(torch, spec.dtype)) for spec in contract.inputs]
    try:
        with torch.no_grad():
            result = run(*tensors)
    except Exception as exc:  # the network's own error: a channel count or rank it cannot take
        raise ContractMismatch(
            f"{source} cannot run on inputs shaped as {METADATA} declares "
            f"({', '.join(f'{s.name} {list(_probe_shape(s))}' for s in contract.inputs)}): {_reason(exc)}"
        ) from None
    if isinstance(result, Mapping):
        results = list(result.values())
    elif isinstance(result, list | tuple):
        results = list(result)
    else:
        results = [result]
    actual = tuple(
        TensorSpec(
            spec.name if i < len(contract.outputs) else f"output {i}",
            tuple(int(d) for d in out.shape),
            str(out.dtype).removeprefix("torch."),
        )
        for i, (spec, out) in enumerate(zip(contract.outputs, results, strict=False))
    )
    if len(results) != len(contract.outputs):
        _raise_mismatch(
            [f"{len(contract.outputs)} outputs declared but {source} gives {len(results)}"],
            f"{METADATA} does not match {source}",
        )
    probed = tuple(
        TensorSpec(s.name, tuple(1 if a == 0 else _probe_size(d) for a, d in enumerate(s.shape)), s.dtype)
        for s in contract.outputs
    )
    _raise_mismatch(
        _mismatches("output", probed, actual, source, by_position=True), f"{METADATA} does not match {source}"
    )


#: Where a bundle's ``network_def`` ``_target_`` may point: network classes, never arbitrary code.
_NETWORK_MODULES = ("monai.networks.nets", "torch.nn")


def _network(definition: Any) -> Any | None:
    """The network a bundle's ``network_def`` describes, built only from an allowed class and plain
    JSON arguments; None when it cannot be built that way (expressions, references, other targets).

    Raises
    ------
    InvalidModel
        The allowed class refuses the definition's arguments.
    """
    import importlib

    if not isinstance(definition, Mapping) or not isinstance(definition.get("_target_"), str):
        return None
    target = definition["_target_"]
    kwargs = {k: v for k, v in definition.items() if not k.startswith("_")}
    if _has_expression(kwargs):
        return None
    module_name, _, class_name = target.rpartition(".")
    candidates = [module_name] if module_name else list(_NETWORK_MODULES)
    for candidate in candidates:
        if candidate not in _NETWORK_MODULES:
            continue
        try:
            cls = getattr(importlib.import_module(candidate), class_name, None)
        except ImportError:
            continue
        if isinstance(cls, type):
            try:
                return cls(**kwargs)
            except Exception as exc:  # the class's own argument checks
                raise InvalidModel(f"the bundle's network_def ({target}) cannot be built: {exc}") from None
    return None


def _has_expression(value: Any) -> bool:
    if isinstance(value, str):
        return value.startswith(("$", "@", "%"))
    if isinstance(value, Mapping):
        return any(_has_expression(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_expression(v) for v in value)
    return False


def check_bundle(bundle: Bundle, declared: Contract | None = None) -> Contract:
    """Validate a MONAI bundle: its metadata, its weights, and that they agree; its contract.

    The contract is the metadata's ``network_data_format``; a ``declared`` contract (what the importer
    expects) must match it. The weights are then checked against it: an ONNX graph's inputs and
    outputs; a TorchScript module, or a state dict loaded strictly into the bundle's ``network_def``,
    by a forward pass on zeros of the declared input shapes whose outputs must have the declared
    shapes. A state dict whose network cannot be built safely is checked to be a state dict.

    Raises
    ------
    InvalidModel
        No metadata or weights, weights that do not load.
    ContractMismatch
        ``declared`` differs from the metadata, or the weights from either.
    """
    import torch

    contract = bundle_contract(bundle)
    if declared is not None:
        problems = _mismatches(
            "input", declared.inputs, contract.inputs, f"the bundle's {METADATA}", by_position=False
        )
        problems += _mismatches(
            "output", declared.outputs, contract.outputs, f"the bundle's {METADATA}", by_position=False
        )
        _raise_mismatch(problems, f"the declared contract does not match the bundle's {METADATA}")
    weights = [name for name in BUNDLE_WEIGHTS if name in bundle.files]
    if not weights:
        raise InvalidModel(f"the bundle has no weights: expected one of {', '.join(BUNDLE_WEIGHTS)}")
    preprocessing = declared.preprocessing if declared is not None else None
    name = weights[0]
    data = bundle.files[name]
    if name.endswith(".onnx"):
        check_onnx(data, contract, label=name, by_position=True)
        verified = "onnxruntime"
    elif name.endswith(".ts"):
        try:
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")  # type: ignore[no-untyped-call]
        except Exception as exc:  # TorchScript's own deserialisation errors
            raise InvalidModel(f"{name} is not a TorchScript module: {_reason(exc)}") from None
        module.eval()
        _forward_outputs(module, contract, name)
        verified = "forward pass"
    else:
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle, zip and torch's own errors
            raise InvalidModel(f"{name} is not a PyTorch state dict: {_reason(exc)}") from None
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise InvalidModel(f"{name} is not a state dict of tensors (torch.save(model.state_dict()))")
        network = None
        for config in ("inference.json", "train.json"):
            document = bundle.config(config)
            if document is not None:
                network = _network(document.get("network_def"))
                if network is not None:
                    break
        if network is None:
            verified = "state dict"
        else:
            try:
                network.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ContractMismatch(
                    f"{name} does not fit the bundle's network_def: {_reason(exc)}"
                ) from None
            network.eval()
            _forward_outputs(network, contract, name)
            verified = "forward pass"
    return Contract(contract.inputs, contract.outputs, preprocessing, verified, contract.notes)
