"""The lmms-eval model class; imported by lmms-eval only (it needs lmms-eval installed).

lmms-eval finds it through the `lmms_eval.models` entry point in setup.py (`manifest` below), so
`python -m lmms_eval --model ppllava --model_args model=DIR ...` works once both are installed.
"""

from lmms_eval.api.model import lmms
from loguru import logger as eval_logger          # lmms-eval's own log (it configures loguru's logger)

from .lmms_adapter import Adapter


class PPLLaVA(Adapter, lmms):
    is_simple = True                      # lmms-eval's doc_to_visual / generate_until interface

    def _warn(self, message: str) -> None:
        eval_logger.warning(message)      # beside lmms-eval's lines, on its stream


def manifest():
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="ppllava", simple_class_path=f"{__name__}.PPLLaVA")
