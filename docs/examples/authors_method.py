"""The authors' network as a dip-bench method: `python -m bench run --method docs/examples/authors_method.py`.

bench/authors.py writes the paper's skip network the way the authors' code does (one nn.Sequential
tree with centre-cropping Concat modules). It computes the same function as the built-in network, so
through this interface it must give the built-in method's records at the same seed: a test checks it.
"""

from dataclasses import dataclass

import torch

from bench.authors import authors_skip
from bench.methods import Method
from dip.nets import build_network


@dataclass(frozen=True)
class AuthorsNetwork(Method):
    name = "authors-skip"  # how records and reports name it

    def build(self, recipe, channels, height, width):
        # The authors' tree draws its initial weights in another order than dip.nets.SkipNet (it is built
        # from the outside in), so the same seed would give other weights. Draw them as the built-in
        # method does and copy them in (the parameters come in the same order: tests/test_speed.py);
        # the authors' own draws are undone, so that z is then drawn where the built-in method draws it.
        builtin = build_network(recipe.net)
        with torch.random.fork_rng(devices=[]):
            net = authors_skip(recipe.net)  # the paper's network fields (their flags are the built-in method's)
        for theirs, ours in zip(net.state_dict().values(), builtin.state_dict().values(), strict=True):
            theirs.copy_(ours)
        return net

    # net_input: not overridden, so z is the paper's (32 channels at the image's size, 0.1 * U[0, 1)).


def make_method():
    return AuthorsNetwork()
