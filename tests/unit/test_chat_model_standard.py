"""langchain-tests' standard unit tests for RTRChatModel, on fake backends (no network)."""

from __future__ import annotations

from typing import Any

from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_rtr.chat_model import RTRChatModel
from langchain_rtr.runnable import RTRRunnable
from tests.unit.test_runnable_fakes import (
    FakeRouter,
    make_models,
    make_strategies,
)


class TestRTRChatModelStandard(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[RTRChatModel]:
        return RTRChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        rtr = RTRRunnable(router=FakeRouter(), models=make_models(), strategies=make_strategies())
        return {"runnable": rtr}

    # The fakes' "small" model declares tools and "direct" carries them (test_runnable_fakes).
    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True
