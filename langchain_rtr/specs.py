"""What the router needs to know about a model: who it is, what it costs, where it is served."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ModelSpec(BaseModel):
    """One candidate model.

    The description is what the predictor encodes, so it should say what the model is good at
    (size, family, reasoning or not). Prices are dollars per million tokens and drive the $ cost
    of a routing decision. The endpoint fields are only needed to call the model live.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    input_price: float = Field(default=0.0, ge=0.0, description="$ per million input tokens")
    output_price: float = Field(default=0.0, ge=0.0, description="$ per million output tokens")
    base_url: str | None = None
    served_name: str | None = Field(
        default=None, description="The model name on the server; defaults to `name`."
    )
    api_key: str | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    reasoning: bool = Field(default=False, description="Whether it can think (thinking on/off).")
    tools: bool = Field(
        default=False,
        description="Whether its server calls tools (vLLM: --enable-auto-tool-choice and a "
        "--tool-call-parser); calls with tools route only among models that do.",
    )
    connect_timeout_s: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="Seconds to connect; None: default."
    )
    first_byte_timeout_s: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Seconds to the first byte of the answer, and between bytes; None: default.",
    )

    @property
    def mean_price(self) -> float:
        """$ per million tokens, input and output averaged: the cost of a call of unknown length."""
        return (self.input_price + self.output_price) / 2

    def call_cost(self, input_tokens: float, output_tokens: float) -> float:
        """Dollars for one call with these token counts."""
        return (input_tokens * self.input_price + output_tokens * self.output_price) / 1e6
