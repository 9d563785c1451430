"""The models file: which models the router may pick, what they cost, where they are served.

One YAML file lists the candidate models (issue 3 item 4). Each entry becomes a
:class:`~langchain_rtr.specs.ModelSpec`; an optional ``serve:`` section says how ``rtr serve``
starts a local vLLM server for it. Example (see ``examples/models.cpu.yaml``)::

    serve_defaults:              # optional, merged under every model's serve section
                                 # (env merged key by key, extra_args the model's after these)
      python: ../.venv-vllm/bin/python
      env: {VLLM_CPU_KVCACHE_SPACE: 1}
    timeouts: {connect_s: 3, first_byte_s: 10}   # optional, for models without their own
    models:
      - name: smol-a
        description: SmolLM2 135M instruct; answers easy questions only.
        input_price: 0.02        # $ per million input tokens
        output_price: 0.04       # $ per million output tokens
        max_tokens: 512
        reasoning: false
        tools: false             # true: its server calls tools (vLLM --enable-auto-tool-choice)
        first_byte_timeout_s: 30  # optional; see langchain_rtr.models for the defaults
        # base_url (an http(s) URL) defaults to http://<host>:<port>/v1 of the serve section
        serve:
          model: ../.cache/models/SmolLM2-135M-Instruct   # a path or a Hugging Face id
          port: 8001
          dtype: float32
          max_model_len: 2048
          enforce_eager: true

Relative paths (``serve.model`` when it names an existing path or starts with ``./``, ``../``,
``/`` or ``~``; ``serve.python`` when it contains a ``/``; an ``extra_args`` item starting with
``./`` or ``../``, e.g. a ``--chat-template`` file) are resolved against the directory of the
models file, so the file means the same thing from any working directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from langchain_rtr.errors import ConfigError
from langchain_rtr.specs import ModelSpec

__all__ = [
    "ModelEntry",
    "ModelsFile",
    "ModelsFileError",
    "ServeConfig",
    "ServeEntry",
    "load_models_file",
    "parse_models_file",
]

_PATH_PREFIXES = ("./", "../", "/", "~")


class ModelsFileError(ConfigError):
    """The models file is unreadable or invalid.

    The message lists every problem found, each as ``file:line: models[i] (name): field: what``.

    Attributes:
        path: The file (``<string>`` when parsed from text).
        problems: One line per problem, in file order.
    """

    def __init__(self, path: str, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = list(problems)
        head = f"invalid models file {path}"
        super().__init__(head + ":\n  " + "\n  ".join(self.problems))


class ServeConfig(BaseModel):
    """How ``rtr serve`` starts one vLLM OpenAI-compatible server.

    Only ``model`` and ``port`` are required; the rest are vLLM's own flags with vLLM's defaults.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1, description="Model dir or Hugging Face id (vLLM --model).")
    port: int = Field(ge=1, le=65535)
    host: str = Field(default="127.0.0.1", description="Address to bind (vLLM --host).")
    dtype: str = Field(default="auto", description="vLLM --dtype; float32 on CPU.")
    max_model_len: int | None = Field(default=None, gt=0, description="vLLM --max-model-len.")
    enforce_eager: bool = Field(default=False, description="vLLM --enforce-eager (no graphs).")
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs per model (TP).")
    gpu_memory_utilization: float | None = Field(default=None, gt=0.0, le=1.0)
    extra_args: list[str] = Field(default_factory=list, description="More vLLM CLI arguments.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment, e.g. VLLM_CPU_KVCACHE_SPACE."
    )
    python: str | None = Field(
        default=None,
        description="Python that has vLLM installed; else $RTR_VLLM_PYTHON, else auto-detected.",
    )
    startup_timeout: float = Field(default=600.0, gt=0.0, description="Seconds to become healthy.")

    @field_validator("env", mode="before")
    @classmethod
    def _env_values_as_text(cls, value: Any) -> Any:
        # YAML reads `VLLM_CPU_KVCACHE_SPACE: 1` as an int; the environment only holds text.
        if isinstance(value, Mapping):
            return {
                str(k): ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
                for k, v in value.items()
            }
        return value

    @field_validator("extra_args", mode="before")
    @classmethod
    def _args_as_text(cls, value: Any) -> Any:
        args = _arg_list(value)
        return value if args is None else [str(v) for v in args]

    @property
    def connect_host(self) -> str:
        """The address a client on this machine uses: a wildcard bind is reached on loopback."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host


class ModelEntry(BaseModel):
    """One ``models:`` item: the :class:`ModelSpec` fields plus an optional ``serve`` section."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    input_price: float = Field(default=0.0, ge=0.0)
    output_price: float = Field(default=0.0, ge=0.0)
    base_url: str | None = None
    served_name: str | None = None
    api_key: str | None = None
    api_key_env: str | None = Field(
        default=None, description="Read the API key from this environment variable at load time."
    )
    max_tokens: int | None = Field(default=None, gt=0)
    reasoning: bool = False
    tools: bool = False
    connect_timeout_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    first_byte_timeout_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    serve: ServeConfig | None = None

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            parts = urlsplit(value)
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            port_ok = False
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or not port_ok
            or any(c.isspace() for c in value)
        ):
            raise ValueError(
                f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {value!r}"
            )
        return value

    def to_spec(self) -> ModelSpec:
        """The router's view of this entry; the base URL comes from ``serve`` when not given."""
        base_url = self.base_url
        if base_url is None and self.serve is not None:
            base_url = f"http://{self.serve.connect_host}:{self.serve.port}/v1"
        api_key = self.api_key
        if api_key is None and self.api_key_env:
            api_key = os.environ.get(self.api_key_env)
        return ModelSpec(
            name=self.name,
            description=self.description,
            input_price=self.input_price,
            output_price=self.output_price,
            base_url=base_url,
            served_name=self.served_name,
            api_key=api_key,
            max_tokens=self.max_tokens,
            reasoning=self.reasoning,
            tools=self.tools,
            connect_timeout_s=self.connect_timeout_s,
            first_byte_timeout_s=self.first_byte_timeout_s,
        )


