"""Backend parity: the same ops give the same numbers on every device, within per-dtype tolerances."""

from .cases import CASES, Case, run_case
from .compare import TOLERANCES, Comparison, Tolerance, compare
from .harness import check, format_table, load_golden, record

__all__ = ["CASES", "Case", "run_case", "TOLERANCES", "Comparison", "Tolerance", "compare",
           "check", "format_table", "load_golden", "record"]
