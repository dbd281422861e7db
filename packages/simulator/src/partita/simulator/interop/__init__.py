"""Plans to and from the trainers teams run today.

``megatron``, ``torchtitan`` and ``deepspeed`` translate a :class:`Uniform` (one strategy for
every block, which is what those trainers configure) to their arguments or config files,
say what they cannot express (``unsupported``) and the closest setting they can
(``nearest``); ``megatron`` and ``torchtitan`` also read their files back
(``import_config``). Galvatron, whose strategies are layer-wise, has its own module.
"""

from __future__ import annotations

from partita.simulator.interop.uniform import Uniform, layer_strategies, uniform_of

__all__ = ["Uniform", "layer_strategies", "uniform_of"]