class Timeouts(BaseModel):
    """The models file's ``timeouts:`` section: defaults for every model without its own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    connect_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    first_byte_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class _FileModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    serve_defaults: dict[str, Any] = Field(default_factory=dict)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    models: list[ModelEntry] = Field(min_length=1)


@dataclass(frozen=True)
class ServeEntry:
    """A model to serve locally: its spec and its (path-resolved) serve section."""

    spec: ModelSpec
    serve: ServeConfig

    @property
    def name(self) -> str:
        """The model's name in the router."""
        return self.spec.name

    @property
    def served_name(self) -> str:
        """The name the server answers to (vLLM ``--served-model-name``)."""
        return self.spec.served_name or self.spec.name

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL of the server this entry starts (``.../v1``)."""
        return f"http://{self.serve.connect_host}:{self.serve.port}/v1"


@dataclass(frozen=True)
class ModelsFile:
    """A loaded models file.

    Attributes:
        path: Where it was read from (``None`` when parsed from text).
        entries: The entries in file order.
    """

    path: Path | None
    entries: tuple[ModelEntry, ...]
    _specs: dict[str, ModelSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_specs", {e.name: e.to_spec() for e in self.entries})

    @property
    def specs(self) -> dict[str, ModelSpec]:
        """Every model's :class:`ModelSpec`, keyed by name, in file order."""
        return dict(self._specs)

    @property
    def serve_entries(self) -> list[ServeEntry]:
        """The models with a ``serve`` section, in file order."""
        return [
            ServeEntry(spec=self._specs[e.name], serve=e.serve)
            for e in self.entries
            if e.serve is not None
        ]


def load_models_file(path: str | os.PathLike[str]) -> ModelsFile:
    """Read and validate a models file.

    Args:
        path: The YAML file.

    Returns:
        The validated file; relative paths in it are resolved against its directory.

    Raises:
        ModelsFileError: The file is missing, not YAML, or invalid; every problem is listed with
            its line and model entry.
    """
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ModelsFileError(str(file), [f"cannot read: {exc.strerror or exc}"]) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = f"{file}: not valid UTF-8 at byte offset {exc.start}; expected UTF-8 YAML"
        raise ModelsFileError(str(file), [problem]) from None
    return parse_models_file(text, source=str(file), base_dir=file.resolve().parent, path=file)


