"""A backward split in two passes: B, the inputs' gradients; W, later, the weights'.

B runs the activation-gradient chain once (``torch.autograd.grad`` towards the inputs, graph
kept) and, on the way, keeps the gradient arriving at every *split point*: a node of the chain
one of whose branches leads to weights only (a matrix product whose other operand is a weight,
a layer norm, a bias add). W starts from those gradients and runs only the weight branches,
one split point at a time, asking autograd for that point's own weights: asked for all weights
at once, autograd would follow each point's activation branch down to the lower weights again
(the chain B already ran), and count their gradients twice. The weights' gradients accumulate
through their ``AccumulateGrad`` nodes as in any backward, so post-accumulate hooks (the
data-parallel buckets) fire in W.

A chunk where a weight lies below both a split point's weight branch and its activation branch
(T5's decoder stream starts from the vocabulary table, with no input below it, and meets the
encoder's) runs W as the whole backward again, restricted to the weights (``separable``).
Two kinds of chunk keep the trainer's whole second backward as well: one with a layer under
full activation checkpointing, which would recompute its forward once per split point (each W
pass is a graph task of its own, and a checkpoint's recomputed tensors last one task), and one
with FSDP2 (ZeRO-2/3) layers, which reduce-scatter a unit's gradients from a hook at the
unit's input, which these W passes do not reach.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch.autograd.graph import GradientEdge, Node, get_gradient_edge


class SplitBackward:
    """The B and W passes of one micro-batch's backward through one chunk.

    ``roots`` are the chunk's outputs and ``grads`` their gradients (None: a scalar loss's
    implicit 1); ``inputs`` the chunk's inputs (those needing no gradient are ignored),
    ``weights`` the leaves to accumulate gradients into.
    """

    def __init__(
        self,
        roots: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor | None] | None,
        inputs: Iterable[torch.Tensor],
        weights: Iterable[torch.Tensor],
    ) -> None:
        self.roots = list(roots)
        self.grads: list[torch.Tensor | None] = (
            list(grads) if grads is not None else [None] * len(self.roots)
        )
        self.inputs = [x for x in inputs if x.requires_grad]
        self.weights = [w for w in weights if w.requires_grad]
        input_nodes = {get_gradient_edge(x).node for x in self.inputs}
        weight_of = {get_gradient_edge(w).node: w for w in self.weights}
        below = _below([r.grad_fn for r in self.roots], input_nodes, weight_of)
        # Per split point: the weights its weight-only branches lead to. W asks autograd for
        # them from the point: it also follows the point's activation branch wherever that
        # leads to one of them (a weight used on both sides, as T5's decoder stream, which
        # starts from the vocabulary table, meets the encoder's), so those chunks cannot split.
        self.splits: dict[Node, list[torch.Tensor]] = {}
        self.separable = True
        for node, (to_input, _) in below.items():
            if not to_input:
                continue
            children = [child for child, _ in node.next_functions if child is not None]
            branches = [c for c in children if not below[c][0] and below[c][1]]
            if not branches:
                continue
            weights = frozenset().union(*(below[c][1] for c in branches))
            chain = frozenset().union(*(below[c][1] for c in children if below[c][0]))
            self.separable &= not (weights & chain)
            self.splits[node] = [weight_of[w] for w in weights]
        # Outputs that do not depend on the inputs: their whole backward is W's.
        self.weight_only = [
            i for i, r in enumerate(self.roots) if r.grad_fn is not None and not below[r.grad_fn][0]
        ]
        self._arrived: dict[Node, tuple[torch.Tensor | None, ...]] = {}

    def input_gradients(self) -> list[torch.Tensor | None]:
        """B: the inputs' gradients (None for an input the outputs do not depend on)."""
        chain = [i for i in range(len(self.roots)) if i not in self.weight_only]
        if not self.inputs or not chain:
            return [None] * len(self.inputs)
        keep = self.splits if self.separable else {}
        handles = [node.register_prehook(self._keeper(node)) for node in keep]
        try:
            grads = torch.autograd.grad(
                [self.roots[i] for i in chain],
                self.inputs,
                [self.grads[i] for i in chain],
                retain_graph=True,
                allow_unused=True,
            )
        finally:
            for handle in handles:
                handle.remove()
        return list(grads)

    def weight_gradients(self) -> None:
        """W: every weight's gradient, accumulated into ``.grad``; then the graph's kept
        gradients and references are dropped."""
        if not self.inputs or not self.separable:  # the whole backward again, to the weights
            torch.autograd.backward(self.roots, self.grads, inputs=self.weights)
        else:
            for node, arrived in self._arrived.items():
                edges = [GradientEdge(node, nr) for nr, g in enumerate(arrived) if g is not None]
                grads = [g for g in arrived if g is not None]
                if edges and self.splits[node]:
                    torch.autograd.backward(
                        edges, grads, inputs=self.splits[node], retain_graph=True
                    )
            for i in self.weight_only:
                torch.autograd.backward(
                    [self.roots[i]], [self.grads[i]], inputs=self.weights, retain_graph=True
                )
        self._arrived.clear()
        self.roots, self.grads = [], []

    def _keeper(self, node: Node):  # type: ignore[no-untyped-def]
        def keep(grad_outputs: tuple[torch.Tensor | None, ...]) -> None:
            self._arrived[node] = tuple(grad_outputs)

        return keep


def _below(
    roots: Iterable[Node | None], inputs: set[Node], weight_of: dict[Node, torch.Tensor]
) -> dict[Node, tuple[bool, frozenset[Node]]]:
    """For every node below ``roots``: whether an input is below it, and the weights' nodes
    below it."""
    order: list[Node] = []
    seen: set[Node] = set()
    stack: list[tuple[Node, bool]] = [(r, False) for r in roots if r is not None]
    while stack:  # iterative post-order: graphs have thousands of nodes
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if node in seen:
            continue
        seen.add(node)
        stack.append((node, True))
        stack.extend((c, False) for c, _ in node.next_functions if c is not None and c not in seen)
    below: dict[Node, tuple[bool, frozenset[Node]]] = {}
    empty: frozenset[Node] = frozenset()
    for node in order:  # children first
        to_input = node in inputs
        weights = frozenset((node,)) if node in weight_of else empty
        for child, _ in node.next_functions:
            if child is not None:
                child_input, child_weights = below[child]
                to_input = to_input or child_input
                if child_weights and not child_weights <= weights:
                    weights = weights | child_weights
        below[node] = (to_input, weights)
    return below
