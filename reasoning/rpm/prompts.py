"""Prompt templates, one file per stage, editable without code changes.

Templates use `$name` placeholders (string.Template), so JSON braces in a prompt need no escaping.
A configured folder overrides the packaged files name by name.
"""

from __future__ import annotations

from pathlib import Path
from string import Template

PACKAGED = Path(__file__).resolve().parent / "prompts"
STAGES = ("extract", "reasoning", "generate")


class PromptLibrary:
    def __init__(self, override_dir: Path | None = None) -> None:
        self._templates: dict[str, Template] = {}
        for stage in STAGES:
            path = PACKAGED / f"{stage}.txt"
            if override_dir is not None and (Path(override_dir) / f"{stage}.txt").is_file():
                path = Path(override_dir) / f"{stage}.txt"
            self._templates[stage] = Template(path.read_text(encoding="utf-8"))

    def render(self, stage: str, **values: object) -> str:
        # safe_substitute: a template edited to drop or add a placeholder must not break requests.
        return self._templates[stage].safe_substitute({k: str(v) for k, v in values.items()}).strip()
