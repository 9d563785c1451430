"""Route-To-Reason for LangChain: route each question to the best (model, strategy) pair.

The names below are the public API. They are imported on first use, so ``import langchain_rtr``
stays cheap and does not pull in torch, LangGraph or the web server until they are needed.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

# name -> module that defines it
_EXPORTS: dict[str, str] = {
    # specs, records, errors
    "ModelSpec": "langchain_rtr.specs",
    "RoutingRecord": "langchain_rtr.data.records",
    "RecordError": "langchain_rtr.data.records",
    "RoutingSet": "langchain_rtr.data.matrix",
    "OutcomeMatrix": "langchain_rtr.data.matrix",
    "RTRError": "langchain_rtr.errors",
    "ConfigError": "langchain_rtr.errors",
    "UnknownPairError": "langchain_rtr.errors",
    "NoCapablePairError": "langchain_rtr.dispatch.tools",
    # keeping the router current: add a model, log traffic, refit from the log
    "add_model": "langchain_rtr.upkeep",
    "update_from_log": "langchain_rtr.upkeep",
    "UpdateReport": "langchain_rtr.upkeep",
    "AddModelConfig": "langchain_rtr.predictor.adapt",
    "RefitConfig": "langchain_rtr.predictor.adapt",
    "TrafficLog": "langchain_rtr.traffic",
    "TrafficLogError": "langchain_rtr.traffic",
    "record_feedback": "langchain_rtr.traffic",
    # length quantiles and their accuracy
    "LengthQuantiles": "langchain_rtr.quantiles",
    "QuantileError": "langchain_rtr.quantiles",
    "length_accuracy": "langchain_rtr.evaluation.lengths",
    "LengthAccuracyReport": "langchain_rtr.evaluation.lengths",
    "KnobTypeError": "langchain_rtr.errors",
    "QuestionTypeError": "langchain_rtr.errors",
    "QuestionValueError": "langchain_rtr.errors",
    # the one input gate (see langchain_rtr.inputs for the contract)
    "check_question": "langchain_rtr.inputs",
    "check_questions": "langchain_rtr.inputs",
    "MAX_QUESTION_CHARS": "langchain_rtr.inputs",
    # data files and sets
    "read_records": "langchain_rtr.data.io",
    "write_records": "langchain_rtr.data.io",
    "ReadResult": "langchain_rtr.data.io",
    "SkippedRow": "langchain_rtr.data.io",
    "save_routing_set": "langchain_rtr.data.io",
    "load_routing_set": "langchain_rtr.data.io",
    "read_routellm_gsm8k": "langchain_rtr.data.readers",
    "read_routellm_mmlu": "langchain_rtr.data.readers",
    "read_llmrouter": "langchain_rtr.data.readers",
    "read_routerarena": "langchain_rtr.data.readers",
    "list_bundled": "langchain_rtr.data.bundled",
    "load_bundled": "langchain_rtr.data.bundled",
    # predictor
    "RTRPredictor": "langchain_rtr.predictor",
    "TrainConfig": "langchain_rtr.predictor",
    "Prediction": "langchain_rtr.predictor",
    "PredictorError": "langchain_rtr.predictor",
    "CheckpointError": "langchain_rtr.predictor",
    "QuestionEncoder": "langchain_rtr.predictor",
    "SentenceTransformerEncoder": "langchain_rtr.predictor",
    "CachedEncoder": "langchain_rtr.predictor",
    "default_encoder": "langchain_rtr.predictor",
    "make_encoder": "langchain_rtr.predictor.backends",
    "EncoderBackend": "langchain_rtr.predictor.backends",
    "EncoderBackendError": "langchain_rtr.predictor.backends",
    "build_artifact": "langchain_rtr.predictor.backends",
    "CascadePredictor": "langchain_rtr.predictor.cascade",
    "load_predictor": "langchain_rtr.predictor.cascade",
    # routing
    "RTRRouter": "langchain_rtr.routing",
    "Decision": "langchain_rtr.routing",
    "RoutingTable": "langchain_rtr.routing",
    "RoutingTables": "langchain_rtr.routing",
    "Policy": "langchain_rtr.routing",
    "Tradeoff": "langchain_rtr.routing",
    "TokenBudget": "langchain_rtr.routing",
    "BestBet": "langchain_rtr.routing",
    "AverageBudget": "langchain_rtr.routing",
    "AccuracyFloor": "langchain_rtr.routing",
    "policy_from_dict": "langchain_rtr.routing",
    "CostModel": "langchain_rtr.routing",
    "RoutingError": "langchain_rtr.routing",
    "NotCalibratedError": "langchain_rtr.routing",
    # evaluation and recipes
    "evaluate_router": "langchain_rtr.evaluation",
    "evaluate_routing": "langchain_rtr.evaluation",
    "EvaluationReport": "langchain_rtr.evaluation",
    "load_data": "langchain_rtr.workflow",
    "fit_router": "langchain_rtr.workflow",
    "fit_cascade_router": "langchain_rtr.workflow",
    # strategies
    "Strategy": "langchain_rtr.strategies",
    "ParsedAnswer": "langchain_rtr.strategies",
    "register_strategy": "langchain_rtr.strategies",
    "get_strategy": "langchain_rtr.strategies",
    "builtin_strategies": "langchain_rtr.strategies",
    "list_strategies": "langchain_rtr.strategies",
    "with_thinking": "langchain_rtr.strategies",
    "UnknownStrategyError": "langchain_rtr.strategies",
    "extract_answer": "langchain_rtr.strategies",
    "is_equivalent": "langchain_rtr.strategies",
    "grade": "langchain_rtr.strategies",
    "run_program": "langchain_rtr.strategies",
    "arun_program": "langchain_rtr.strategies",
    "SandboxResult": "langchain_rtr.strategies",
    "isolation_mode": "langchain_rtr.strategies",
    # live dispatch
    "ModelsFile": "langchain_rtr.config",
    "load_models_file": "langchain_rtr.config",
    "ModelsFileError": "langchain_rtr.config",
    "ServeConfig": "langchain_rtr.config",
    "ServeEntry": "langchain_rtr.config",
    "chat_model_for": "langchain_rtr.models",
    "ModelRegistry": "langchain_rtr.models",
    "RTRRunnable": "langchain_rtr.runnable",
    "RTRResult": "langchain_rtr.runnable",
    "RoutingRow": "langchain_rtr.runnable",
    "Usage": "langchain_rtr.runnable",
    "FailedAttempt": "langchain_rtr.runnable",
    "AllPairsFailedError": "langchain_rtr.runnable",
    "RTRChatModel": "langchain_rtr.chat_model",
    "DispatchEngine": "langchain_rtr.dispatch",
    "CallRequest": "langchain_rtr.dispatch",
    "Attempt": "langchain_rtr.dispatch",
    "Knobs": "langchain_rtr.knobs",
    "parse_knobs": "langchain_rtr.knobs",
    # LangGraph and agents
    "Budget": "langchain_rtr.graph",
    "BudgetExhaustedError": "langchain_rtr.graph",
    "RTRState": "langchain_rtr.graph",
    "SubtaskInput": "langchain_rtr.graph",
    "SubtaskResult": "langchain_rtr.graph",
    "RTRNode": "langchain_rtr.graph",
    "create_rtr_node": "langchain_rtr.graph",
    "RTRMiddleware": "langchain_rtr.agents",
    "RTRToolMiddleware": "langchain_rtr.agents",
    "RTRAgentState": "langchain_rtr.agents",
    "create_rtr_tool": "langchain_rtr.agents",
    "budget_left": "langchain_rtr.agents",
    # profiling and serving
    "Question": "langchain_rtr.questions",
    "read_questions": "langchain_rtr.questions",
    "collect": "langchain_rtr.collect",
    "run_collect": "langchain_rtr.collect",
    "CollectSummary": "langchain_rtr.collect",
    "VLLMServer": "langchain_rtr.serving",
    "serve_models": "langchain_rtr.serving",
    "ServerGroup": "langchain_rtr.serving",
    "ServerStartError": "langchain_rtr.serving",
    "create_app": "langchain_rtr.server",
    "run_server": "langchain_rtr.server",
    "ServerSettings": "langchain_rtr.server",
}

__all__ = sorted(_EXPORTS)

try:  # the one version source is pyproject.toml; the installed metadata carries it
    __version__ = version("langchain-rtr")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'langchain_rtr' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from langchain_rtr.agents import (
        RTRAgentState,
        RTRMiddleware,
        RTRToolMiddleware,
        budget_left,
        create_rtr_tool,
    )
    from langchain_rtr.chat_model import RTRChatModel
    from langchain_rtr.collect import CollectSummary, collect, run_collect
    from langchain_rtr.config import (
        ModelsFile,
        ModelsFileError,
        ServeConfig,
        ServeEntry,
        load_models_file,
    )
    from langchain_rtr.data.bundled import list_bundled, load_bundled
    from langchain_rtr.data.io import (
        ReadResult,
        SkippedRow,
        load_routing_set,
        read_records,
        save_routing_set,
        write_records,
    )
    from langchain_rtr.data.matrix import OutcomeMatrix, RoutingSet
    from langchain_rtr.data.readers import (
        read_llmrouter,
        read_routellm_gsm8k,
        read_routellm_mmlu,
        read_routerarena,
    )
    from langchain_rtr.data.records import RecordError, RoutingRecord
    from langchain_rtr.dispatch import Attempt, CallRequest, DispatchEngine
    from langchain_rtr.dispatch.tools import NoCapablePairError
    from langchain_rtr.errors import (
        ConfigError,
        KnobTypeError,
        QuestionTypeError,
        QuestionValueError,
        RTRError,
        UnknownPairError,
    )
    from langchain_rtr.evaluation import EvaluationReport, evaluate_router, evaluate_routing
    from langchain_rtr.evaluation.lengths import LengthAccuracyReport, length_accuracy
    from langchain_rtr.graph import (
        Budget,
        BudgetExhaustedError,
        RTRNode,
        RTRState,
        SubtaskInput,
        SubtaskResult,
        create_rtr_node,
    )
    from langchain_rtr.inputs import MAX_QUESTION_CHARS, check_question, check_questions
    from langchain_rtr.knobs import Knobs, parse_knobs
    from langchain_rtr.models import ModelRegistry, chat_model_for
    from langchain_rtr.predictor import (
        CachedEncoder,
        CheckpointError,
        Prediction,
        PredictorError,
        QuestionEncoder,
        RTRPredictor,
        SentenceTransformerEncoder,
        TrainConfig,
        default_encoder,
    )
    from langchain_rtr.predictor.adapt import AddModelConfig, RefitConfig
    from langchain_rtr.predictor.backends import (
        EncoderBackend,
        EncoderBackendError,
        build_artifact,
        make_encoder,
    )
    from langchain_rtr.predictor.cascade import CascadePredictor, load_predictor
    from langchain_rtr.quantiles import LengthQuantiles, QuantileError
    from langchain_rtr.questions import Question, read_questions
    from langchain_rtr.routing import (
        AccuracyFloor,
        AverageBudget,
        BestBet,
        CostModel,
        Decision,
        NotCalibratedError,
        Policy,
        RoutingError,
        RoutingTable,
        RoutingTables,
        TokenBudget,
        Tradeoff,
        policy_from_dict,
    )
    from langchain_rtr.routing import RTRRouter as RTRRouter
    from langchain_rtr.runnable import (
        AllPairsFailedError,
        FailedAttempt,
        RoutingRow,
        RTRResult,
        RTRRunnable,
        Usage,
    )
    from langchain_rtr.server import ServerSettings, create_app, run_server
    from langchain_rtr.serving import ServerGroup, ServerStartError, VLLMServer, serve_models
    from langchain_rtr.strategies import (
        ParsedAnswer,
        SandboxResult,
        Strategy,
        UnknownStrategyError,
        arun_program,
        builtin_strategies,
        extract_answer,
        get_strategy,
        grade,
        is_equivalent,
        isolation_mode,
        list_strategies,
        register_strategy,
        run_program,
        with_thinking,
    )
    from langchain_rtr.traffic import TrafficLog, TrafficLogError, record_feedback
    from langchain_rtr.upkeep import UpdateReport, add_model, update_from_log
    from langchain_rtr.workflow import fit_cascade_router, fit_router, load_data
