"""The OpenAI Agents SDK through Rapport: an agent with a tool, on Rapport's Responses API.

Needs `pip install openai-agents`. The SDK sends traces to OpenAI by default; turned off here (or set
OPENAI_AGENTS_DISABLE_TRACING=1). Start Rapport first (`bash scripts/serve.sh`), then:
    RAPPORT_BASE_URL=http://127.0.0.1:8080/v1 RAPPORT_API_KEY=... python examples/openai_agents.py
(RAPPORT_MODEL: the model, default smollm2; a model that can call tools answers best).
"""

from __future__ import annotations

import os

from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

set_tracing_disabled(True)

client = AsyncOpenAI(
    base_url=os.environ.get("RAPPORT_BASE_URL", "http://127.0.0.1:8080/v1"),
    api_key=os.environ.get("RAPPORT_API_KEY", "sk-local"),
    default_headers={"X-Rapport-User": os.environ.get("RAPPORT_USER", "grace")},
)


@function_tool
def train_times(city: str) -> str:
    """Departure times of today's trains to a city."""
    return f"Trains to {city}: 09:15, 13:40, 18:05."


agent = Agent(
    name="Travel helper",
    instructions="Help the user plan trips. Use the tools for timetables.",
    model=OpenAIResponsesModel(model=os.environ.get("RAPPORT_MODEL", "smollm2"), openai_client=client),
    tools=[train_times],
)
result = Runner.run_sync(agent, "When can I take a train to Lyon today?")
print("agent:", result.final_output)
print("last response:", result.last_response_id)
