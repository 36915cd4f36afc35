"""Loading any coinfer file by its kind, and the checks a report makes across files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from coinfer.errors import SchemaError
from coinfer.reports.common import Document
from coinfer.reports.io import file_sha256, load_document, read_json_file
from coinfer.reports.plan import Plan
from coinfer.reports.precision import PrecisionReport
from coinfer.reports.profile import Profile
from coinfer.reports.prune import PruneReport
from coinfer.reports.quality import PerplexityReport
from coinfer.reports.robustness import RobustnessProfile
from coinfer.reports.run import RunResult

# kind -> schema; a new kind (e.g. the robustness profile of `coinfer channel`) registers here
# with :func:`register_kind` and gets its renderer in :mod:`coinfer.viz.sections`.
SCHEMAS: dict[str, type[Document]] = {
    "profile": Profile,
    "prune_report": PruneReport,
    "plan": Plan,
    "run_result": RunResult,
    "robustness_profile": RobustnessProfile,
    "precision_report": PrecisionReport,
    "perplexity_report": PerplexityReport,
}


def register_kind(kind: str, schema: type[Document]) -> None:
    """Let :func:`load_any` read files of ``kind`` with ``schema``."""
    SCHEMAS[kind] = schema


@dataclass(frozen=True)
class Loaded:
    """A validated coinfer document and where it came from."""

    path: Path
    doc: Document
    sha256: str

    @property
    def kind(self) -> str:
        """The document's kind, e.g. 'profile'."""
        return self.doc.kind

    @property
    def label(self) -> str:
        """A short name for legends: the file name without '.json'."""
        name = self.path.name
        return name[:-5] if name.endswith(".json") else name


def load_any(path: str | os.PathLike[str]) -> Loaded:
    """Load a coinfer file of any kind this coinfer knows, validated against its schema.

    Raises:
        UserInputError: No such file.
        SchemaError: Malformed JSON, a kind with no schema here, an unknown version, bad content.
    """
    data = read_json_file(path)
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in SCHEMAS:
        what = f"a {kind!r} file" if isinstance(kind, str) else "not a coinfer file (no 'kind')"
        raise SchemaError(f"{path}: {what}; expected one of: {', '.join(SCHEMAS)}")
    return Loaded(Path(path), load_document(path, SCHEMAS[kind]), file_sha256(path))


def model_of(doc: Document):
    """The document's :class:`~coinfer.reports.common.ModelIdentity` (every kind carries one)."""
    return doc.model  # type: ignore[attr-defined]


def check_one_model(items: list[Loaded]) -> None:
    """Refuse files about different models (their architecture config hashes differ).

    Raises:
        SchemaError: Two files describe different models, naming both.
    """
    first = items[0]
    for other in items[1:]:
        a, b = model_of(first.doc), model_of(other.doc)
        if a.config_sha256 != b.config_sha256:
            raise SchemaError(
                f"{other.path} is about another model than {first.path} ({b.name}, config {b.config_sha256[:12]} vs "
                f"{a.name}, config {a.config_sha256[:12]}): one report covers one model"
            )