def parse_models_file(
    text: str,
    *,
    source: str = "<string>",
    base_dir: Path | None = None,
    path: Path | None = None,
) -> ModelsFile:
    """Validate models-file YAML given as text (what :func:`load_models_file` does after reading).

    Args:
        text: The YAML.
        source: The name used in error messages.
        base_dir: Directory that relative paths are resolved against (default: the working dir).
        path: Recorded as :attr:`ModelsFile.path`.

    Raises:
        ModelsFileError: Invalid YAML or content.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ModelsFileError(source, [f"{where}: not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise ModelsFileError(
            source, [f"{source}:1: expected a mapping with a `models:` list, got {_kind(data)}"]
        )
    data = _apply_serve_defaults(data)
    try:
        parsed = _FileModel.model_validate(data)
    except ValidationError as exc:
        errors = [_describe(err, data, root, source) for err in exc.errors()]
        raise ModelsFileError(source, errors) from exc

    problems: list[str] = []
    seen: dict[str, int] = {}
    binds: dict[tuple[str, int], str] = {}
    entries: list[ModelEntry] = []
    for i, entry in enumerate(parsed.models):
        where = _where(source, root, ("models", i))
        if entry.name in seen:
            problems.append(
                f"{where}: models[{i}] ({entry.name}): name already used by "
                f"models[{seen[entry.name]}]"
            )
        seen.setdefault(entry.name, i)
        if entry.serve is not None:
            bind = (entry.serve.connect_host, entry.serve.port)
            if bind in binds:
                problems.append(
                    f"{where}: models[{i}] ({entry.name}): serve: port {entry.serve.port} on "
                    f"{entry.serve.connect_host} is already taken by {binds[bind]}"
                )
            binds.setdefault(bind, entry.name)
            entry = entry.model_copy(update={"serve": _resolve_paths(entry.serve, base_dir)})
        if entry.connect_timeout_s is None and parsed.timeouts.connect_s is not None:
            entry = entry.model_copy(update={"connect_timeout_s": parsed.timeouts.connect_s})
        if entry.first_byte_timeout_s is None and parsed.timeouts.first_byte_s is not None:
            entry = entry.model_copy(update={"first_byte_timeout_s": parsed.timeouts.first_byte_s})
        entries.append(entry)
    if problems:
        raise ModelsFileError(source, problems)
    return ModelsFile(path=path, entries=tuple(entries))


def _apply_serve_defaults(data: dict[str, Any]) -> dict[str, Any]:
    defaults = data.get("serve_defaults")
    models = data.get("models")
    if not isinstance(defaults, dict) or not defaults or not isinstance(models, list):
        return data
    merged_models: list[Any] = []
    for item in models:
        if isinstance(item, dict) and isinstance(item.get("serve"), dict):
            own = item["serve"]
            serve = {**defaults, **own}
            if isinstance(defaults.get("env"), dict) and isinstance(own.get("env"), dict):
                serve["env"] = {**defaults["env"], **own["env"]}
            # A model's flags add to the shared ones (its own come last, so a repeated
            # vLLM flag takes the model's value).
            shared, added = _arg_list(defaults.get("extra_args")), _arg_list(own.get("extra_args"))
            if shared is not None and added is not None:
                serve["extra_args"] = [*shared, *added]
            item = {**item, "serve": serve}
        merged_models.append(item)
    return {**data, "models": merged_models}


def _arg_list(value: Any) -> list[Any] | None:
    """``extra_args`` as a list (a string is split on whitespace); None if it is neither."""
    if isinstance(value, str):
        return value.split()
    return value if isinstance(value, list) else None


def _resolve_paths(serve: ServeConfig, base_dir: Path | None) -> ServeConfig:
    base = base_dir or Path.cwd()
    update: dict[str, Any] = {}
    model = serve.model
    local = (base / model).expanduser()
    if model.startswith(_PATH_PREFIXES) or local.exists():
        update["model"] = str((base / Path(model).expanduser()).resolve())
    if serve.python and "/" in serve.python:
        # Don't resolve symlinks: a venv's python is a link to the base interpreter, and only
        # the link path makes Python pick up the venv's site-packages.
        update["python"] = os.path.abspath(base / Path(serve.python).expanduser())
    args = [
        os.path.abspath(base / a) if a.startswith(("./", "../")) else a for a in serve.extra_args
    ]
    if args != serve.extra_args:
        update["extra_args"] = args
    return serve.model_copy(update=update) if update else serve


def _describe(err: Any, data: Any, root: yaml.Node | None, source: str) -> str:
    loc = tuple(err["loc"])
    where = _where(source, root, loc)
    label = ""
    if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
        label = f"models[{loc[1]}]"
        models = data.get("models") if isinstance(data, dict) else None
        if isinstance(models, list) and loc[1] < len(models) and isinstance(models[loc[1]], dict):
            name = models[loc[1]].get("name")
            if name:
                label += f" ({name})"
        rest = loc[2:]
    else:
        rest = loc
    field_path = ".".join(str(p) for p in rest)
    parts = [p for p in (label, field_path) if p]
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "required field missing"
    return f"{where}: {': '.join(parts) or 'file'}: {msg}"


def _where(source: str, root: yaml.Node | None, loc: tuple[Any, ...]) -> str:
    """``file:line`` of the deepest YAML node on ``loc`` that exists (cheap: one walk)."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if getattr(k, "value", None) == key:
                    child = v
                    line = k.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(key, int)
            and 0 <= key < len(node.value)
        ):
            child = node.value[key]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return f"{source}:{line}" if line is not None else source


def _kind(value: Any) -> str:
    return "an empty file" if value is None else type(value).__name__
