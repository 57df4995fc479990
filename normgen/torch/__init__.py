"""PyTorch layers whose forward and backward run normgen's generated kernels.

    >>> import torch, normgen.torch as nt
    >>> bn = nt.BatchNorm2d(16)                          # torch.nn.BatchNorm2d's arguments and state_dict
    >>> y = bn(torch.randn(8, 16, 32, 32))               # autograd through the generated backward
    >>> model = nt.convert(model)                        # torch.nn norm layers -> normgen's
"""

from .modules import *  # noqa: F401,F403
from .modules import __all__  # noqa: F401
