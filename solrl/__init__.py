"""sol-rl: Sol-RL (FP4 explore, BF16 train) for text-to-image flow models, on DiffusionNFT."""

import logging as _logging
import warnings as _warnings

__version__ = "0.1.0"

# torchao registers enums with torch's pytree at import and diffusers probes torchao's optional
# kernels; both print warnings that say nothing about a user's run. Keep them out of the logs.
_logging.getLogger("torch.utils._pytree").setLevel(_logging.ERROR)
_logging.getLogger("diffusers.quantizers.torchao.torchao_quantizer").setLevel(_logging.ERROR)
# torchao tries its optional CUDA kernels (mxfp8, cutlass) at import; absent on CPU builds.
_logging.getLogger("torchao").setLevel(_logging.ERROR)
_warnings.filterwarnings("ignore", message=".*is an Enum subclass and is now natively supported.*")
_warnings.filterwarnings("ignore", message=".*torch.jit.script_method.*is deprecated.*")
_warnings.filterwarnings("ignore", message=".*should be kept in float32.*")


class _DropMessage(_logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: _logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


# diffusers warns on every `.to(dtype)` of a model that lists no float32-only modules (an empty
# list: nothing is lost); the shapes model is cast to bf16 that way on purpose.
_logging.getLogger("diffusers.models.modeling_utils").addFilter(_DropMessage("should be kept in float32: []"))
