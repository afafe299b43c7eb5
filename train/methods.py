"""The registry of protection methods: one name -> one class, all with the ProtectionMethod interface."""

from .baselines import BDCT, RGB
from .dctdp import DCTDP
from .partialface import PartialFace
from .ppfr_fd import PPFRFD
from .protection import ProtectionMethod

METHODS: dict[str, type[ProtectionMethod]] = {m.name: m for m in (RGB, BDCT, PPFRFD, DCTDP, PartialFace)}


def build_method(name: str, **params) -> ProtectionMethod:
    """Build a method by registry name with its config parameters; unknown names fail clearly."""
    if name not in METHODS:
        raise ValueError(f"unknown protection method {name!r}; choose one of {sorted(METHODS)}")
    try:
        return METHODS[name](**params)
    except TypeError as err:
        raise ValueError(f"bad parameters for method {name!r}: {err}") from None
