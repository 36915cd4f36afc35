"""coinfer.viz: pictures and one readable page for every coinfer file (matplotlib Agg; no torch).

Public API:

* :func:`coinfer.viz.report.build_report` / :func:`coinfer.viz.report.write_report` - `coinfer report`.
* :func:`coinfer.viz.documents.load_any` - load any coinfer file by its kind.
* :func:`coinfer.viz.compare.compare` - two files of one kind side by side (`coinfer compare`).
* :data:`coinfer.viz.sections.RENDERERS` / :func:`coinfer.viz.sections.renderer` - one function per
  kind of file; a new kind registers its schema with :func:`coinfer.viz.documents.register_kind`.
"""

from coinfer.viz.documents import Loaded, load_any, register_kind
from coinfer.viz.report import Report, build_report, check_output_dir, write_report

__all__ = ["Loaded", "Report", "build_report", "check_output_dir", "load_any", "register_kind", "write_report"]
